//! Safe extraction of a zstd-compressed tar payload.
//!
//! # Invariants
//! - Entries go into a private staging directory `<parent>/.<target>.staging-<pid>-<rand>`
//!   (mode 0700); the tree becomes visible at `target` by one `rename` only after the
//!   payload's size and SHA-256 matched the signed manifest and every symlink in the
//!   finished tree was re-resolved inside the root. On any error the staging directory
//!   is removed; nothing partial remains.
//! - Refused: absolute paths, `..` components, symlinks and hardlinks resolving outside
//!   the root, writing through any symlink, devices/FIFOs, setuid/setgid, duplicate
//!   entries, unknown entry types.
//! - Limits are checked from each tar header *before* its data is written: entries and
//!   unpacked bytes against the manifest's declaration and the configured hard caps; the
//!   decompressed stream itself is capped too, so bombs stop early.
//! - Files are created with `O_CREAT|O_EXCL` and fsynced; directories are fsynced
//!   before the rename, the parent after it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::manifest::Manifest;
use super::verify::{PayloadHasher, CHUNK};
use super::{Config, Error};

/// Largest zstd window accepted (2^23 = 8 MiB): bounds decoder memory whatever the frame
/// header claims. `bundle pack` writes frames with smaller windows.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Longest path accepted in an archive.
const MAX_PATH: usize = 4096;
/// Tar overhead allowed per entry on top of file data (header, padding, long names).
const PER_ENTRY_OVERHEAD: u64 = 8 * 1024;
/// Symlink hops followed when resolving a link target.
const MAX_HOPS: u32 = 40;

