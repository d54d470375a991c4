//! Building bundles: a directory becomes a deterministic tar (sorted names, uid/gid 0,
//! mtime 0), zstd-compressed, hashed as it is written; then the manifest is signed and
//! the file assembled. Also adding signatures to an existing bundle.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::extract::{resolves_inside, ZSTD_WINDOW_LOG_MAX};
use super::format::{encode_header, read_header, write_bundle};
use super::keys::{SecretKey, Signature};
use super::manifest::{Manifest, PayloadInfo, Targets, Timestamp, MANIFEST_TYPE};
use super::{check_workload, Error};

/// zstd level for payloads: fast to pack and decode on an ARM board.
const ZSTD_LEVEL: i32 = 3;
/// zstd window for payloads (4 MiB), below [`ZSTD_WINDOW_LOG_MAX`].
const ZSTD_WINDOW_LOG: u32 = 22;

/// Everything of a manifest except the payload binding.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Bundle name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// Anti-rollback counter.
    pub security_version: u64,
    /// Creation time.
    pub created: SystemTime,
    /// Expiry.
    pub expires: SystemTime,
    /// Selectors.
    pub targets: Targets,
    /// Verbatim workload.toml.
    pub workload: String,
    /// Downgrade override request.
    pub allow_downgrade: bool,
}

impl PackOptions {
    /// The manifest for a payload.
    pub fn manifest(&self, payload: PayloadInfo) -> Manifest {
        Manifest {
            kind: MANIFEST_TYPE.into(),
            name: self.name.clone(),
            version: self.version.clone(),
            security_version: self.security_version,
            created: Timestamp(self.created),
            expires: Timestamp(self.expires),
            targets: self.targets.clone(),
            payload,
            workload: self.workload.clone(),
            allow_downgrade: self.allow_downgrade,
        }
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pack_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Pack {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Writes `dir` as a tar.zst payload into `out`.
///
/// # Errors
/// [`Error::Pack`] for special files, setuid/setgid files and symlinks escaping `dir`;
/// [`Error::Io`].
pub fn build_payload<W: Write>(dir: &Path, out: W) -> Result<PayloadInfo, Error> {
    let hw = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut enc = zstd::stream::write::Encoder::new(hw, ZSTD_LEVEL)
        .map_err(|e| Error::io("zstd encoder", e))?;
    enc.window_log(ZSTD_WINDOW_LOG.min(ZSTD_WINDOW_LOG_MAX))
        .map_err(|e| Error::io("zstd encoder", e))?;
    let mut builder = tar::Builder::new(enc);
    let mut entries = 0u64;
    let mut unpacked = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(|e| Error::io(format!("cannot list {}", abs.display()), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(format!("cannot list {}", abs.display()), e))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let crel = rel.join(&name);
            let cabs = dir.join(&crel);
            let meta = cabs
                .symlink_metadata()
                .map_err(|e| Error::io(format!("cannot stat {}", cabs.display()), e))?;
            let mode = meta.permissions().mode();
            if mode & 0o6000 != 0 {
                return Err(pack_err(
                    &cabs,
                    format!("mode {:o} has setuid/setgid", mode & 0o7777),
                ));
            }
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mode(mode & 0o777);
            let ft = meta.file_type();
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                builder
                    .append_data(&mut h, &crel, io::empty())
                    .map_err(|e| Error::io(format!("cannot pack {}", cabs.display()), e))?;
                subdirs.push(crel);
            } else if ft.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                let f = fs::File::open(&cabs)
                    .map_err(|e| Error::io(format!("cannot read {}", cabs.display()), e))?;
                builder
                    .append_data(&mut h, &crel, f.take(meta.len()))
                    .map_err(|e| Error::io(format!("cannot pack {}", cabs.display()), e))?;
                unpacked += meta.len();
            } else if ft.is_symlink() {
                let t = fs::read_link(&cabs)
                    .map_err(|e| Error::io(format!("cannot read link {}", cabs.display()), e))?;
                if !resolves_inside(dir, &crel, &t) {
                    return Err(pack_err(
                        &cabs,
                        format!(
                            "symlink to {} resolves outside the bundle directory",
                            t.display()
                        ),
                    ));
                }
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                builder
                    .append_link(&mut h, &crel, &t)
                    .map_err(|e| Error::io(format!("cannot pack {}", cabs.display()), e))?;
            } else {
                return Err(pack_err(
                    &cabs,
                    format!("special file (mode {:o}) cannot be shipped", meta.mode()),
                ));
            }
            entries += 1;
        }
        // Depth-first in sorted order: push reversed so the smallest pops first.
        stack.extend(subdirs.into_iter().rev());
    }
    let enc = builder
        .into_inner()
        .map_err(|e| Error::io("finishing tar", e))?;
    let mut hw = enc.finish().map_err(|e| Error::io("finishing zstd", e))?;
    hw.flush().map_err(|e| Error::io("writing payload", e))?;
    Ok(PayloadInfo {
        sha256: hex::encode(hw.hasher.finalize()),
        size: hw.count,
        unpacked_size: unpacked,
        entries,
        compression: "zstd".into(),
        archive: "tar".into(),
    })
}

