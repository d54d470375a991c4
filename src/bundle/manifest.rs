//! The signed bundle manifest (JSON, unknown keys are errors).

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{BundleId, Error};

/// `_type` of a bundle manifest.
pub const MANIFEST_TYPE: &str = "fleetlet/bundle-manifest/v1";
/// Longest bundle name.
const MAX_NAME: usize = 64;

/// A UTC instant written as RFC 3339 with a `Z` suffix, e.g. `2026-12-02T00:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// RFC 3339, whole seconds.
    pub fn rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.0).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map(Timestamp).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not an RFC 3339 UTC time like 2026-12-02T00:00:00Z: {e}"
            ))
        })
    }
}

/// Which devices a bundle is for. An empty list matches every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Hardware models (exact match with the device's model).
    #[serde(default)]
    pub models: Vec<String>,
    /// CPU architectures as Rust names them (`x86_64`, `aarch64`, `arm`).
    #[serde(default)]
    pub arches: Vec<String>,
    /// Device groups; the device must be in at least one.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What binds the payload to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    /// SHA-256 of the payload bytes as stored (compressed), lowercase hex.
    pub sha256: String,
    /// Payload bytes as stored.
    pub size: u64,
    /// Sum of the sizes of regular files in the archive.
    pub unpacked_size: u64,
    /// Number of archive entries (files, directories, links).
    pub entries: u64,
    /// Always `zstd`.
    pub compression: String,
    /// Always `tar`.
    pub archive: String,
}

/// The signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_TYPE`]; keeps a root document's signature from passing as a
    /// manifest's.
    #[serde(rename = "_type")]
    pub kind: String,
    /// Bundle name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Anti-rollback counter: the device refuses anything below the highest it committed.
    pub security_version: u64,
    /// When the bundle was packed.
    pub created: Timestamp,
    /// After this instant the manifest is refused.
    pub expires: Timestamp,
    /// Device selectors.
    #[serde(default)]
    pub targets: Targets,
    /// Payload binding.
    pub payload: PayloadInfo,
    /// Verbatim `workload.toml`.
    pub workload: String,
    /// Operator override allowing a lower security_version; honoured only when the
    /// manifest also carries a threshold of signatures from the root's `override` role.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

impl Manifest {
    /// `name@version`.
    pub fn id(&self) -> BundleId {
        BundleId {
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }

    /// Parses and validates manifest bytes.
    ///
    /// # Errors
    /// [`Error::Malformed`] (not JSON, unknown or missing keys, wrong types) or
    /// [`Error::InvalidManifest`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let m: Manifest =
            serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Malformed {
                what: "manifest",
                reason: e.to_string(),
            })?;
        de.end().map_err(|e| Error::Malformed {
            what: "manifest",
            reason: e.to_string(),
        })?;
        m.validate()?;
        Ok(m)
    }

    /// The bytes to sign: compact JSON.
    ///
    /// # Errors
    /// [`Error::Malformed`] if serialisation fails (it does not for valid values).
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| Error::Malformed {
            what: "manifest",
            reason: e.to_string(),
        })
    }

    /// Checks field values.
    ///
    /// # Errors
    /// [`Error::InvalidManifest`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Error::InvalidManifest { field, reason };
        if self.kind != MANIFEST_TYPE {
            return Err(bad(
                "_type",
                format!("is {:?}, expected {MANIFEST_TYPE:?}", self.kind),
            ));
        }
        validate_name(&self.name).map_err(|r| bad("name", r))?;
        if self.expires <= self.created {
            return Err(bad(
                "expires",
                format!("{} is not after created {}", self.expires, self.created),
            ));
        }
        let p = &self.payload;
        if p.sha256.len() != 64
            || !p
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad(
                "payload.sha256",
                format!("{:?} is not 64 lowercase hex characters", p.sha256),
            ));
        }
        if p.compression != "zstd" {
            return Err(bad(
                "payload.compression",
                format!("{:?} is not \"zstd\"", p.compression),
            ));
        }
        if p.archive != "tar" {
            return Err(bad(
                "payload.archive",
                format!("{:?} is not \"tar\"", p.archive),
            ));
        }
        for (field, list) in [
            ("targets.models", &self.targets.models),
            ("targets.arches", &self.targets.arches),
            ("targets.groups", &self.targets.groups),
        ] {
            if let Some(e) = list.iter().find(|s| s.is_empty() || s.len() > 128) {
                return Err(bad(
                    field,
                    format!("entry {e:?} must be 1..=128 characters"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a bundle name.
///
/// # Errors
/// A message naming the problem.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_first || !ok_rest || name.len() > MAX_NAME || name.contains("..") {
        return Err(format!(
            "{name:?} must match [a-z0-9][a-z0-9._-]* (no \"..\"), at most {MAX_NAME} characters"
        ));
    }
    Ok(())
}
