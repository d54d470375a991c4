//! Signed workload bundles: the single-file format, keys, trust roots, verification and
//! safe extraction. The byte layout is specified in `docs/bundle-format.md`.
//!
//! # Invariants
//! - Nothing from a bundle is trusted before a threshold of distinct keys that the trusted
//!   root authorises for the `bundle` role has signed the exact manifest bytes. Signatures
//!   are checked over raw bytes *before* the manifest JSON is parsed.
//! - Target selectors, expiry and anti-rollback are decided from the header alone, before
//!   a single payload byte is read (the update engine can stop a download there).
//! - The payload is bound to the manifest by SHA-256 digest and exact size. It is hashed
//!   while it streams; memory stays flat whatever the payload size.
//! - Extraction writes into a private staging directory next to the target and renames it
//!   into place only after the digest and size matched and every link was re-checked; on
//!   any failure the staging directory is removed, so no partial tree is ever visible.
//! - Every reason for refusal has its own [`Error`] variant, naming what was wrong.
//!
//! # Layout
//! - `format`: the container (magic, version, length-prefixed manifest and signatures).
//! - `manifest`: the signed manifest document.
//! - `keys`: ed25519 key files, key ids, signatures.
//! - `root`: trust root documents, rotation, the on-device chain ([`TrustStore`]).
//! - `verify`: [`verify`], [`authorize`] and [`DeviceIdentity`].
//! - `extract`: safe tar.zst extraction through a staging directory.
//! - `pack`: building bundles from a directory (used by the CLI and tests).
//! - `cli`: `fleetlet keys …` and `fleetlet bundle …`.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub mod cli;
pub mod extract;
pub mod format;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod root;
pub mod verify;

pub use keys::{KeyId, PublicKey, SecretKey, Signature};
pub use manifest::{Manifest, PayloadInfo, Targets, Timestamp};
pub use root::{Role, RootDoc, TrustStore, TrustedRoot};
pub use verify::{
    authorize, verify, verify_and_extract, Authorized, DeviceIdentity, VerifiedBundle,
};

