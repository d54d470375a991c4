//! ed25519 keys, key ids, key files and signatures.
//!
//! A key id is the lowercase hex of the first 16 bytes of SHA-256 over the raw 32-byte
//! public key. Key files are small JSON documents; the private one is created with mode
//! 0600 and refused when group or others can read it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;

/// `type` of a private key file.
pub const SECRET_KEY_TYPE: &str = "fleetlet-ed25519-private-key";
/// `type` of a public key file.
pub const PUBLIC_KEY_TYPE: &str = "fleetlet-ed25519-public-key";
/// Bytes of SHA-256 kept in a key id.
const KEYID_BYTES: usize = 16;

/// A key id: 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// The key id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let d = Sha256::digest(key.as_bytes());
        Self(hex::encode(&d[..KEYID_BYTES]))
    }
    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == KEYID_BYTES * 2
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s))
        } else {
            Err(format!(
                "key id must be {} lowercase hex characters, got {s:?}",
                KEYID_BYTES * 2
            ))
        }
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One signature: key id + 64-byte ed25519 signature in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Signing key.
    pub keyid: KeyId,
    /// Signature bytes, lowercase hex (128 characters).
    pub sig: String,
}

impl Signature {
    /// Decodes the signature bytes.
    pub fn bytes(&self) -> Option<ed25519_dalek::Signature> {
        let raw = hex::decode(&self.sig).ok()?;
        let arr: [u8; 64] = raw.try_into().ok()?;
        Some(ed25519_dalek::Signature::from_bytes(&arr))
    }
}

/// A public key with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id.
    pub keyid: KeyId,
    /// The key.
    pub key: VerifyingKey,
}

impl PublicKey {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        Self {
            keyid: KeyId::of(&key),
            key,
        }
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// A message when the hex or the curve point is invalid.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let raw = hex::decode(s).map_err(|e| format!("public key is not hex: {e}"))?;
        let arr: [u8; 32] = raw
            .try_into()
            .map_err(|_| "public key must be 32 bytes".to_owned())?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|e| format!("public key is not a valid ed25519 point: {e}"))?;
        if key.is_weak() {
            return Err("public key is a weak (small-order) point".into());
        }
        Ok(Self::new(key))
    }

    /// Hex of the raw key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Verifies `sig` over `msg` (strict: rejects malleable signatures).
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        match sig.bytes() {
            Some(s) => self.key.verify_strict(msg, &s).is_ok(),
            None => false,
        }
    }

    /// Reads a public key file (a private key file is accepted too; its public half is used).
    ///
    /// # Errors
    /// [`Error::KeyFile`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_small(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| key_err(path, format!("not JSON: {e}")))?;
        if v.get("type").and_then(|t| t.as_str()) == Some(SECRET_KEY_TYPE) {
            return Ok(SecretKey::load(path)?.public());
        }
        let f: PublicFile = serde_json::from_value(v).map_err(|e| key_err(path, e.to_string()))?;
        if f.kind != PUBLIC_KEY_TYPE {
            return Err(key_err(
                path,
                format!("type is {:?}, expected {PUBLIC_KEY_TYPE:?}", f.kind),
            ));
        }
        let k = Self::from_hex(&f.public).map_err(|e| key_err(path, e))?;
        if k.keyid != f.keyid {
            return Err(key_err(
                path,
                format!("keyid {} does not match the key (is {})", f.keyid, k.keyid),
            ));
        }
        Ok(k)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    #[serde(rename = "type")]
    kind: String,
    keyid: KeyId,
    public: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    #[serde(rename = "type")]
    kind: String,
    keyid: KeyId,
    secret: String,
}

/// A private signing key.
pub struct SecretKey {
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().keyid)
    }
}

impl SecretKey {
    /// A fresh random key (OS RNG).
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// From 32 seed bytes (deterministic; for tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.key.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            keyid: self.public().keyid,
            sig: hex::encode(self.key.sign(msg).to_bytes()),
        }
    }

    /// Signs `msg` but labels the signature with another key id (tests of wrong keys).
    pub fn sign_as(&self, msg: &[u8], keyid: KeyId) -> Signature {
        Signature {
            keyid,
            sig: hex::encode(self.key.sign(msg).to_bytes()),
        }
    }

    /// Writes `<out>.key` (mode 0600) and `<out>.pub`; refuses to overwrite either.
    /// Returns both paths.
    ///
    /// # Errors
    /// [`Error::KeyFile`] if a file exists, [`Error::Io`] otherwise.
    pub fn write_pair(&self, out: &Path) -> Result<(PathBuf, PathBuf), Error> {
        let secret_path = with_ext(out, "key");
        let public_path = with_ext(out, "pub");
        for p in [&secret_path, &public_path] {
            if p.symlink_metadata().is_ok() {
                return Err(key_err(p, "already exists; refusing to overwrite a key"));
            }
        }
        let pk = self.public();
        let secret = SecretFile {
            kind: SECRET_KEY_TYPE.into(),
            keyid: pk.keyid.clone(),
            secret: hex::encode(self.key.to_bytes()),
        };
        let public = PublicFile {
            kind: PUBLIC_KEY_TYPE.into(),
            keyid: pk.keyid.clone(),
            public: pk.to_hex(),
        };
        write_new(&secret_path, 0o600, &to_json(&secret))?;
        write_new(&public_path, 0o644, &to_json(&public))?;
        Ok((secret_path, public_path))
    }

    /// Reads a private key file; refuses it when group or others may read it.
    ///
    /// # Errors
    /// [`Error::KeyFile`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let meta = fs::metadata(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_err(
                path,
                format!("permissions {mode:04o} are too open for a private key; run chmod 600"),
            ));
        }
        let text = read_small(path)?;
        let f: SecretFile =
            serde_json::from_str(&text).map_err(|e| key_err(path, e.to_string()))?;
        if f.kind != SECRET_KEY_TYPE {
            return Err(key_err(
                path,
                format!("type is {:?}, expected {SECRET_KEY_TYPE:?}", f.kind),
            ));
        }
        let raw = hex::decode(&f.secret).map_err(|e| key_err(path, format!("secret: {e}")))?;
        let seed: [u8; 32] = raw
            .try_into()
            .map_err(|_| key_err(path, "secret must be 32 bytes"))?;
        let k = Self::from_seed(seed);
        if k.public().keyid != f.keyid {
            return Err(key_err(path, "keyid does not match the secret"));
        }
        Ok(k)
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

fn with_ext(out: &Path, ext: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn key_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::KeyFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_small(path: &Path) -> Result<String, Error> {
    let meta = fs::metadata(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    if meta.len() > 64 * 1024 {
        return Err(key_err(path, "larger than 64 KiB; not a key file"));
    }
    fs::read_to_string(path).map_err(|e| key_err(path, format!("cannot read: {e}")))
}

/// Creates `path` exclusively with `mode` and writes `data`, fsynced.
pub(crate) fn write_new(path: &Path, mode: u32, data: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}
