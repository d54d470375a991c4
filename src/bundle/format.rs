//! The single-file container (all integers big-endian):
//!
//! ```text
//! offset      size  field
//! 0           8     magic "FLTBUNDL"
//! 8           4     format version (1)
//! 12          4     M = manifest length (1 ..= 1 MiB)
//! 16          M     manifest: UTF-8 JSON, the exact bytes that are signed
//! 16+M        4     S = signatures length (2 ..= 64 KiB)
//! 20+M        S     signatures: JSON array [{"keyid": "...", "sig": "..."}]
//! 20+M+S      P     payload: zstd-compressed tar, P = manifest.payload.size; then EOF
//! ```
//!
//! Signatures are outside the signed bytes, so `bundle sign` can add one without changing
//! what earlier signers signed.

use std::io::{self, Read, Write};

use super::keys::Signature;
use super::Error;

/// Magic bytes.
pub const MAGIC: &[u8; 8] = b"FLTBUNDL";
/// Container version written and read.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u32 = 1024 * 1024;
/// Largest signatures block accepted.
pub const MAX_SIGNATURES_BYTES: u32 = 64 * 1024;

/// The parsed header: everything before the payload.
#[derive(Debug, Clone)]
pub struct Header {
    /// Exact manifest bytes (what signatures cover).
    pub manifest_bytes: Vec<u8>,
    /// Signatures, in file order (duplicates preserved; verification rejects them).
    pub signatures: Vec<Signature>,
    /// Bytes from the start of the file to the first payload byte.
    pub len: u64,
}

/// Reads exactly `buf.len()` bytes, mapping a short read to [`Error::Truncated`].
fn read_section<R: Read>(r: &mut R, buf: &mut [u8], section: &'static str) -> Result<(), Error> {
    let mut got = 0usize;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    section,
                    expected: buf.len() as u64,
                    got: got as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading bundle {section}"), e)),
        }
    }
    Ok(())
}

fn read_u32<R: Read>(r: &mut R, section: &'static str) -> Result<u32, Error> {
    let mut b = [0u8; 4];
    read_section(r, &mut b, section)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads the header from the start of a bundle, leaving `r` at the first payload byte.
///
/// # Errors
/// [`Error::BadMagic`], [`Error::UnsupportedFormat`], [`Error::SectionTooLarge`],
/// [`Error::Truncated`], [`Error::Malformed`] (signatures block).
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, Error> {
    let mut magic = [0u8; 8];
    read_section(r, &mut magic, "header")?;
    if &magic != MAGIC {
        return Err(Error::BadMagic {
            found: magic.escape_ascii().to_string(),
        });
    }
    let version = read_u32(r, "header")?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let m = read_u32(r, "header")?;
    if m == 0 || m > MAX_MANIFEST_BYTES {
        return Err(Error::SectionTooLarge {
            section: "manifest",
            len: u64::from(m),
            max: u64::from(MAX_MANIFEST_BYTES),
        });
    }
    let mut manifest_bytes = vec![0u8; m as usize];
    read_section(r, &mut manifest_bytes, "manifest")?;
    let s = read_u32(r, "signatures length")?;
    if s > MAX_SIGNATURES_BYTES {
        return Err(Error::SectionTooLarge {
            section: "signatures",
            len: u64::from(s),
            max: u64::from(MAX_SIGNATURES_BYTES),
        });
    }
    let mut sig_bytes = vec![0u8; s as usize];
    read_section(r, &mut sig_bytes, "signatures")?;
    let signatures = parse_signatures(&sig_bytes)?;
    Ok(Header {
        manifest_bytes,
        signatures,
        len: 20 + u64::from(m) + u64::from(s),
    })
}

/// Parses a signatures block.
///
/// # Errors
/// [`Error::Malformed`].
pub fn parse_signatures(bytes: &[u8]) -> Result<Vec<Signature>, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        what: "signatures block",
        reason: e.to_string(),
    })
}

/// Encodes the header (everything before the payload).
///
/// # Errors
/// [`Error::SectionTooLarge`] when a section exceeds its limit.
pub fn encode_header(manifest_bytes: &[u8], signatures: &[Signature]) -> Result<Vec<u8>, Error> {
    let sig_bytes = serde_json::to_vec(signatures).map_err(|e| Error::Malformed {
        what: "signatures block",
        reason: e.to_string(),
    })?;
    if manifest_bytes.is_empty() || manifest_bytes.len() > MAX_MANIFEST_BYTES as usize {
        return Err(Error::SectionTooLarge {
            section: "manifest",
            len: manifest_bytes.len() as u64,
            max: u64::from(MAX_MANIFEST_BYTES),
        });
    }
    if sig_bytes.len() > MAX_SIGNATURES_BYTES as usize {
        return Err(Error::SectionTooLarge {
            section: "signatures",
            len: sig_bytes.len() as u64,
            max: u64::from(MAX_SIGNATURES_BYTES),
        });
    }
    let mut out = Vec::with_capacity(20 + manifest_bytes.len() + sig_bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(manifest_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(manifest_bytes);
    out.extend_from_slice(&(sig_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&sig_bytes);
    Ok(out)
}

/// Writes a complete bundle: header, then the payload copied from `payload`.
///
/// # Errors
/// [`Error::Io`] on write failures.
pub fn write_bundle<W: Write, R: Read>(
    out: &mut W,
    manifest_bytes: &[u8],
    signatures: &[Signature],
    payload: &mut R,
) -> Result<u64, Error> {
    let header = encode_header(manifest_bytes, signatures)?;
    out.write_all(&header)
        .map_err(|e| Error::io("writing bundle header", e))?;
    io::copy(payload, out).map_err(|e| Error::io("writing bundle payload", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_magic_version_and_length_prefixed_sections() {
        let manifest = br#"{"a":1}"#;
        let h = encode_header(manifest, &[]).unwrap();
        let expected: Vec<u8> = [
            &b"FLTBUNDL"[..], // magic
            &[0, 0, 0, 1],    // format version 1, big-endian
            &[0, 0, 0, 7],    // manifest length
            manifest,         // manifest bytes (signed)
            &[0, 0, 0, 2],    // signatures length
            b"[]",            // signatures JSON
        ]
        .concat();
        assert_eq!(h, expected);
        let mut r = &h[..];
        let parsed = read_header(&mut r).unwrap();
        assert_eq!(parsed.manifest_bytes, manifest);
        assert!(parsed.signatures.is_empty());
        assert_eq!(parsed.len, h.len() as u64);
    }

    #[test]
    fn signatures_block_with_unknown_fields_is_malformed() {
        let e =
            parse_signatures(br#"[{"keyid":"00112233445566778899aabbccddeeff","sig":"00","x":1}]"#)
                .unwrap_err();
        assert!(matches!(
            e,
            Error::Malformed {
                what: "signatures block",
                ..
            }
        ));
    }

    #[test]
    fn empty_manifest_is_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            read_header(&mut &b[..]).unwrap_err(),
            Error::SectionTooLarge {
                section: "manifest",
                len: 0,
                ..
            }
        ));
    }
}
