//! Configuration: a TOML file, an optional environment overlay beside it
//! (`--env prod` layers `<stem>.prod.toml`), then `FLEETLET_<SECTION>__<KEY>` variables.
//!
//! Invariants:
//! - Every key has a default (a named constant with its reason, in the section's module).
//! - Unknown keys, wrong types and out-of-range values are errors; each names the key, the
//!   offending value where there is one, and the source that set it (file or variable).
//! - All problems are reported at once: sections are decoded independently and then
//!   `validate()` collects semantic problems instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "FLEETLET_";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A TOML file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Env(v) => write!(f, "environment variable {v}"),
            Self::Default => write!(f, "built-in default"),
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `api.listen`.
    pub key: String,
    /// What set the key.
    pub source: Source,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl Problem {
    /// A problem for `key`; the source is filled in by the loader.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            source: Source::Default,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.source, self.key, self.message)
    }
}

/// Loading failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{path}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// One or more keys are wrong.
    #[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for journald/Loki.
    Json,
}

/// Identity of the device, used for MQTT topics and bundle target selectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Unique device id (MQTT client id and topic segment). Default: the hostname.
    pub id: String,
    /// Hardware model for bundle selectors. Default: `/proc/device-tree/model`, else `generic`.
    pub model: String,
    /// CPU architecture for bundle selectors. Default: the architecture fleetlet was built for.
    pub arch: String,
    /// Device groups (rollouts, group deployment topics).
    pub groups: Vec<String>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            id: default_device_id(),
            model: default_model(),
            arch: std::env::consts::ARCH.to_owned(),
            groups: Vec::new(),
        }
    }
}

fn default_device_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "fleetlet".to_owned())
}

fn default_model() -> String {
    std::fs::read("/proc/device-tree/model")
        .ok()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "generic".to_owned())
}

/// Default data root: the FHS place for a daemon's state.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/fleetlet";
/// Default shutdown deadline: longer than the default process stop ladder
/// (SIGINT, 5 s, SIGTERM, 5 s, SIGKILL) plus a telemetry flush, shorter than the systemd
/// unit's `TimeoutStopSec=45`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default sled page cache: 4 MiB. sled's own default is 1 GiB, unacceptable on a Pi.
pub const DEFAULT_DB_CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// Default background flush interval of sled: 500 ms bounds data loss for writers that do
/// not flush explicitly (the telemetry queue flushes per batch on its own).
pub const DEFAULT_DB_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The agent process itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Root of everything fleetlet persists.
    pub data_dir: PathBuf,
    /// How long a graceful shutdown may take before the agent gives up and exits non-zero.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Log level filter (`RUST_LOG` syntax); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// sled page cache size in bytes.
    pub db_cache_bytes: NonZeroU64,
    /// sled background flush interval.
    #[serde(with = "humantime_serde")]
    pub db_flush_every: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log_level: "info".into(),
            log_format: LogFormat::Pretty,
            db_cache_bytes: NonZeroU64::new(DEFAULT_DB_CACHE_BYTES).unwrap_or(NonZeroU64::MIN),
            db_flush_every: DEFAULT_DB_FLUSH_EVERY,
        }
    }
}

/// Default local API address: loopback only; 7878 is unassigned by IANA.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7878";

/// The read-only local HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API at all.
    pub enabled: bool,
    /// Loopback address and port.
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Config {
    /// `[device]`
    pub device: DeviceConfig,
    /// `[agent]`
    pub agent: AgentConfig,
    /// `[api]`
    pub api: ApiConfig,
    /// `[supervisor]`
    pub supervisor: crate::supervisor::Config,
    // ---- bundle ----
    /// `[bundle]`
    pub bundle: crate::bundle::Config,
    // ---- end bundle ----
    // ---- telemetry ----
    /// `[telemetry]` (durable queue and uploader)
    pub telemetry: crate::telemetry::Config,
    /// `[mqtt]` (link to the fleet broker)
    pub mqtt: crate::mqtt::Config,
    // ---- end telemetry ----
    /// `[serial]` (link to the safety MCU)
    pub serial: crate::serial::Config,
    /// `[hal]` (board GPIO)
    pub hal: crate::hal::Config,
    // ---- ros2 ----
    /// `[ros2]` (only with the `ros2` feature)
    #[cfg(feature = "ros2")]
    pub ros2: crate::ros2::Config,
    // ---- end ros2 ----
}

