//! Deciding whether a bundle may run on this device.
//!
//! Order of checks (each refusal has its own [`Error`] variant):
//! 1. the trusted root has not expired;
//! 2. container header (magic, version, section lengths);
//! 3. a threshold of distinct `bundle`-role signatures over the exact manifest bytes
//!    (before the manifest JSON is parsed);
//! 4. manifest parse and field checks; downgrade override signatures if requested;
//! 5. manifest expiry, anti-rollback (`security_version`), target selectors
//!    (arch, model, group), the workload validator;
//! 6. only then the payload: streamed through SHA-256 with a fixed buffer, exact size.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::format::{read_header, Header};
use super::keys::KeyId;
use super::manifest::Manifest;
use super::root::{Role, TrustedRoot};
use super::{check_workload, BundleId, Config, Error};

/// Read buffer for payload hashing.
pub(crate) const CHUNK: usize = 256 * 1024;
/// What signature errors name for manifests.
pub const WHAT_MANIFEST: &str = "bundle manifest";

/// What the device is, for target selectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceIdentity {
    /// Hardware model.
    pub model: String,
    /// CPU architecture (Rust naming).
    pub arch: String,
    /// Groups the device belongs to.
    pub groups: Vec<String>,
}

impl From<&crate::config::DeviceConfig> for DeviceIdentity {
    fn from(d: &crate::config::DeviceConfig) -> Self {
        Self {
            model: d.model.clone(),
            arch: d.arch.clone(),
            groups: d.groups.clone(),
        }
    }
}

/// A bundle whose header passed every check; the payload is not read yet.
#[derive(Debug, Clone)]
pub struct Authorized {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signers: Vec<KeyId>,
    header_len: u64,
}

/// A fully verified bundle.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// `name@version`.
    pub id: BundleId,
    /// The manifest.
    pub manifest: Manifest,
    /// The exact signed manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// Distinct bundle-role keys whose signatures verified.
    pub signers: Vec<KeyId>,
    /// Where the payload was extracted, if it was.
    pub extracted_to: Option<PathBuf>,
}

/// Checks everything that can be decided from the header (see the module docs), reading
/// `reader` only up to the first payload byte.
///
/// # Errors
/// Root, container, signature, manifest, expiry, downgrade, target and workload errors.
pub fn authorize<R: Read>(
    reader: &mut R,
    root: &TrustedRoot,
    device: &DeviceIdentity,
    committed_security_version: u64,
    now: SystemTime,
) -> Result<Authorized, Error> {
    root.check_fresh(now)?;
    let header = read_header(reader)?;
    authorize_header(header, root, device, committed_security_version, now)
}

/// [`authorize`] on an already-read header.
///
/// # Errors
/// As [`authorize`] minus container errors.
pub fn authorize_header(
    header: Header,
    root: &TrustedRoot,
    device: &DeviceIdentity,
    committed_security_version: u64,
    now: SystemTime,
) -> Result<Authorized, Error> {
    root.check_fresh(now)?;
    let signers = root.check(
        WHAT_MANIFEST,
        Role::Bundle,
        &header.manifest_bytes,
        &header.signatures,
    )?;
    let manifest = Manifest::parse(&header.manifest_bytes)?;
    let id = manifest.id();
    if now >= manifest.expires.0 {
        return Err(Error::ManifestExpired {
            bundle: id,
            expires: manifest.expires.rfc3339(),
        });
    }
    if manifest.security_version < committed_security_version {
        if !manifest.allow_downgrade {
            return Err(Error::Downgrade {
                bundle: id,
                found: manifest.security_version,
                committed: committed_security_version,
            });
        }
        if root.doc().role(Role::Override).is_none() {
            return Err(Error::OverrideNotAuthorized {
                bundle: id,
                reason: "the trusted root has no override role".into(),
            });
        }
        root.check(
            WHAT_MANIFEST,
            Role::Override,
            &header.manifest_bytes,
            &header.signatures,
        )
        .map_err(|e| Error::OverrideNotAuthorized {
            bundle: id.clone(),
            reason: e.to_string(),
        })?;
    }
    let t = &manifest.targets;
    if !t.arches.is_empty() && !t.arches.contains(&device.arch) {
        return Err(Error::ArchMismatch {
            bundle: id,
            device: device.arch.clone(),
            allowed: t.arches.clone(),
        });
    }
    if !t.models.is_empty() && !t.models.contains(&device.model) {
        return Err(Error::ModelMismatch {
            bundle: id,
            device: device.model.clone(),
            allowed: t.models.clone(),
        });
    }
    if !t.groups.is_empty() && !t.groups.iter().any(|g| device.groups.contains(g)) {
        return Err(Error::GroupMismatch {
            bundle: id,
            device: device.groups.clone(),
            allowed: t.groups.clone(),
        });
    }
    check_workload(&manifest.workload).map_err(|reason| Error::WorkloadRejected {
        bundle: id.clone(),
        reason,
    })?;
    Ok(Authorized {
        manifest,
        manifest_bytes: header.manifest_bytes,
        signers,
        header_len: header.len,
    })
}

