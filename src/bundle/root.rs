//! Trust roots: which keys may sign what, with thresholds, version and expiry.
//!
//! A root file is JSON `{"signed": "<root document JSON text>", "signatures": [...]}`;
//! signatures cover the exact UTF-8 bytes of the `signed` string. The document:
//! `{"_type": "fleetlet/root/v1", "version", "expires", "keys": [{keyid, type, public}],
//! "roles": {"root": {keyids, threshold}, "bundle": {...}, "override": {...}?}}`.
//!
//! Rotation (TUF-style): root N+1 is accepted only when a threshold of root N's `root`
//! keys *and* a threshold of root N+1's own `root` keys signed it. Keys present in an
//! earlier root but absent from the current one are revoked. A device keeps the chain in
//! [`TrustStore`] and re-verifies it from the configured anchor on every load.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::keys::{KeyId, PublicKey, SecretKey, Signature};
use super::manifest::Timestamp;
use super::Error;

/// `_type` of a root document.
pub const ROOT_TYPE: &str = "fleetlet/root/v1";
/// Largest root file accepted.
const MAX_ROOT_FILE: u64 = 1024 * 1024;
/// What signature errors name for roots.
const WHAT_ROOT: &str = "root document";

/// A role keys can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Signs root documents (rotations).
    Root,
    /// Signs bundle manifests.
    Bundle,
    /// Co-signs manifests that request a security downgrade.
    Override,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Root => "root",
            Self::Bundle => "bundle",
            Self::Override => "override",
        })
    }
}

/// One key entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Key id (must match the key).
    pub keyid: KeyId,
    /// Always `ed25519`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Raw public key, hex.
    pub public: String,
}

/// Keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    /// Authorised key ids.
    pub keyids: Vec<KeyId>,
    /// Distinct valid signatures required (1..=keyids.len()).
    pub threshold: u32,
}

/// The roles of a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Root-signing role.
    pub root: RoleKeys,
    /// Bundle-signing role.
    pub bundle: RoleKeys,
    /// Optional downgrade-override role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<RoleKeys>,
}

/// The signed root document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDoc {
    /// Always [`ROOT_TYPE`].
    #[serde(rename = "_type")]
    pub kind: String,
    /// Version, +1 per rotation.
    pub version: u64,
    /// After this the root is refused for verification.
    pub expires: Timestamp,
    /// All keys.
    pub keys: Vec<KeyEntry>,
    /// Role assignments.
    pub roles: Roles,
}

/// A root file: signed text plus signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootFile {
    /// The exact signed JSON text.
    pub signed: String,
    /// Signatures over `signed`.
    pub signatures: Vec<Signature>,
}

impl RootFile {
    /// Builds an unsigned root file from a document (pretty-printed signed text).
    ///
    /// # Errors
    /// [`Error::InvalidRoot`] if the document is inconsistent.
    pub fn new(doc: &RootDoc) -> Result<Self, Error> {
        doc.check()?;
        let signed = serde_json::to_string_pretty(doc).map_err(|e| Error::InvalidRoot {
            reason: e.to_string(),
        })?;
        Ok(Self {
            signed,
            signatures: Vec::new(),
        })
    }