/// Names of the sections `[..]` the loader knows, in display order.
#[cfg(not(feature = "ros2"))]
const SECTIONS: &[&str] = &[
    "device",
    "agent",
    "api",
    "supervisor",
    "telemetry",
    "mqtt",
    "bundle",
    "serial",
    "hal",
];
// ---- ros2 ----
#[cfg(feature = "ros2")]
const SECTIONS: &[&str] = &[
    "device",
    "agent",
    "api",
    "supervisor",
    "telemetry",
    "mqtt",
    "bundle",
    "serial",
    "hal",
    "ros2",
];
// ---- end ros2 ----

impl Config {
    /// Loads `path`, the overlay for `env` beside it, and `FLEETLET_…` variables from the
    /// process environment.
    ///
    /// # Errors
    /// See [`Config::load_from`].
    pub fn load(path: &Path, env: Option<&str>) -> Result<Self, Error> {
        Self::load_from(path, env, std::env::vars())
    }

    /// Path of the overlay file for `env`: `<dir>/<stem>.<env>.toml`.
    pub fn overlay_path(path: &Path, env: &str) -> PathBuf {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!("{stem}.{env}.toml"))
    }

    /// Like [`Config::load`] with an explicit set of environment variables (for tests).
    ///
    /// # Errors
    /// [`Error::Read`] for a missing file (the overlay too, when `env` is given),
    /// [`Error::Syntax`] for bad TOML, [`Error::Invalid`] listing every bad key.
    pub fn load_from(
        path: &Path,
        env: Option<&str>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut layered = Layered::default();
        layered.merge_file(path)?;
        if let Some(env) = env {
            layered.merge_file(&Self::overlay_path(path, env))?;
        }
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (var, value) in vars {
            layered.merge_env(&var, &value);
        }
        layered.decode()
    }

    /// Semantic checks across keys. Pushes every problem found.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        self.supervisor.validate(problems);
        // ---- bundle ----
        self.bundle.validate(problems);
        self.serial.validate(problems);
        self.hal.validate(problems);
        // The e-stop policy also serves the board's e-stop input without an MCU.
        if !self.serial.enabled && self.hal.estop_input.is_some() {
            self.serial.estop.validate(problems);
        }
        // ---- end bundle ----
        // ---- ros2 ----
        #[cfg(feature = "ros2")]
        self.ros2.validate(problems);
        // ---- end ros2 ----
        if self.device.id.is_empty()
            || !self
                .device
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push(Problem::new("device.id", format!("{:?} must be non-empty and use only A-Z a-z 0-9 - _ . (it becomes an MQTT topic segment)", self.device.id)));
        }
        for g in &self.device.groups {
            if g.is_empty()
                || !g
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                problems.push(Problem::new(
                    "device.groups",
                    format!("group {g:?} must be non-empty and use only A-Z a-z 0-9 - _ ."),
                ));
            }
        }
        if self.agent.shutdown_timeout < Duration::from_secs(1)
            || self.agent.shutdown_timeout > Duration::from_secs(600)
        {
            problems.push(Problem::new(
                "agent.shutdown_timeout",
                format!(
                    "{} is out of range (1s..=10m)",
                    humantime::format_duration(self.agent.shutdown_timeout)
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.agent.log_level) {
            problems.push(Problem::new(
                "agent.log_level",
                format!("{:?} is not a valid filter: {e}", self.agent.log_level),
            ));
        }
        if self.agent.db_cache_bytes.get() < 256 * 1024 || self.agent.db_cache_bytes.get() > 1 << 30
        {
            problems.push(Problem::new(
                "agent.db_cache_bytes",
                format!(
                    "{} is out of range (262144..=1073741824)",
                    self.agent.db_cache_bytes
                ),
            ));
        }
        if self.agent.data_dir.as_os_str().is_empty() {
            problems.push(Problem::new("agent.data_dir", "must not be empty"));
        }
        if !self.api.listen.ip().is_loopback() {
            problems.push(Problem::new("api.listen", format!("{} is not a loopback address; the local API must never be exposed on the network", self.api.listen)));
        }
        // ---- telemetry ----
        self.telemetry.validate(problems);
        self.mqtt.validate(problems);
        // ---- end telemetry ----
    }

    /// The effective configuration as TOML with secrets (keys named like password, secret,
    /// token or private key) replaced by `"<redacted>"`.
    pub fn redacted_toml(&self) -> String {
        let mut value =
            toml::Value::try_from(self).unwrap_or(toml::Value::Table(toml::Table::new()));
        redact(&mut value);
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let k = k.to_ascii_lowercase();
                if ["password", "secret", "token", "private_key"]
                    .iter()
                    .any(|s| k.contains(s))
                    && !matches!(v, toml::Value::Table(_))
                {
                    *v = toml::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Merged TOML layers with the source of every leaf key.
#[derive(Default)]
struct Layered {
    table: toml::Table,
    origins: BTreeMap<String, Source>,
    problems: Vec<Problem>,
}

impl Layered {
    fn merge_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        let source = Source::File(path.to_owned());
        merge(&mut self.table, table, "", &source, &mut self.origins);
        Ok(())
    }

    fn merge_env(&mut self, var: &str, raw: &str) {
        let source = Source::Env(var.to_owned());
        let rest = &var[ENV_PREFIX.len()..];
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if parts.len() < 2 || parts.iter().any(String::is_empty) {
            self.problems.push(Problem {
                key: rest.to_ascii_lowercase(),
                source,
                message: format!("not a configuration variable: use {ENV_PREFIX}<SECTION>__<KEY> (for example FLEETLET_API__LISTEN)"),
            });
            return;
        }
        // A value parses as TOML when it can (numbers, booleans, arrays), else it is a string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        let mut table = toml::Table::new();
        let mut cursor = &mut table;
        for part in &parts[..parts.len() - 1] {
            cursor = match cursor
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(t) => t,
                _ => return,
            };
        }
        cursor.insert(parts[parts.len() - 1].clone(), value);
        merge(&mut self.table, table, "", &source, &mut self.origins);
    }

    fn source_of(&self, key: &str) -> Source {
        let mut k = key;
        loop {
            if let Some(s) = self.origins.get(k) {
                return s.clone();
            }
            // An error on a table reports the source of any key beneath it.
            if let Some((_, s)) = self
                .origins
                .range(format!("{k}.")..)
                .next()
                .filter(|(p, _)| p.starts_with(&format!("{k}.")))
            {
                return s.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return Source::Default,
            }
        }
    }

    fn section<T: DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let Some(value) = self.table.remove(name) else {
            return T::default();
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => v,
            Err(e) => {
                let inner = e.inner().to_string();
                let message = inner.lines().next().unwrap_or_default().trim().to_owned();
                let path = e.path().to_string();
                let mut key = if path == "." || path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}.{path}")
                };
                // serde names the unknown field only in its message.
                if let Some(field) = message
                    .strip_prefix("unknown field `")
                    .and_then(|m| m.split('`').next())
                {
                    if !key.ends_with(&format!(".{field}")) {
                        key = format!("{key}.{field}");
                    }
                }
                let source = self.source_of(&key);
                self.problems.push(Problem {
                    key,
                    source,
                    message,
                });
                T::default()
            }
        }
    }

    fn decode(mut self) -> Result<Config, Error> {
        let config = Config {
            device: self.section("device"),
            agent: self.section("agent"),
            api: self.section("api"),
            supervisor: self.section("supervisor"),
            // ---- bundle ----
            bundle: self.section("bundle"),
            // ---- end bundle ----
            // ---- telemetry ----
            telemetry: self.section("telemetry"),
            mqtt: self.section("mqtt"),
            // ---- end telemetry ----
            serial: self.section("serial"),
            hal: self.section("hal"),
            // ---- ros2 ----
            #[cfg(feature = "ros2")]
            ros2: self.section("ros2"),
            // ---- end ros2 ----
        };
        let mut config = config;
        // A workload path is relative to the file that names it (manifests ship beside configs).
        if let Some(w) = config.supervisor.workload.as_mut() {
            if w.is_relative() {
                if let Source::File(f) = self.source_of("supervisor.workload") {
                    if let Some(dir) = f.parent() {
                        *w = dir.join(&*w);
                    }
                }
            }
        }
        let unknown: Vec<String> = self.table.keys().cloned().collect();
        for key in unknown {
            let source = self.source_of(&key);
            self.problems.push(Problem {
                source,
                message: format!(
                    "unknown section or key; expected one of: {}",
                    SECTIONS.join(", ")
                ),
                key,
            });
        }
        let mut semantic = Vec::new();
        config.validate(&mut semantic);
        for mut p in semantic {
            p.source = self.source_of(&p.key);
            self.problems.push(p);
        }
        if self.problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid(self.problems))
        }
    }
}