/// Verifies a whole bundle: [`authorize`], then streams the payload through SHA-256.
/// Memory use is one fixed buffer whatever the payload size.
///
/// # Errors
/// Every refusal reason; see [`Error`].
pub fn verify<R: Read>(
    mut reader: R,
    root: &TrustedRoot,
    device: &DeviceIdentity,
    committed_security_version: u64,
    now: SystemTime,
) -> Result<VerifiedBundle, Error> {
    let a = authorize(&mut reader, root, device, committed_security_version, now)?;
    a.verify_payload(reader)
}

/// [`authorize`], then safe extraction of the payload into `target` (which must not
/// exist); the tree appears at `target` only if digest and size match.
///
/// # Errors
/// Every refusal reason; see [`Error`].
#[allow(clippy::too_many_arguments)]
pub fn verify_and_extract<R: Read>(
    mut reader: R,
    root: &TrustedRoot,
    device: &DeviceIdentity,
    committed_security_version: u64,
    now: SystemTime,
    target: &Path,
    cfg: &Config,
) -> Result<VerifiedBundle, Error> {
    let a = authorize(&mut reader, root, device, committed_security_version, now)?;
    a.extract(reader, target, cfg)
}

impl Authorized {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Keys whose signatures counted.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }
    /// Offset of the first payload byte in the file (for HTTP Range requests).
    pub fn payload_offset(&self) -> u64 {
        self.header_len
    }

    fn into_verified(self, extracted_to: Option<PathBuf>) -> VerifiedBundle {
        VerifiedBundle {
            id: self.manifest.id(),
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            signers: self.signers,
            extracted_to,
        }
    }

    /// Reads the payload from `reader` (positioned at its first byte) and checks size and
    /// digest.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::SizeMismatch`], [`Error::DigestMismatch`], [`Error::Io`].
    pub fn verify_payload<R: Read>(self, reader: R) -> Result<VerifiedBundle, Error> {
        let (count, digest) = hash_pipelined(reader, self.manifest.payload.size)
            .map_err(|e| Error::io("reading bundle payload", e))?;
        check_payload(&self.manifest, count, digest)?;
        Ok(self.into_verified(None))
    }

    /// Extracts the payload into `target` through a staging directory; see
    /// [`super::extract`].
    ///
    /// # Errors
    /// Payload and extraction errors; nothing is left on disk on error.
    pub fn extract<R: Read>(
        self,
        reader: R,
        target: &Path,
        cfg: &Config,
    ) -> Result<VerifiedBundle, Error> {
        super::extract::extract(reader, &self.manifest, target, cfg)?;
        Ok(self.into_verified(Some(target.to_owned())))
    }
}

/// Reads at most `declared + 1` payload bytes, hashing them.
pub(crate) struct PayloadHasher<R> {
    inner: io::Take<R>,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> PayloadHasher<R> {
    pub(crate) fn new(inner: R, declared: u64) -> Self {
        Self {
            inner: inner.take(declared.saturating_add(1)),
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Checks size then digest.
    pub(crate) fn finish(self, m: &Manifest) -> Result<(), Error> {
        check_payload(m, self.count, self.hasher.finalize().into())
    }
}

/// Size first (short = truncated, long = trailing data), then digest.
fn check_payload(m: &Manifest, count: u64, digest: [u8; 32]) -> Result<(), Error> {
    let declared = m.payload.size;
    if count < declared {
        return Err(Error::Truncated {
            section: "payload",
            expected: declared,
            got: count,
        });
    }
    if count > declared {
        return Err(Error::SizeMismatch {
            bundle: m.id(),
            declared,
        });
    }
    let actual = hex::encode(digest);
    if actual != m.payload.sha256 {
        return Err(Error::DigestMismatch {
            bundle: m.id(),
            declared: m.payload.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Buffers in flight between the reading and the hashing thread.
const PIPELINE_BUFFERS: usize = 3;

/// Reads at most `declared + 1` bytes and hashes them, overlapping the reads (caller's
/// thread) with SHA-256 (a scoped helper thread) through a fixed set of recycled
/// buffers: memory is `PIPELINE_BUFFERS * CHUNK` whatever the size. `R` need not be `Send`.
fn hash_pipelined<R: Read>(reader: R, declared: u64) -> io::Result<(u64, [u8; 32])> {
    use std::sync::mpsc::sync_channel;
    let mut r = reader.take(declared.saturating_add(1));
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
    for _ in 0..PIPELINE_BUFFERS {
        empty_tx
            .send(vec![0u8; CHUNK])
            .map_err(|_| io::Error::other("hash pipeline closed"))?;
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for buf in full_rx {
                h.update(&buf);
                // The reader may have stopped; a closed return channel is fine.
                let _ = empty_tx.send(buf);
            }
            <[u8; 32]>::from(h.finalize())
        });
        let mut count = 0u64;
        let read_result = (|| -> io::Result<()> {
            loop {
                let mut buf = empty_rx
                    .recv()
                    .map_err(|_| io::Error::other("hash thread stopped"))?;
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                while filled < CHUNK {
                    match r.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                count += filled as u64;
                full_tx
                    .send(buf)
                    .map_err(|_| io::Error::other("hash thread stopped"))?;
            }
        })();
        drop(full_tx);
        let digest = hasher
            .join()
            .map_err(|_| io::Error::other("hash thread panicked"))?;
        read_result.map(|()| (count, digest))
    })
}

impl<R: Read> Read for PayloadHasher<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