/// Removes the staging directory unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Caps the decompressed stream; remembers whether the cap tripped.
struct Capped<R> {
    inner: R,
    remaining: u64,
    tripped: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Probe one byte: a stream ending exactly at the cap is fine.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => {
                    self.tripped = true;
                    Err(io::Error::other("decompressed payload exceeds its limit"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

struct Limits {
    entries: u64,
    entries_name: &'static str,
    bytes: u64,
    bytes_name: &'static str,
}

impl Limits {
    fn new(m: &Manifest, cfg: &Config) -> Self {
        let (entries, entries_name) = if m.payload.entries <= cfg.max_entries {
            (m.payload.entries, "declared entries")
        } else {
            (cfg.max_entries, "bundle.max_entries")
        };
        let (bytes, bytes_name) = if m.payload.unpacked_size <= cfg.max_unpacked_bytes {
            (m.payload.unpacked_size, "declared unpacked_size")
        } else {
            (cfg.max_unpacked_bytes, "bundle.max_unpacked_bytes")
        };
        Self {
            entries,
            entries_name,
            bytes,
            bytes_name,
        }
    }
}

/// Extracts `reader` (positioned at the payload) into `target`.
///
/// # Errors
/// Payload, path, link, limit and I/O errors; the staging directory is removed.
pub fn extract<R: Read>(
    reader: R,
    manifest: &Manifest,
    target: &Path,
    cfg: &Config,
) -> Result<(), Error> {
    if target.symlink_metadata().is_ok() {
        return Err(Error::TargetExists {
            path: target.to_owned(),
        });
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| {
            Error::io(
                format!("extraction target {} has no file name", target.display()),
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let staging_path = parent.join(format!(
        ".{name}.staging-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging_path)
        .map_err(|e| {
            Error::io(
                format!("cannot create staging dir {}", staging_path.display()),
                e,
            )
        })?;
    let mut staging = Staging {
        path: staging_path,
        armed: true,
    };

    let limits = Limits::new(manifest, cfg);
    let hasher = PayloadHasher::new(reader, manifest.payload.size);
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(io::BufReader::with_capacity(CHUNK, hasher))
            .map_err(|e| corrupt(manifest, format!("zstd: {e}")))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| corrupt(manifest, format!("zstd: {e}")))?;
    let stream_cap = limits.bytes.saturating_add(
        limits
            .entries
            .saturating_add(2)
            .saturating_mul(PER_ENTRY_OVERHEAD),
    );
    let capped = Capped {
        inner: decoder,
        remaining: stream_cap,
        tripped: false,
    };
    let mut archive = tar::Archive::new(capped);
    let result = unpack_entries(&mut archive, manifest, &staging.path, &limits);
    let capped = archive.into_inner();
    if capped.tripped {
        return Err(Error::UnpackedSizeExceeded {
            limit: limits.bytes,
            limit_name: limits.bytes_name,
        });
    }
    if let Err(e) = result {
        // Drain and check size/digest first: a tampered or truncated payload reports
        // as such rather than as whatever the decoder tripped over.
        let mut bufr = capped.inner.finish();
        let _ = io::copy(&mut bufr, &mut io::sink());
        bufr.into_inner().finish(manifest)?;
        return Err(e);
    }
    // Hash whatever follows the end of the tar stream (zstd epilogue, padding).
    let mut bufr = capped.inner.finish();
    io::copy(&mut bufr, &mut io::sink()).map_err(|e| Error::io("reading bundle payload", e))?;
    bufr.into_inner().finish(manifest)?;

    check_tree_links(&staging.path)?;
    sync_tree(&staging.path)?;
    fs::rename(&staging.path, target).map_err(|e| {
        Error::io(
            format!("cannot move staging dir to {}", target.display()),
            e,
        )
    })?;
    staging.armed = false;
    if let Ok(d) = fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn corrupt(m: &Manifest, reason: String) -> Error {
    Error::PayloadCorrupt {
        bundle: m.id(),
        reason,
    }
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    manifest: &Manifest,
    root: &Path,
    limits: &Limits,
) -> Result<(), Error> {
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let iter = archive
        .entries()
        .map_err(|e| corrupt(manifest, format!("tar: {e}")))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| corrupt(manifest, format!("tar: {e}")))?;
        entries += 1;
        if entries > limits.entries {
            return Err(Error::TooManyEntries {
                limit: limits.entries,
                limit_name: limits.entries_name,
            });
        }
        let raw_path = entry
            .path()
            .map_err(|e| corrupt(manifest, format!("tar path: {e}")))?
            .into_owned();
        let shown = raw_path.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let Some(rel) = safe_rel(&raw_path, &shown)? else {
            if kind.is_dir() {
                continue; // "./" — the root itself
            }
            return Err(Error::UnsafePath {
                path: shown,
                reason: "empty path",
            });
        };
        let mode = entry
            .header()
            .mode()
            .map_err(|e| corrupt(manifest, format!("tar mode of {shown:?}: {e}")))?;
        if mode & 0o6000 != 0 {
            return Err(Error::SetuidEntry { path: shown, mode });
        }
        let dest = root.join(&rel);
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                bytes = bytes.saturating_add(size);
                if bytes > limits.bytes {
                    return Err(Error::UnpackedSizeExceeded {
                        limit: limits.bytes,
                        limit_name: limits.bytes_name,
                    });
                }
                ensure_parent(root, &rel, &shown)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & 0o777 | 0o600)
                    .open(&dest)
                    .map_err(|e| exists_or_io(e, &shown, &dest))?;
                let n = io::copy(&mut (&mut entry).take(size), &mut f)
                    .map_err(|e| corrupt(manifest, format!("reading {shown:?}: {e}")))?;
                if n != size {
                    return Err(corrupt(
                        manifest,
                        format!("{shown:?} ends after {n} of {size} bytes"),
                    ));
                }
                f.flush()
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
            }
            EntryType::Directory => {
                ensure_parent(root, &rel, &shown)?;
                match dest.symlink_metadata() {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(Error::DuplicateEntry { path: shown }),
                    Err(_) => fs::DirBuilder::new()
                        .mode(mode & 0o777 | 0o700)
                        .create(&dest)
                        .map_err(|e| exists_or_io(e, &shown, &dest))?,
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| corrupt(manifest, format!("tar link of {shown:?}: {e}")))?
                    .map(|c| c.into_owned())
                    .ok_or_else(|| corrupt(manifest, format!("symlink {shown:?} has no target")))?;
                if !resolves_inside(root, &rel, &target) {
                    return Err(Error::LinkEscape {
                        kind: "symlink",
                        path: shown,
                        target: target.to_string_lossy().into_owned(),
                    });
                }
                ensure_parent(root, &rel, &shown)?;
                std::os::unix::fs::symlink(&target, &dest)
                    .map_err(|e| exists_or_io(e, &shown, &dest))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| corrupt(manifest, format!("tar link of {shown:?}: {e}")))?
                    .map(|c| c.into_owned())
                    .ok_or_else(|| {
                        corrupt(manifest, format!("hardlink {shown:?} has no target"))
                    })?;
                let escape = || Error::LinkEscape {
                    kind: "hardlink",
                    path: shown.clone(),
                    target: target.to_string_lossy().into_owned(),
                };
                let Ok(Some(trel)) = safe_rel(&target, &shown) else {
                    return Err(escape());
                };
                // The target must be a regular file already extracted, reached without
                // passing through a symlink.
                if has_symlink_ancestor(root, &trel) {
                    return Err(escape());
                }
                match root.join(&trel).symlink_metadata() {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => return Err(escape()),
                }
                ensure_parent(root, &rel, &shown)?;
                fs::hard_link(root.join(&trel), &dest)
                    .map_err(|e| exists_or_io(e, &shown, &dest))?;
            }
            EntryType::Char => return Err(special(shown, "character device")),
            EntryType::Block => return Err(special(shown, "block device")),
            EntryType::Fifo => return Err(special(shown, "fifo")),
            other => {
                return Err(Error::UnsupportedEntry {
                    path: shown,
                    kind: format!("{other:?}"),
                })
            }
        }
    }
    Ok(())
}

fn special(path: String, kind: &'static str) -> Error {
    Error::SpecialFile { path, kind }
}

fn exists_or_io(e: io::Error, shown: &str, dest: &Path) -> Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        Error::DuplicateEntry {
            path: shown.to_owned(),
        }
    } else {
        Error::io(format!("cannot create {}", dest.display()), e)
    }
}

/// Normalises an archive path to a relative path of normal components; `None` if empty.
fn safe_rel(p: &Path, shown: &str) -> Result<Option<PathBuf>, Error> {
    if shown.len() > MAX_PATH {
        return Err(Error::UnsafePath {
            path: shown.chars().take(64).collect(),
            reason: "path longer than 4096 bytes",
        });
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::UnsafePath {
                    path: shown.to_owned(),
                    reason: "contains a `..` component",
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::UnsafePath {
                    path: shown.to_owned(),
                    reason: "absolute path",
                })
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// True if any proper ancestor of `rel` inside `root` is a symlink.
fn has_symlink_ancestor(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        if cur
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return true;
        }
    }
    false
}

/// Creates the missing parent directories of `rel`, refusing to pass through a symlink
/// or a non-directory.
fn ensure_parent(root: &Path, rel: &Path, shown: &str) -> Result<(), Error> {
    let mut cur = root.to_path_buf();
    let mut so_far = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        so_far.push(c);
        match cur.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::PathThroughSymlink {
                    path: shown.to_owned(),
                    link: so_far.to_string_lossy().into_owned(),
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafePath {
                    path: shown.to_owned(),
                    reason: "a parent component is not a directory",
                })
            }
            Err(_) => fs::DirBuilder::new()
                .mode(0o755)
                .create(&cur)
                .map_err(|e| Error::io(format!("cannot create {}", cur.display()), e))?,
        }
    }
    Ok(())
}

