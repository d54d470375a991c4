//! `fleetlet keys …` and `fleetlet bundle …`: keys, trust roots, packing, signing,
//! verifying and inspecting bundles. See `docs/bundles.md` for the workflow.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use super::format::read_header;
use super::keys::{PublicKey, SecretKey};
use super::manifest::{validate_name, Manifest, Targets};
use super::pack::{add_signatures, pack, PackOptions};
use super::root::{RoleKeys, Roles, RootDoc, RootFile, TrustedRoot};
use super::verify::{authorize, DeviceIdentity};
use super::Config;

/// The signing workflow, shown by `fleetlet keys --help` and `fleetlet bundle --help`.
pub const WORKFLOW: &str = "\
Signing workflow (root key + 3 release keys, 2 of 3 must sign a bundle):
  fleetlet keys gen --out keys/root-1
  fleetlet keys gen --out keys/release-1     # likewise release-2, release-3
  fleetlet keys root init --root-key keys/root-1.pub \\
      --bundle-key keys/release-1.pub --bundle-key keys/release-2.pub \\
      --bundle-key keys/release-3.pub --bundle-threshold 2 --out root.json
  fleetlet keys root sign root.json --key keys/root-1.key
  fleetlet bundle pack nav --manifest workload.toml --name nav --version 1.4.0 \\
      --security-version 7 --arch aarch64 --key keys/release-1.key --out nav.bundle
  fleetlet bundle sign nav.bundle --key keys/release-3.key
  fleetlet bundle verify nav.bundle --root root.json --arch aarch64
Rotation: `keys root rotate --from root.json … --out root-2.json`, signed by the old AND
the new root keys; verify with `--root root.json --root root-2.json`.
Full guide: docs/bundles.md; byte format: docs/bundle-format.md.";

/// `fleetlet keys …`
#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Generate an ed25519 key pair: `<PREFIX>.key` (private, mode 0600) and
    /// `<PREFIX>.pub`. Refuses to overwrite existing files.
    Gen {
        /// Path prefix of the two files, e.g. `keys/release-1`.
        #[arg(long, short, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Print the key id of a public or private key file.
    Id {
        /// Key file.
        file: PathBuf,
    },
    /// Trust root documents: create, sign, rotate, verify.
    #[command(subcommand)]
    Root(RootCmd),
}

/// Key assignments of a root document.
#[derive(Debug, Clone, clap::Args)]
pub struct RootKeysArgs {
    /// Public key file allowed to sign root documents (repeat).
    #[arg(long = "root-key", value_name = "PUB", required = true)]
    pub root_keys: Vec<PathBuf>,
    /// Distinct root-key signatures a root (rotation) needs.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u32,
    /// Public key file allowed to sign bundles (repeat).
    #[arg(long = "bundle-key", value_name = "PUB", required = true)]
    pub bundle_keys: Vec<PathBuf>,
    /// Distinct bundle-key signatures a bundle needs.
    #[arg(long, default_value_t = 1)]
    pub bundle_threshold: u32,
    /// Public key file allowed to co-sign security downgrades (repeat; optional role).
    #[arg(long = "override-key", value_name = "PUB")]
    pub override_keys: Vec<PathBuf>,
    /// Distinct override signatures a downgrade needs.
    #[arg(long, default_value_t = 1)]
    pub override_threshold: u32,
    /// Validity of the root from now, e.g. `365d`.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
}