fn merge(
    dst: &mut toml::Table,
    src: toml::Table,
    prefix: &str,
    source: &Source,
    origins: &mut BTreeMap<String, Source>,
) {
    for (k, v) in src {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (dst.get_mut(&k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => {
                merge(d, s, &path, source, origins)
            }
            (_, v) => {
                if let toml::Value::Table(t) = &v {
                    record_leaves(t, &path, source, origins);
                } else {
                    origins.insert(path, source.clone());
                }
                dst.insert(k, v);
            }
        }
    }
}

fn record_leaves(
    t: &toml::Table,
    prefix: &str,
    source: &Source,
    origins: &mut BTreeMap<String, Source>,
) {
    for (k, v) in t {
        let path = format!("{prefix}.{k}");
        match v {
            toml::Value::Table(t) => record_leaves(t, &path, source, origins),
            _ => {
                origins.insert(path, source.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn problems(r: Result<Config, Error>) -> Vec<Problem> {
        match r {
            Err(Error::Invalid(p)) => p,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "a.toml",
            "[api]\nlisten = \"127.0.0.1:9000\"\nlistn = 1\n",
        );
        let p = problems(Config::load_from(&f, None, []));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "api.listn");
        assert_eq!(p[0].source, Source::File(f.clone()));
        assert!(p[0].to_string().contains("a.toml"), "{}", p[0]);
    }

    #[test]
    fn wrong_type_names_key_value_and_file() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "a.toml", "[agent]\nshutdown_timeout = \"soon\"\n");
        let p = problems(Config::load_from(&f, None, []));
        assert_eq!(p[0].key, "agent.shutdown_timeout");
        assert!(
            p[0].message.contains("soon") || p[0].message.contains("invalid"),
            "{}",
            p[0]
        );
        assert_eq!(p[0].source, Source::File(f));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "a.toml", "bogus = 1\n[api]\nlisten = \"0.0.0.0:1\"\n[agent]\ndb_cache_bytes = \"x\"\n[device]\nid = \"has space\"\n");
        let p = problems(Config::load_from(&f, None, []));
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        for k in ["agent.db_cache_bytes", "bogus", "device.id", "api.listen"] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = Config::load_from(Path::new("/nonexistent/fleetlet.toml"), None, []).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/fleetlet.toml"),
            "{err}"
        );
    }

    #[test]
    fn overlay_layers_over_base_and_bad_overlay_is_named() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "fleetlet.toml",
            "[api]\nlisten = \"127.0.0.1:9000\"\n[device]\nid = \"r1\"\n",
        );
        write(
            d.path(),
            "fleetlet.prod.toml",
            "[api]\nlisten = \"127.0.0.1:9100\"\n",
        );
        let c = Config::load_from(&f, Some("prod"), []).unwrap();
        assert_eq!(c.api.listen.port(), 9100);
        assert_eq!(c.device.id, "r1");

        let bad = write(d.path(), "fleetlet.staging.toml", "[api]\nlisten = 5\n");
        let p = problems(Config::load_from(&f, Some("staging"), []));
        assert_eq!(p[0].key, "api.listen");
        assert_eq!(p[0].source, Source::File(bad));

        let missing = Config::load_from(&f, Some("nope"), []).unwrap_err();
        assert!(
            missing.to_string().contains("fleetlet.nope.toml"),
            "{missing}"
        );
    }

    #[test]
    fn env_variable_overrides_file_and_is_named_when_bad() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "a.toml", "[api]\nlisten = \"127.0.0.1:9000\"\n");
        let c = Config::load_from(
            &f,
            None,
            [
                ("FLEETLET_API__LISTEN".into(), "127.0.0.1:9200".into()),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.api.listen.port(), 9200);
        let c = Config::load_from(
            &f,
            None,
            [("FLEETLET_AGENT__DB_CACHE_BYTES".into(), "1048576".into())],
        )
        .unwrap();
        assert_eq!(c.agent.db_cache_bytes.get(), 1_048_576);

        let p = problems(Config::load_from(
            &f,
            None,
            [("FLEETLET_API__LISTEN".into(), "nope".into())],
        ));
        assert_eq!(p[0].key, "api.listen");
        assert_eq!(p[0].source, Source::Env("FLEETLET_API__LISTEN".into()));
        let p = problems(Config::load_from(
            &f,
            None,
            [("FLEETLET_API__LISTN".into(), "1".into())],
        ));
        assert_eq!(p[0].key, "api.listn");
        let p = problems(Config::load_from(
            &f,
            None,
            [("FLEETLET_FOO".into(), "1".into())],
        ));
        assert!(
            p[0].message.contains("FLEETLET_<SECTION>__<KEY>"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn out_of_range_values_name_the_value() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "a.toml", "[agent]\nshutdown_timeout = \"2h\"\n");
        let p = problems(Config::load_from(&f, None, []));
        assert_eq!(p[0].key, "agent.shutdown_timeout");
        assert!(p[0].message.contains("2h"), "{}", p[0]);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v: toml::Value =
            toml::from_str("[mqtt]\npassword = \"hunter2\"\nhost = \"b\"\n").unwrap();
        redact(&mut v);
        let s = toml::to_string(&v).unwrap();
        assert!(
            !s.contains("hunter2") && s.contains("<redacted>") && s.contains("host"),
            "{s}"
        );
    }

    #[test]
    fn estop_input_without_mcu_needs_an_estop_policy_that_does_something() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "a.toml", "[hal]\nestop_input = 5\n");
        let p = problems(Config::load_from(&f, None, []));
        assert!(p.iter().any(|p| p.key == "serial.estop.processes"), "{p:?}");
        let f = write(
            d.path(),
            "b.toml",
            "[hal]\nbackend = \"cdev\"\nchip = \"/dev/gpiochip2\"\nestop_input = 40\n[serial.estop]\naction = \"pause\"\nprocesses = [\"nav\"]\n",
        );
        let c = Config::load_from(&f, None, []).unwrap();
        assert_eq!(c.hal.chip, Path::new("/dev/gpiochip2"));
        assert_eq!(
            c.hal.estop_input,
            Some(40),
            "cdev line offsets are not BCM numbers"
        );
    }
}