/// Identity of a bundle: `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleId {
    /// Bundle name.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Every reason a bundle, key file or trust root is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The file ended before the section was complete.
    #[error("bundle is truncated: the {section} ends after {got} of {expected} bytes")]
    Truncated {
        /// Which section: `header`, `manifest`, `signatures`, `payload`.
        section: &'static str,
        /// Bytes the section should have.
        expected: u64,
        /// Bytes that were there.
        got: u64,
    },
    /// The payload is longer than the manifest declares.
    #[error("payload of {bundle} is longer than the declared {declared} bytes (trailing data)")]
    SizeMismatch {
        /// The bundle.
        bundle: BundleId,
        /// Declared payload size.
        declared: u64,
    },
    /// The payload digest differs from the signed one.
    #[error("payload of {bundle} has sha256 {actual}, the signed manifest declares {declared}")]
    DigestMismatch {
        /// The bundle.
        bundle: BundleId,
        /// Signed digest (hex).
        declared: String,
        /// Computed digest (hex).
        actual: String,
    },
    /// The file does not start with the bundle magic.
    #[error("not a fleetlet bundle: magic bytes are {found:?}, expected \"FLTBUNDL\"")]
    BadMagic {
        /// The first bytes, escaped.
        found: String,
    },
    /// A container version this build cannot read.
    #[error("unsupported bundle format version {found} (this fleetlet reads version {supported})")]
    UnsupportedFormat {
        /// Version in the file.
        found: u32,
        /// Version we read.
        supported: u32,
    },
    /// A length prefix exceeds its limit.
    #[error("the {section} length {len} is outside the allowed range (1 to {max} bytes)")]
    SectionTooLarge {
        /// Which section.
        section: &'static str,
        /// Declared length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A document is not valid JSON of the expected shape (including unknown keys).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// Parser message (names the field).
        reason: String,
    },
    /// A manifest field has an invalid value.
    #[error("invalid manifest field `{field}`: {reason}")]
    InvalidManifest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A root document field has an invalid value.
    #[error("invalid root document: {reason}")]
    InvalidRoot {
        /// What is wrong.
        reason: String,
    },
    /// The workload manifest inside the bundle was refused by the workload validator.
    #[error("workload manifest of {bundle} rejected: {reason}")]
    WorkloadRejected {
        /// The bundle.
        bundle: BundleId,
        /// Validator message.
        reason: String,
    },
    /// A signature's key id is not in the trusted root, and the threshold is not met.
    #[error("{what} is signed by unknown key {keyid}; only {valid} of the {threshold} required {role} signatures are valid")]
    UnknownKey {
        /// The signed document (`bundle manifest`, `root`).
        what: &'static str,
        /// The unknown key id.
        keyid: KeyId,
        /// Role whose threshold applies.
        role: Role,
        /// Valid distinct signatures found.
        valid: usize,
        /// Required.
        threshold: u32,
    },
    /// A key was removed by a root rotation, and the threshold is not met.
    #[error("{what} is signed by key {keyid}, revoked by root version {revoked_in}; only {valid} of the {threshold} required {role} signatures are valid")]
    RevokedKey {
        /// The signed document.
        what: &'static str,
        /// The revoked key.
        keyid: KeyId,
        /// First root version without the key.
        revoked_in: u64,
        /// Role whose threshold applies.
        role: Role,
        /// Valid distinct signatures found.
        valid: usize,
        /// Required.
        threshold: u32,
    },
    /// A key the root knows signed, but it is not authorised for the role.
    #[error("{what} is signed by key {keyid}, which the root does not authorise for the {role} role; only {valid} of the {threshold} required signatures are valid")]
    KeyNotAuthorized {
        /// The signed document.
        what: &'static str,
        /// The key.
        keyid: KeyId,
        /// Role whose threshold applies.
        role: Role,
        /// Valid distinct signatures found.
        valid: usize,
        /// Required.
        threshold: u32,
    },
    /// A signature by an authorised key does not verify over the signed bytes.
    #[error("bad signature by key {keyid} over the {what} (tampered bytes or wrong private key)")]
    BadSignature {
        /// The signed document.
        what: &'static str,
        /// The key id the signature claims.
        keyid: KeyId,
    },
    /// The same key id appears twice in a signature list.
    #[error("key {keyid} signed the {what} more than once; a key counts once toward a threshold")]
    DuplicateSignature {
        /// The signed document.
        what: &'static str,
        /// The repeated key id.
        keyid: KeyId,
    },
    /// Fewer valid distinct signatures than the threshold.
    #[error("{what} has {valid} valid {role} signatures, the threshold is {threshold}")]
    BelowThreshold {
        /// The signed document.
        what: &'static str,
        /// Role whose threshold applies.
        role: Role,
        /// Valid distinct signatures found.
        valid: usize,
        /// Required.
        threshold: u32,
    },
    /// The manifest's expiry is in the past (freeze attack or stale bundle).
    #[error("manifest of {bundle} expired at {expires}")]
    ManifestExpired {
        /// The bundle.
        bundle: BundleId,
        /// Expiry (RFC 3339).
        expires: String,
    },
    /// The trusted root itself has expired; a rotation is needed.
    #[error("trusted root version {version} expired at {expires}; rotate to a new root")]
    RootExpired {
        /// Root version.
        version: u64,
        /// Expiry (RFC 3339).
        expires: String,
    },
    /// The bundle's security_version is below the committed one.
    #[error("bundle {bundle} has security_version {found}, below the committed {committed}: downgrade refused")]
    Downgrade {
        /// The bundle.
        bundle: BundleId,
        /// Bundle's security_version.
        found: u64,
        /// Highest committed security_version on the device.
        committed: u64,
    },
    /// The manifest asks for a downgrade override but lacks the operator signatures.
    #[error("bundle {bundle} requests a security downgrade override, but {reason}")]
    OverrideNotAuthorized {
        /// The bundle.
        bundle: BundleId,
        /// Why the override does not hold.
        reason: String,
    },
    /// The device's CPU architecture is not targeted.
    #[error("bundle {bundle} targets architectures {allowed:?}; this device is {device:?}")]
    ArchMismatch {
        /// The bundle.
        bundle: BundleId,
        /// Device arch.
        device: String,
        /// Targeted arches.
        allowed: Vec<String>,
    },
    /// The device's hardware model is not targeted.
    #[error("bundle {bundle} targets hardware models {allowed:?}; this device is {device:?}")]
    ModelMismatch {
        /// The bundle.
        bundle: BundleId,
        /// Device model.
        device: String,
        /// Targeted models.
        allowed: Vec<String>,
    },
    /// The device is in none of the targeted groups.
    #[error("bundle {bundle} targets device groups {allowed:?}; this device is in {device:?}")]
    GroupMismatch {
        /// The bundle.
        bundle: BundleId,
        /// Device groups.
        device: Vec<String>,
        /// Targeted groups.
        allowed: Vec<String>,
    },
    /// A root rotation has the wrong version number.
    #[error("root rotation from version {current} must be to version {expected}, got {found}")]
    RootVersion {
        /// Current root version.
        current: u64,
        /// current + 1.
        expected: u64,
        /// Version in the new root.
        found: u64,
    },
    /// A new root is not signed by a threshold of the current root's root keys.
    #[error("root version {found} is not signed by a threshold of the current root (version {current}) root keys: {reason}")]
    RotationNotAuthorized {
        /// Current root version.
        current: u64,
        /// Proposed version.
        found: u64,
        /// The threshold failure.
        reason: String,
    },
    /// An archive entry path is absolute, contains `..`, or is otherwise unsafe.
    #[error("archive entry {path:?} refused: {reason}")]
    UnsafePath {
        /// Path in the archive.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A symlink or hardlink resolves outside the bundle root.
    #[error("archive {kind} {path:?} -> {target:?} resolves outside the bundle root")]
    LinkEscape {
        /// `symlink` or `hardlink`.
        kind: &'static str,
        /// Link path.
        path: String,
        /// Link target.
        target: String,
    },
    /// An entry would be written through a symlink.
    #[error("archive entry {path:?} refused: its parent {link:?} is a symlink (write-through)")]
    PathThroughSymlink {
        /// Entry path.
        path: String,
        /// The symlink component.
        link: String,
    },
    /// Device node, FIFO or socket.
    #[error("archive entry {path:?} is a {kind}; special files are refused")]
    SpecialFile {
        /// Entry path.
        path: String,
        /// Kind of special file.
        kind: &'static str,
    },
    /// setuid/setgid bit.
    #[error("archive entry {path:?} has mode {mode:o} with setuid/setgid; refused")]
    SetuidEntry {
        /// Entry path.
        path: String,
        /// The mode.
        mode: u32,
    },
    /// An entry type we do not extract.
    #[error("archive entry {path:?} has unsupported type {kind}")]
    UnsupportedEntry {
        /// Entry path.
        path: String,
        /// Type name.
        kind: String,
    },
    /// An entry would replace an earlier one.
    #[error("archive entry {path:?} appears twice or replaces an earlier entry")]
    DuplicateEntry {
        /// Entry path.
        path: String,
    },
    /// Unpacked bytes exceed the declared size or the configured cap (archive bomb).
    #[error("archive unpacks to more than {limit} bytes ({limit_name}); extraction stopped")]
    UnpackedSizeExceeded {
        /// The limit hit.
        limit: u64,
        /// `declared unpacked_size` or `bundle.max_unpacked_bytes`.
        limit_name: &'static str,
    },
    /// More entries than declared or than the configured cap.
    #[error("archive has more than {limit} entries ({limit_name}); extraction stopped")]
    TooManyEntries {
        /// The limit hit.
        limit: u64,
        /// `declared entries` or `bundle.max_entries`.
        limit_name: &'static str,
    },
    /// The payload does not decompress or is not a valid tar stream.
    #[error("payload of {bundle} is corrupt: {reason}")]
    PayloadCorrupt {
        /// The bundle.
        bundle: BundleId,
        /// Decoder message.
        reason: String,
    },
    /// The extraction target already exists.
    #[error("extraction target {path} already exists")]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// A key file is unreadable, malformed or has unsafe permissions.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Packing a directory failed on an entry we refuse to ship.
    #[error("cannot pack {path}: {reason}")]
    Pack {
        /// Source path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause,
        }
    }
}

