//! Shared builders for the bundle tests: keys, roots, raw tar archives, bundles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleetlet::bundle::keys::{PublicKey, SecretKey};
use fleetlet::bundle::manifest::{PayloadInfo, Targets};
use fleetlet::bundle::pack::{assemble, PackOptions};
use fleetlet::bundle::root::{RoleKeys, Roles, RootDoc, RootFile, TrustedRoot};
use fleetlet::bundle::DeviceIdentity;
use sha2::{Digest, Sha256};

pub const DAY: Duration = Duration::from_secs(86_400);

/// Deterministic key number `n`.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// Fixed "now" for reproducible expiry checks.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A root document signed by `signers`.
#[allow(clippy::too_many_arguments)]
pub fn root_file(
    version: u64,
    root_keys: &[&SecretKey],
    root_t: u32,
    bundle_keys: &[&SecretKey],
    bundle_t: u32,
    override_keys: &[&SecretKey],
    expires: SystemTime,
    signers: &[&SecretKey],
) -> RootFile {
    let ids = |ks: &[&SecretKey]| ks.iter().map(|k| k.public().keyid).collect::<Vec<_>>();
    let all: Vec<PublicKey> = root_keys
        .iter()
        .chain(bundle_keys)
        .chain(override_keys)
        .map(|k| k.public())
        .collect();
    let roles = Roles {
        root: RoleKeys {
            keyids: ids(root_keys),
            threshold: root_t,
        },
        bundle: RoleKeys {
            keyids: ids(bundle_keys),
            threshold: bundle_t,
        },
        r#override: (!override_keys.is_empty()).then(|| RoleKeys {
            keyids: ids(override_keys),
            threshold: 1,
        }),
    };
    let mut doc = RootDoc::new(expires, &all, roles);
    doc.version = version;
    let mut f = RootFile::new(&doc).unwrap();
    for s in signers {
        f.sign(s).unwrap();
    }
    f
}

/// The standard fixture: root key 1 (threshold 1), bundle keys 11, 12, 13 (threshold 2),
/// override key 21, valid for a year from [`now`].
pub fn standard_root_file() -> RootFile {
    let (r, b1, b2, b3, o) = (key(1), key(11), key(12), key(13), key(21));
    root_file(
        1,
        &[&r],
        1,
        &[&b1, &b2, &b3],
        2,
        &[&o],
        now() + 365 * DAY,
        &[&r],
    )
}

pub fn standard_root() -> TrustedRoot {
    TrustedRoot::anchor(&standard_root_file()).unwrap()
}

pub fn device() -> DeviceIdentity {
    DeviceIdentity {
        model: "rpi5".into(),
        arch: "aarch64".into(),
        groups: vec!["warehouse-a".into()],
    }
}

pub fn opts() -> PackOptions {
    PackOptions {
        name: "nav".into(),
        version: semver::Version::new(1, 2, 0),
        security_version: 5,
        created: now() - DAY,
        expires: now() + 30 * DAY,
        targets: Targets {
            models: vec!["rpi5".into(), "jetson-orin".into()],
            arches: vec!["aarch64".into()],
            groups: vec!["warehouse-a".into()],
        },
        workload: "[process.nav]\ncommand = \"bin/nav\"\n".into(),
        allow_downgrade: false,
    }
}

/// A raw tar archive writer: headers are written by hand so tests can produce entries
/// that `tar::Builder` refuses (absolute paths, `..`, devices, setuid).
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
    pub entries: u64,
    pub file_bytes: u64,
}

impl RawTar {
    fn header(&mut self, path: &str, typeflag: u8, mode: u32, size: u64, link: &str) {
        let mut h = [0u8; 512];
        assert!(path.len() <= 100 && link.len() <= 100);
        h[..path.len()].copy_from_slice(path.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{:0w$o}\0", v, w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.bytes.extend_from_slice(&h);
        self.entries += 1;
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.header(path, b'0', mode, data.len() as u64, "");
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.resize(self.bytes.len() + pad, 0);
        self.file_bytes += data.len() as u64;
        self
    }

    /// A regular file of `size` zero bytes, written without holding it in memory twice.
    pub fn zeros(&mut self, path: &str, size: u64) -> &mut Self {
        self.header(path, b'0', 0o644, size, "");
        let padded = size.div_ceil(512) * 512;
        self.bytes.resize(self.bytes.len() + padded as usize, 0);
        self.file_bytes += size;
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.header(path, b'5', 0o755, 0, "");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.header(path, b'2', 0o777, 0, target);
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.header(path, b'1', 0o644, 0, target);
        self
    }

    pub fn special(&mut self, path: &str, typeflag: u8) -> &mut Self {
        self.header(path, typeflag, 0o644, 0, "");
        self
    }

    /// zstd-compressed archive with the end-of-archive marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut raw = self.bytes.clone();
        raw.extend_from_slice(&[0u8; 1024]);
        zstd::encode_all(&raw[..], 3).unwrap()
    }
}

pub fn payload_info(payload: &[u8], unpacked: u64, entries: u64) -> PayloadInfo {
    PayloadInfo {
        sha256: hex::encode(Sha256::digest(payload)),
        size: payload.len() as u64,
        unpacked_size: unpacked,
        entries,
        compression: "zstd".into(),
        archive: "tar".into(),
    }
}

/// A bundle with the given options, payload and declared sizes, signed by `signers`.
pub fn bundle_with(
    o: &PackOptions,
    payload: &[u8],
    unpacked: u64,
    entries: u64,
    signers: &[&SecretKey],
) -> Vec<u8> {
    let m = o.manifest(payload_info(payload, unpacked, entries));
    let bytes = m.to_bytes().unwrap();
    let sigs: Vec<_> = signers.iter().map(|k| k.sign(&bytes)).collect();
    assemble(&bytes, &sigs, payload).unwrap()
}

/// A bundle from a raw tar, declaring its true sizes, signed by bundle keys 11 and 12.
pub fn tar_bundle(t: &RawTar) -> Vec<u8> {
    bundle_with(
        &opts(),
        &t.finish(),
        t.file_bytes,
        t.entries,
        &[&key(11), &key(12)],
    )
}

/// A small valid bundle: two files, a directory and an internal symlink.
pub fn good_tar() -> RawTar {
    let mut t = RawTar::default();
    t.dir("bin/")
        .file("bin/nav", 0o755, b"#!/bin/sh\necho nav\n")
        .file("params.yaml", 0o644, b"speed: 1.0\n")
        .symlink("start", "bin/nav");
    t
}

pub fn good_bundle() -> Vec<u8> {
    tar_bundle(&good_tar())
}

/// A scratch area: `parent/` receives the extraction target `parent/app`; `outside/` is
/// where escapes would land.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("parent")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        Self { dir }
    }
    pub fn parent(&self) -> PathBuf {
        self.dir.path().join("parent")
    }
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    pub fn target(&self) -> PathBuf {
        self.parent().join("app")
    }
    /// Everything under `p`, recursively (relative paths).
    pub fn listing(p: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                out.push(e.path().strip_prefix(p).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
    /// Asserts nothing was left in `parent/` or written to `outside/`.
    pub fn assert_clean(&self) {
        assert_eq!(
            Self::listing(&self.parent()),
            Vec::<String>::new(),
            "files left behind"
        );
        assert_eq!(
            Self::listing(&self.outside()),
            Vec::<String>::new(),
            "escape wrote outside"
        );
    }
}