/// Resolves symlink `link_rel -> target` against the real tree under `root`, following
/// symlinks it meets (at most [`MAX_HOPS`]); false if it leaves `root` at any point.
pub(crate) fn resolves_inside(root: &Path, link_rel: &Path, target: &Path) -> bool {
    enum Step {
        Name(OsString),
        Cur,
        Parent,
        Abs,
    }
    fn steps(p: &Path) -> Vec<Step> {
        p.components()
            .map(|c| match c {
                Component::Normal(n) => Step::Name(n.to_owned()),
                Component::CurDir => Step::Cur,
                Component::ParentDir => Step::Parent,
                Component::RootDir | Component::Prefix(_) => Step::Abs,
            })
            .collect()
    }
    let mut cur: Vec<OsString> = link_rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    let mut queue: VecDeque<Step> = steps(target).into();
    let mut hops = 0u32;
    while let Some(step) = queue.pop_front() {
        match step {
            Step::Cur => {}
            Step::Abs => return false,
            Step::Parent => {
                if cur.pop().is_none() {
                    return false;
                }
            }
            Step::Name(name) => {
                cur.push(name);
                let p = cur.iter().fold(root.to_path_buf(), |acc, c| acc.join(c));
                if p.symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return false;
                    }
                    let Ok(t) = fs::read_link(&p) else {
                        return false;
                    };
                    cur.pop();
                    for s in steps(&t).into_iter().rev() {
                        queue.push_front(s);
                    }
                }
            }
        }
    }
    true
}

/// Walks the finished tree (not following symlinks) and re-checks every symlink.
fn check_tree_links(root: &Path) -> Result<(), Error> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
            let child = rel.join(ent.file_name());
            let ft = ent
                .file_type()
                .map_err(|e| Error::io(format!("cannot stat {}", child.display()), e))?;
            if ft.is_symlink() {
                let t = fs::read_link(root.join(&child))
                    .map_err(|e| Error::io(format!("cannot read link {}", child.display()), e))?;
                if !resolves_inside(root, &child, &t) {
                    return Err(Error::LinkEscape {
                        kind: "symlink",
                        path: child.to_string_lossy().into_owned(),
                        target: t.to_string_lossy().into_owned(),
                    });
                }
            } else if ft.is_dir() {
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// fsyncs every directory of the tree (files were synced as written).
fn sync_tree(root: &Path) -> Result<(), Error> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for ent in rd.flatten() {
            if ent.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(ent.path());
            }
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))?;
    }
    Ok(())
}