    /// Parses a root file's bytes.
    ///
    /// # Errors
    /// [`Error::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            what: "root file",
            reason: e.to_string(),
        })
    }

    /// Reads a root file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::SectionTooLarge`], [`Error::Malformed`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::parse(&read_root_bytes(path)?)
    }

    /// The document (parsed and checked, signatures NOT verified).
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::InvalidRoot`].
    pub fn doc(&self) -> Result<RootDoc, Error> {
        let mut de = serde_json::Deserializer::from_str(&self.signed);
        let doc: RootDoc =
            serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Malformed {
                what: "root document",
                reason: e.to_string(),
            })?;
        de.end().map_err(|e| Error::Malformed {
            what: "root document",
            reason: e.to_string(),
        })?;
        doc.check()?;
        Ok(doc)
    }

    /// Adds a signature by `key`.
    ///
    /// # Errors
    /// [`Error::DuplicateSignature`] if the key already signed.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), Error> {
        let sig = key.sign(self.signed.as_bytes());
        if self.signatures.iter().any(|s| s.keyid == sig.keyid) {
            return Err(Error::DuplicateSignature {
                what: WHAT_ROOT,
                keyid: sig.keyid,
            });
        }
        self.signatures.push(sig);
        Ok(())
    }

    /// Serialised file bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

fn read_root_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    let meta = fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot read root {}", path.display()), e))?;
    if meta.len() > MAX_ROOT_FILE {
        return Err(Error::SectionTooLarge {
            section: "root file",
            len: meta.len(),
            max: MAX_ROOT_FILE,
        });
    }
    fs::read(path).map_err(|e| Error::io(format!("cannot read root {}", path.display()), e))
}

impl RootDoc {
    /// A version-1 document.
    pub fn new(expires: SystemTime, keys: &[PublicKey], roles: Roles) -> Self {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for k in keys {
            if !entries.iter().any(|e| e.keyid == k.keyid) {
                entries.push(KeyEntry {
                    keyid: k.keyid.clone(),
                    kind: "ed25519".into(),
                    public: k.to_hex(),
                });
            }
        }
        Self {
            kind: ROOT_TYPE.into(),
            version: 1,
            expires: Timestamp(expires),
            keys: entries,
            roles,
        }
    }

    /// The role's keys, if the role exists.
    pub fn role(&self, role: Role) -> Option<&RoleKeys> {
        match role {
            Role::Root => Some(&self.roles.root),
            Role::Bundle => Some(&self.roles.bundle),
            Role::Override => self.roles.r#override.as_ref(),
        }
    }

    /// Consistency checks: type, key ids match keys, roles reference known keys without
    /// duplicates, thresholds in 1..=n.
    ///
    /// # Errors
    /// [`Error::InvalidRoot`].
    pub fn check(&self) -> Result<(), Error> {
        let bad = |reason: String| Error::InvalidRoot { reason };
        if self.kind != ROOT_TYPE {
            return Err(bad(format!(
                "_type is {:?}, expected {ROOT_TYPE:?}",
                self.kind
            )));
        }
        if self.version == 0 {
            return Err(bad("version must be at least 1".into()));
        }
        let mut seen = BTreeSet::new();
        for k in &self.keys {
            if k.kind != "ed25519" {
                return Err(bad(format!(
                    "key {} has type {:?}, expected \"ed25519\"",
                    k.keyid, k.kind
                )));
            }
            let pk =
                PublicKey::from_hex(&k.public).map_err(|e| bad(format!("key {}: {e}", k.keyid)))?;
            if pk.keyid != k.keyid {
                return Err(bad(format!(
                    "key id {} does not match its key (is {})",
                    k.keyid, pk.keyid
                )));
            }
            if !seen.insert(k.keyid.clone()) {
                return Err(bad(format!("key {} is listed twice", k.keyid)));
            }
        }
        for role in [Role::Root, Role::Bundle, Role::Override] {
            let Some(r) = self.role(role) else { continue };
            let mut ids = BTreeSet::new();
            for id in &r.keyids {
                if !seen.contains(id) {
                    return Err(bad(format!(
                        "role {role} names key {id}, which is not in keys"
                    )));
                }
                if !ids.insert(id) {
                    return Err(bad(format!("role {role} lists key {id} twice")));
                }
            }
            if r.threshold == 0 || r.threshold as usize > r.keyids.len() {
                return Err(bad(format!(
                    "role {role} threshold {} must be between 1 and its {} keys",
                    r.threshold,
                    r.keyids.len()
                )));
            }
        }
        Ok(())
    }

    fn public(&self, keyid: &KeyId) -> Option<PublicKey> {
        self.keys
            .iter()
            .find(|k| &k.keyid == keyid)
            .and_then(|k| PublicKey::from_hex(&k.public).ok())
    }

    /// Counts distinct valid signatures of `role` over `msg` and enforces the threshold.
    /// Signatures by keys outside the role are ignored for counting but name the
    /// refusal when the threshold is not met. A signature by an authorised key that does
    /// not verify, and a key id appearing twice, are refused outright.
    ///
    /// # Errors
    /// [`Error::BadSignature`], [`Error::DuplicateSignature`], [`Error::RevokedKey`],
    /// [`Error::KeyNotAuthorized`], [`Error::UnknownKey`], [`Error::BelowThreshold`].
    pub fn check_threshold(
        &self,
        what: &'static str,
        role: Role,
        msg: &[u8],
        sigs: &[Signature],
        revoked: &BTreeMap<KeyId, u64>,
    ) -> Result<Vec<KeyId>, Error> {
        let Some(rk) = self.role(role) else {
            return Err(Error::BelowThreshold {
                what,
                role,
                valid: 0,
                threshold: 1,
            });
        };
        let mut seen = BTreeSet::new();
        let mut valid = Vec::new();
        let mut revoked_signer = None;
        let mut unauthorized = None;
        let mut unknown = None;
        for s in sigs {
            if !seen.insert(&s.keyid) {
                return Err(Error::DuplicateSignature {
                    what,
                    keyid: s.keyid.clone(),
                });
            }
            if !rk.keyids.contains(&s.keyid) {
                if let Some(v) = revoked.get(&s.keyid) {
                    revoked_signer.get_or_insert((s.keyid.clone(), *v));
                } else if self.public(&s.keyid).is_some() {
                    unauthorized.get_or_insert(s.keyid.clone());
                } else {
                    unknown.get_or_insert(s.keyid.clone());
                }
                continue;
            }
            let Some(pk) = self.public(&s.keyid) else {
                unknown.get_or_insert(s.keyid.clone());
                continue;
            };
            if !pk.verify(msg, s) {
                return Err(Error::BadSignature {
                    what,
                    keyid: s.keyid.clone(),
                });
            }
            valid.push(s.keyid.clone());
        }
        let threshold = rk.threshold;
        let n = valid.len();
        if n >= threshold as usize {
            return Ok(valid);
        }
        Err(if let Some((keyid, revoked_in)) = revoked_signer {
            Error::RevokedKey {
                what,
                keyid,
                revoked_in,
                role,
                valid: n,
                threshold,
            }
        } else if let Some(keyid) = unauthorized {
            Error::KeyNotAuthorized {
                what,
                keyid,
                role,
                valid: n,
                threshold,
            }
        } else if let Some(keyid) = unknown {
            Error::UnknownKey {
                what,
                keyid,
                role,
                valid: n,
                threshold,
            }
        } else {
            Error::BelowThreshold {
                what,
                role,
                valid: n,
                threshold,
            }
        })
    }
}

/// A root the device trusts: the anchor plus every verified rotation.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    doc: RootDoc,
    /// Key id -> first root version without it.
    revoked: BTreeMap<KeyId, u64>,
}

impl TrustedRoot {
    /// Trusts an anchor root (from configuration or provisioning). It must carry a
    /// threshold of its own root keys' signatures. Expiry is checked at use, not here.
    ///
    /// # Errors
    /// Signature and document errors.
    pub fn anchor(file: &RootFile) -> Result<Self, Error> {
        let doc = file.doc()?;
        doc.check_threshold(
            WHAT_ROOT,
            Role::Root,
            file.signed.as_bytes(),
            &file.signatures,
            &BTreeMap::new(),
        )?;
        Ok(Self {
            doc,
            revoked: BTreeMap::new(),
        })
    }

    /// Reads and trusts an anchor root file.
    ///
    /// # Errors
    /// See [`TrustedRoot::anchor`].
    pub fn load_anchor(path: &Path) -> Result<Self, Error> {
        Self::anchor(&RootFile::load(path)?)
    }

    /// Accepts the next root: version must be current + 1, signed by a threshold of the
    /// current root keys and a threshold of its own root keys.
    ///
    /// # Errors
    /// [`Error::RootVersion`] and signature errors.
    pub fn rotate(&self, file: &RootFile) -> Result<Self, Error> {
        let new = file.doc()?;
        if new.version != self.doc.version + 1 {
            return Err(Error::RootVersion {
                current: self.doc.version,
                expected: self.doc.version + 1,
                found: new.version,
            });
        }
        let msg = file.signed.as_bytes();
        self.doc
            .check_threshold(WHAT_ROOT, Role::Root, msg, &file.signatures, &self.revoked)
            .map_err(|e| Error::RotationNotAuthorized {
                current: self.doc.version,
                found: new.version,
                reason: e.to_string(),
            })?;
        new.check_threshold(WHAT_ROOT, Role::Root, msg, &file.signatures, &self.revoked)?;
        let mut revoked = self.revoked.clone();
        for k in &self.doc.keys {
            if !new.keys.iter().any(|n| n.keyid == k.keyid) {
                revoked.entry(k.keyid.clone()).or_insert(new.version);
            }
        }
        // A key re-added by a later root is trusted again.
        for k in &new.keys {
            revoked.remove(&k.keyid);
        }
        Ok(Self { doc: new, revoked })
    }

    /// The current document.
    pub fn doc(&self) -> &RootDoc {
        &self.doc
    }

    /// Current version.
    pub fn version(&self) -> u64 {
        self.doc.version
    }

    /// Keys revoked by rotations (key id -> root version that removed it).
    pub fn revoked(&self) -> &BTreeMap<KeyId, u64> {
        &self.revoked
    }

    /// Refuses an expired root.
    ///
    /// # Errors
    /// [`Error::RootExpired`].
    pub fn check_fresh(&self, now: SystemTime) -> Result<(), Error> {
        if now >= self.doc.expires.0 {
            return Err(Error::RootExpired {
                version: self.doc.version,
                expires: self.doc.expires.rfc3339(),
            });
        }
        Ok(())
    }

    /// Threshold check of `role` over `msg` with this root's keys and revocations.
    ///
    /// # Errors
    /// See [`RootDoc::check_threshold`].
    pub fn check(
        &self,
        what: &'static str,
        role: Role,
        msg: &[u8],
        sigs: &[Signature],
    ) -> Result<Vec<KeyId>, Error> {
        self.doc
            .check_threshold(what, role, msg, sigs, &self.revoked)
    }

    /// Applies a chain of root files in order (anchor first).
    ///
    /// # Errors
    /// The first failing step's error.
    pub fn from_chain(files: &[RootFile]) -> Result<Self, Error> {
        let (first, rest) = files.split_first().ok_or_else(|| Error::InvalidRoot {
            reason: "no root given".into(),
        })?;
        let mut root = Self::anchor(first)?;
        for f in rest {
            root = root.rotate(f)?;
        }
        Ok(root)
    }
}

/// The device's stored root chain: `<dir>/root.<version>.json` for each accepted rotation.
/// The anchor comes from configuration; [`TrustStore::load`] re-verifies every stored
/// step from it, so a tampered file in the directory is refused, not trusted.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// A store in `dir` (usually `DataDir::trust()`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("root.{version}.json"))
    }

    /// Verifies the chain from `anchor` through `root.<v+1>.json`, … as long as files
    /// exist, and returns the newest root.
    ///
    /// # Errors
    /// Any step's verification error.
    pub fn load(&self, anchor: &RootFile) -> Result<TrustedRoot, Error> {
        let mut root = TrustedRoot::anchor(anchor)?;
        loop {
            let p = self.path(root.version() + 1);
            if !p.exists() {
                return Ok(root);
            }
            root = root.rotate(&RootFile::load(&p)?)?;
        }
    }

    /// Verifies `file` as the next root and stores it durably (write, fsync, rename).
    ///
    /// # Errors
    /// Verification errors, [`Error::Io`].
    pub fn rotate(&self, current: &TrustedRoot, file: &RootFile) -> Result<TrustedRoot, Error> {
        let next = current.rotate(file)?;
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
        let dest = self.path(next.version());
        let tmp = self.dir.join(format!(".root.{}.json.tmp", next.version()));
        let _ = fs::remove_file(&tmp);
        super::keys::write_new(&tmp, 0o644, &file.to_bytes())?;
        fs::rename(&tmp, &dest)
            .map_err(|e| Error::io(format!("cannot store {}", dest.display()), e))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(next)
    }
}