/// Packs `dir` into a new bundle file `out` signed by `keys`. Returns the manifest.
///
/// # Errors
/// [`Error::WorkloadRejected`], [`Error::Pack`], [`Error::Io`], [`Error::InvalidManifest`].
pub fn pack(
    dir: &Path,
    opts: &PackOptions,
    keys: &[SecretKey],
    out: &Path,
) -> Result<Manifest, Error> {
    if out.symlink_metadata().is_ok() {
        return Err(Error::io(
            format!("{} already exists; refusing to overwrite", out.display()),
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let probe = opts.manifest(PayloadInfo {
        sha256: "0".repeat(64),
        size: 0,
        unpacked_size: 0,
        entries: 0,
        compression: "zstd".into(),
        archive: "tar".into(),
    });
    probe.validate()?;
    check_workload(&opts.workload).map_err(|reason| Error::WorkloadRejected {
        bundle: probe.id(),
        reason,
    })?;
    let tmp_payload = sibling(out, ".payload.tmp");
    let tmp_out = sibling(out, ".tmp");
    let result = (|| {
        let mut pf = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_payload)
            .map_err(|e| Error::io(format!("cannot create {}", tmp_payload.display()), e))?;
        let info = build_payload(dir, BufWriter::new(&mut pf))?;
        pf.rewind().map_err(|e| Error::io("rewinding payload", e))?;
        let manifest = opts.manifest(info);
        manifest.validate()?;
        let bytes = manifest.to_bytes()?;
        let sigs: Vec<Signature> = keys.iter().map(|k| k.sign(&bytes)).collect();
        let mut of = BufWriter::new(
            fs::File::create(&tmp_out)
                .map_err(|e| Error::io(format!("cannot create {}", tmp_out.display()), e))?,
        );
        write_bundle(&mut of, &bytes, &sigs, &mut BufReader::new(pf))?;
        finish_file(of, &tmp_out, out)?;
        Ok(manifest)
    })();
    let _ = fs::remove_file(&tmp_payload);
    if result.is_err() {
        let _ = fs::remove_file(&tmp_out);
    }
    result
}

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn finish_file(of: BufWriter<fs::File>, tmp: &Path, dest: &Path) -> Result<(), Error> {
    let f = of
        .into_inner()
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e.into_error()))?;
    f.sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", tmp.display()), e))?;
    fs::rename(tmp, dest).map_err(|e| Error::io(format!("cannot rename to {}", dest.display()), e))
}

/// Adds signatures by `keys` to the bundle at `path` (rewritten atomically). Signatures
/// are outside the signed bytes, so existing ones stay valid.
///
/// # Errors
/// [`Error::DuplicateSignature`] if a key already signed; container and I/O errors.
pub fn add_signatures(path: &Path, keys: &[SecretKey]) -> Result<Vec<Signature>, Error> {
    let f = fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut r = BufReader::new(f);
    let header = read_header(&mut r)?;
    Manifest::parse(&header.manifest_bytes)?;
    let mut sigs = header.signatures;
    for k in keys {
        let s = k.sign(&header.manifest_bytes);
        if sigs.iter().any(|x| x.keyid == s.keyid) {
            return Err(Error::DuplicateSignature {
                what: super::verify::WHAT_MANIFEST,
                keyid: s.keyid,
            });
        }
        sigs.push(s);
    }
    let tmp = sibling(path, ".tmp");
    let result = (|| {
        let mut of = BufWriter::new(
            fs::File::create(&tmp)
                .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?,
        );
        write_bundle(&mut of, &header.manifest_bytes, &sigs, &mut r)?;
        finish_file(of, &tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| sigs)
}

/// An in-memory bundle from parts (tests, tools).
///
/// # Errors
/// [`Error::SectionTooLarge`].
pub fn assemble(
    manifest_bytes: &[u8],
    sigs: &[Signature],
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut v = encode_header(manifest_bytes, sigs)?;
    v.extend_from_slice(payload);
    Ok(v)
}