/// `fleetlet keys root …`
#[derive(Debug, clap::Subcommand)]
pub enum RootCmd {
    /// Create an unsigned version-1 root; then sign it with `keys root sign`.
    Init {
        #[command(flatten)]
        keys: RootKeysArgs,
        /// Output file (must not exist).
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add signatures to a root file (rewritten in place).
    Sign {
        /// Root file.
        root: PathBuf,
        /// Private key file (repeat).
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Create the next root version from the current one (unsigned). It must then be
    /// signed by a threshold of the current root keys AND of its own root keys. Keys
    /// left out are revoked once devices accept it.
    Rotate {
        /// The current root file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        #[command(flatten)]
        keys: RootKeysArgs,
        /// Output file (must not exist).
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a root chain: the trusted anchor first, then each rotation in order.
    Verify {
        /// Root files, anchor first.
        #[arg(required = true, value_name = "ROOT")]
        roots: Vec<PathBuf>,
    },
}

/// `fleetlet bundle …`
#[derive(Debug, clap::Subcommand)]
pub enum BundleCmd {
    /// Pack a directory into a signed bundle.
    #[command(disable_version_flag = true)]
    Pack {
        /// Directory whose contents become the payload.
        dir: PathBuf,
        /// The workload manifest (`workload.toml`) to embed verbatim.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Bundle name ([a-z0-9][a-z0-9._-]*).
        #[arg(long)]
        name: String,
        /// Semantic version, e.g. 1.4.0.
        #[arg(long)]
        version: semver::Version,
        /// Anti-rollback counter; devices refuse bundles below their committed value.
        #[arg(long, default_value_t = 0)]
        security_version: u64,
        /// Manifest validity from now, e.g. `90d`.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        expires_in: Duration,
        /// Target hardware model (repeat; none = any).
        #[arg(long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// Target CPU architecture, e.g. aarch64 (repeat; none = any).
        #[arg(long = "arch", value_name = "ARCH")]
        arches: Vec<String>,
        /// Target device group (repeat; none = any).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Private key to sign with (repeat; more can be added with `bundle sign`).
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<PathBuf>,
        /// Request a security downgrade override (needs override-role signatures).
        #[arg(long)]
        allow_downgrade: bool,
        /// Output file; default `<name>-<version>.bundle`.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Add signatures to a bundle (for k-of-n thresholds). The file is rewritten; the
    /// signed manifest bytes do not change.
    Sign {
        /// Bundle file.
        bundle: PathBuf,
        /// Private key file (repeat).
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Verify a bundle against a trust root and a device identity; optionally extract it.
    /// Exits 0 when accepted, 1 naming the reason when refused.
    Verify {
        /// Bundle file.
        bundle: PathBuf,
        /// Trusted root file; repeat to apply rotations (anchor first).
        #[arg(long = "root", value_name = "ROOT", required = true)]
        roots: Vec<PathBuf>,
        /// Device hardware model; default: /proc/device-tree/model, else `generic`.
        #[arg(long)]
        device_model: Option<String>,
        /// Device CPU architecture; default: this build's.
        #[arg(long)]
        arch: Option<String>,
        /// Device group (repeat).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Highest security_version the device has committed.
        #[arg(long, default_value_t = 0)]
        committed_security_version: u64,
        /// Also extract the payload safely into this directory (must not exist).
        #[arg(long, value_name = "DIR")]
        extract_to: Option<PathBuf>,
        /// Hard cap on unpacked bytes when extracting.
        #[arg(long, default_value_t = super::DEFAULT_MAX_UNPACKED_BYTES)]
        max_unpacked_bytes: u64,
        /// Hard cap on archive entries when extracting.
        #[arg(long, default_value_t = super::DEFAULT_MAX_ENTRIES)]
        max_entries: u64,
        /// Print elapsed time and peak RSS (VmHWM) to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Show a bundle's manifest and signatures WITHOUT verifying them.
    Inspect {
        /// Bundle file.
        bundle: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `fleetlet keys …`.
///
/// # Errors
/// Any failure, with context.
pub fn run_keys(cmd: KeysCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Gen { out } => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let key = SecretKey::generate();
            let (s, p) = key.write_pair(&out)?;
            println!(
                "key id {}\nprivate {} (mode 0600)\npublic  {}",
                key.public().keyid,
                s.display(),
                p.display()
            );
        }
        KeysCmd::Id { file } => println!("{}", PublicKey::load(&file)?.keyid),
        KeysCmd::Root(RootCmd::Init { keys, out }) => {
            let doc = root_doc(&keys, 1)?;
            write_root_new(&out, &RootFile::new(&doc)?)?;
            println!(
                "wrote unsigned root version 1 to {}; sign it with `fleetlet keys root sign {} --key <root key>` ({} needed)",
                out.display(),
                out.display(),
                doc.roles.root.threshold
            );
        }
        KeysCmd::Root(RootCmd::Sign { root, keys }) => {
            let mut file = RootFile::load(&root)?;
            let doc = file.doc()?;
            for k in &keys {
                let key = SecretKey::load(k)?;
                let id = key.public().keyid;
                file.sign(&key)?;
                let role = if doc.roles.root.keyids.contains(&id) {
                    "a root key of this document"
                } else {
                    "NOT a root key of this document (counts only toward the previous root in a rotation)"
                };
                println!("signed with {id}: {role}");
            }
            let tmp = with_suffix(&root, ".tmp");
            let _ = fs::remove_file(&tmp);
            super::keys::write_new(&tmp, 0o644, &file.to_bytes())?;
            fs::rename(&tmp, &root).with_context(|| format!("replacing {}", root.display()))?;
        }
        KeysCmd::Root(RootCmd::Rotate { from, keys, out }) => {
            let current = RootFile::load(&from)?.doc()?;
            let doc = root_doc(&keys, current.version + 1)?;
            write_root_new(&out, &RootFile::new(&doc)?)?;
            println!(
                "wrote unsigned root version {} to {}; it needs {} signature(s) from the root keys of version {} and {} from its own root keys",
                doc.version,
                out.display(),
                current.roles.root.threshold,
                current.version,
                doc.roles.root.threshold
            );
        }
        KeysCmd::Root(RootCmd::Verify { roots }) => {
            let root = load_chain(&roots)?;
            root.check_fresh(SystemTime::now())?;
            let d = root.doc();
            println!(
                "root version {} valid until {}: root {}-of-{}, bundle {}-of-{}{}",
                d.version,
                d.expires,
                d.roles.root.threshold,
                d.roles.root.keyids.len(),
                d.roles.bundle.threshold,
                d.roles.bundle.keyids.len(),
                d.roles
                    .r#override
                    .as_ref()
                    .map(|o| format!(", override {}-of-{}", o.threshold, o.keyids.len()))
                    .unwrap_or_default()
            );
            for (k, v) in root.revoked() {
                println!("revoked {k} (since root version {v})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `fleetlet bundle …`.
///
/// # Errors
/// Any failure or refusal, with the reason.
pub fn run_bundle(cmd: BundleCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCmd::Pack {
            dir,
            manifest,
            name,
            version,
            security_version,
            expires_in,
            models,
            arches,
            groups,
            keys,
            allow_downgrade,
            out,
        } => {
            validate_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            if !dir.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            let workload = fs::read_to_string(&manifest)
                .with_context(|| format!("reading workload manifest {}", manifest.display()))?;
            let keys = keys
                .iter()
                .map(|k| SecretKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let now = SystemTime::now();
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}-{version}.bundle")));
            let opts = PackOptions {
                name,
                version,
                security_version,
                created: now,
                expires: now + expires_in,
                targets: Targets {
                    models,
                    arches,
                    groups,
                },
                workload,
                allow_downgrade,
            };
            let m = pack(&dir, &opts, &keys, &out)?;
            println!(
                "packed {} into {}: {} entries, {} bytes unpacked, payload {} bytes sha256 {}; {} signature(s)",
                m.id(),
                out.display(),
                m.payload.entries,
                m.payload.unpacked_size,
                m.payload.size,
                m.payload.sha256,
                keys.len()
            );
        }
        BundleCmd::Sign { bundle, keys } => {
            let keys = keys
                .iter()
                .map(|k| SecretKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let sigs = add_signatures(&bundle, &keys)?;
            println!(
                "{} now carries {} signature(s): {}",
                bundle.display(),
                sigs.len(),
                sigs.iter()
                    .map(|s| s.keyid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        BundleCmd::Verify {
            bundle,
            roots,
            device_model,
            arch,
            groups,
            committed_security_version,
            extract_to,
            max_unpacked_bytes,
            max_entries,
            stats,
        } => {
            let start = Instant::now();
            let root = load_chain(&roots)?;
            let defaults = crate::config::DeviceConfig::default();
            let device = DeviceIdentity {
                model: device_model.unwrap_or(defaults.model),
                arch: arch.unwrap_or(defaults.arch),
                groups,
            };
            let f =
                fs::File::open(&bundle).with_context(|| format!("opening {}", bundle.display()))?;
            let mut r = BufReader::with_capacity(super::verify::CHUNK, f);
            let now = SystemTime::now();
            let a = authorize(&mut r, &root, &device, committed_security_version, now)
                .with_context(|| format!("{} refused", bundle.display()))?;
            let threshold = root.doc().roles.bundle.threshold;
            let v = match &extract_to {
                Some(target) => {
                    let cfg = Config {
                        max_unpacked_bytes,
                        max_entries,
                    };
                    a.extract(r, target, &cfg)
                }
                None => a.verify_payload(r),
            }
            .with_context(|| format!("{} refused", bundle.display()))?;
            let elapsed = start.elapsed();
            println!(
                "OK {} (security_version {}) signed by {} bundle key(s), threshold {}: {}",
                v.id,
                v.manifest.security_version,
                v.signers.len(),
                threshold,
                v.signers
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(t) = &v.extracted_to {
                println!("extracted to {}", t.display());
            }
            if stats {
                eprintln!(
                    "stats: elapsed_ms={:.1} peak_rss_kib={}",
                    elapsed.as_secs_f64() * 1000.0,
                    peak_rss_kib()
                        .map(|k| k.to_string())
                        .unwrap_or_else(|| "?".into())
                );
            }
        }
        BundleCmd::Inspect { bundle, json } => inspect(&bundle, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(bundle: &Path, json: bool) -> anyhow::Result<()> {
    let f = fs::File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = BufReader::new(f);
    let h = read_header(&mut r)?;
    let m = Manifest::parse(&h.manifest_bytes)?;
    let stored = file_len.saturating_sub(h.len);
    if json {
        let v = serde_json::json!({
            "verified": false,
            "manifest": m,
            "signatures": h.signatures,
            "payload_offset": h.len,
            "payload_bytes_in_file": stored,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = |l: &[String]| {
        if l.is_empty() {
            "any".to_owned()
        } else {
            l.join(", ")
        }
    };
    println!(
        "bundle           {} (NOT verified; use `fleetlet bundle verify`)",
        m.id()
    );
    println!("security_version {}", m.security_version);
    println!("created          {}", m.created);
    println!("expires          {}", m.expires);
    println!(
        "targets          models: {}; arches: {}; groups: {}",
        list(&m.targets.models),
        list(&m.targets.arches),
        list(&m.targets.groups)
    );
    println!(
        "payload          {} bytes ({} in file), sha256 {}, {} entries, {} bytes unpacked",
        m.payload.size, stored, m.payload.sha256, m.payload.entries, m.payload.unpacked_size
    );
    if m.allow_downgrade {
        println!("allow_downgrade  true (needs override-role signatures)");
    }
    println!("signatures       {}", h.signatures.len());
    for s in &h.signatures {
        println!("  {}", s.keyid);
    }
    println!("workload.toml    {} lines", m.workload.lines().count());
    Ok(())
}

fn load_chain(paths: &[PathBuf]) -> anyhow::Result<TrustedRoot> {
    let files = paths
        .iter()
        .map(|p| RootFile::load(p).with_context(|| format!("root {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(TrustedRoot::from_chain(&files)?)
}

fn root_doc(a: &RootKeysArgs, version: u64) -> anyhow::Result<RootDoc> {
    let load = |ps: &[PathBuf]| -> anyhow::Result<Vec<PublicKey>> {
        ps.iter().map(|p| Ok(PublicKey::load(p)?)).collect()
    };
    let root = load(&a.root_keys)?;
    let bundle = load(&a.bundle_keys)?;
    let over = load(&a.override_keys)?;
    let ids = |ks: &[PublicKey]| ks.iter().map(|k| k.keyid.clone()).collect::<Vec<_>>();
    let roles = Roles {
        root: RoleKeys {
            keyids: ids(&root),
            threshold: a.root_threshold,
        },
        bundle: RoleKeys {
            keyids: ids(&bundle),
            threshold: a.bundle_threshold,
        },
        r#override: (!over.is_empty()).then(|| RoleKeys {
            keyids: ids(&over),
            threshold: a.override_threshold,
        }),
    };
    let all: Vec<PublicKey> = root.iter().chain(&bundle).chain(&over).cloned().collect();
    let mut doc = RootDoc::new(SystemTime::now() + a.expires_in, &all, roles);
    doc.version = version;
    doc.check()?;
    Ok(doc)
}

fn write_root_new(out: &Path, file: &RootFile) -> anyhow::Result<()> {
    super::keys::write_new(out, 0o644, &file.to_bytes())?;
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Peak resident set size of this process (VmHWM), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let mut s = String::new();
    fs::File::open("/proc/self/status")
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
