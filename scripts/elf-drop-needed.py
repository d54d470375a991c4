#!/usr/bin/env python3
"""Copies an ELF64 little-endian shared library without the DT_NEEDED entries whose names
contain SUBSTRING (stdlib only; used by scripts/ros2-env.sh for the PyPI ROS 2 wheels).

    elf-drop-needed.py SRC DEST SUBSTRING

The dynamic array is compacted in place and its tail filled with DT_NULL, so no offsets
move. Prints the dropped names; exits 1 when SRC is not an ELF64 LE file with a dynamic
section.
"""
import struct
import sys

DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
PT_LOAD, PT_DYNAMIC = 1, 2


def program_headers(data):
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        yield p_type, p_offset, p_vaddr, p_filesz


def file_offset(data, vaddr):
    for p_type, p_offset, p_vaddr, p_filesz in program_headers(data):
        if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    raise ValueError(f"address {vaddr:#x} is in no PT_LOAD segment")


def c_string(data, offset):
    return data[offset:data.index(b"\0", offset)].decode()


def drop_needed(data, substring):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    dyn = next(((off, size) for t, off, _, size in program_headers(data) if t == PT_DYNAMIC), None)
    if dyn is None:
        raise ValueError("no PT_DYNAMIC segment")
    off, size = dyn
    entries = [struct.unpack_from("<qQ", data, off + i) for i in range(0, size, 16)]
    strtab = file_offset(data, next(v for t, v in entries if t == DT_STRTAB))
    kept, dropped = [], []
    for tag, val in entries:
        if tag == DT_NEEDED and substring in c_string(data, strtab + val):
            dropped.append(c_string(data, strtab + val))
        else:
            kept.append((tag, val))
    kept += [(DT_NULL, 0)] * (len(entries) - len(kept))
    for i, (tag, val) in enumerate(kept):
        struct.pack_into("<qQ", data, off + 16 * i, tag, val)
    return dropped


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dest, substring = sys.argv[1:]
    with open(src, "rb") as f:
        data = bytearray(f.read())
    try:
        dropped = drop_needed(data, substring)
    except (ValueError, StopIteration) as e:
        print(f"elf-drop-needed: {src}: {e}", file=sys.stderr)
        sys.exit(1)
    with open(dest, "wb") as f:
        f.write(data)
    print(" ".join(dropped))


if __name__ == "__main__":
    main()