/// Default cap on unpacked bytes: 4 GiB. Larger than any ROS 2 workload we ship (a full
/// navigation stack with maps is well under 2 GiB) and below the free space of the
/// smallest supported board's data partition (8 GiB eMMC).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default cap on archive entries: 200 000. A ROS 2 install tree with Python packages
/// has ~20 000 files; ten times that still bounds inode use and extraction time.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;

/// `[bundle]` configuration: hard caps applied to every extraction on top of the sizes
/// the signed manifest declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Maximum unpacked bytes of one bundle.
    pub max_unpacked_bytes: u64,
    /// Maximum entries (files, directories, links) of one bundle.
    pub max_entries: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Config {
    /// Collects configuration problems.
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        if self.max_unpacked_bytes == 0 {
            problems.push(crate::config::Problem::new(
                "bundle.max_unpacked_bytes",
                "must be greater than 0, got 0",
            ));
        }
        if self.max_entries == 0 {
            problems.push(crate::config::Problem::new(
                "bundle.max_entries",
                "must be greater than 0, got 0",
            ));
        }
    }
}

/// A validator for the verbatim `workload.toml` text carried in a bundle: returns a
/// message naming the problem. Registered once with [`set_workload_validator`].
pub type WorkloadValidator = fn(&str) -> Result<(), String>;

static WORKLOAD_VALIDATOR: OnceLock<WorkloadValidator> = OnceLock::new();

/// Registers the supervisor's workload-manifest validator, used by `bundle pack` and by
/// verification. Returns `false` if one was already registered (the first one stays).
pub fn set_workload_validator(f: WorkloadValidator) -> bool {
    WORKLOAD_VALIDATOR.set(f).is_ok()
}

/// Checks workload text: it must be TOML, and pass the registered validator if any.
///
/// # Errors
/// A message naming the problem.
pub fn check_workload(text: &str) -> Result<(), String> {
    toml::from_str::<toml::Table>(text).map_err(|e| format!("not valid TOML: {e}"))?;
    match WORKLOAD_VALIDATOR.get() {
        Some(f) => f(text),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_zero_caps_naming_full_keys() {
        let mut problems = Vec::new();
        Config {
            max_unpacked_bytes: 0,
            max_entries: 0,
        }
        .validate(&mut problems);
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["bundle.max_unpacked_bytes", "bundle.max_entries"]);
        let mut none = Vec::new();
        Config::default().validate(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn config_unknown_keys_are_errors() {
        let e = toml::from_str::<Config>("max_entries = 5\nmax_files = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_files"), "{e}");
        let c: Config = toml::from_str("max_entries = 5\n").unwrap();
        assert_eq!(c.max_entries, 5);
        assert_eq!(c.max_unpacked_bytes, DEFAULT_MAX_UNPACKED_BYTES);
    }

    #[test]
    fn workload_must_be_toml() {
        assert!(check_workload("[process.a]\ncommand = \"x\"\n").is_ok());
        assert!(check_workload("[process.a\n")
            .unwrap_err()
            .contains("not valid TOML"));
    }
}
