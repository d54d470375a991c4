//! The workload manifest: which processes a bundle runs and how they are supervised.
//!
//! A workload is TOML (see `docs/workload-manifest.md` for the full reference):
//!
//! ```toml
//! [ros2]
//! domain_id = 7
//! rmw_implementation = "rmw_cyclonedds_cpp"
//! install_prefix = "install"          # colcon install space, relative to the bundle root
//!
//! [process.lidar]
//! command = "ros2"
//! args = ["run", "lidar_driver", "node"]
//! restart = "always"
//! readiness = { ros2_topic_rate = { topic = "/scan", min_hz = 5.0, window = "2s" } }
//!
//! [process.nav]
//! command = "ros2"
//! args = ["launch", "nav", "nav.launch.py"]
//! depends_on = { lidar = "ready" }
//! stop = [{ signal = "SIGINT", timeout = "5s" }, { signal = "SIGTERM", timeout = "5s" }]
//!
//! [[forward]]
//! topic = "/odom"
//! type = "nav_msgs/msg/Odometry"
//! max_rate_hz = 5.0
//! ```
//!
//! Invariants of a parsed [`Workload`] (checked by [`Workload::from_toml_str`]):
//! - unknown keys anywhere are errors, and every error names the process and the key;
//! - every `depends_on` names a declared process, and the dependency graph has no cycle
//!   (a cycle is reported with the processes on it, in order);
//! - process names are `[A-Za-z0-9_.-]{1,64}` (they become metric labels and file names);
//! - every check declares exactly one kind; every duration that paces a loop is non-zero.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::telemetry::Priority;

/// Default restart policy: a process that exits 0 finished on purpose; anything else is
/// restarted (the ROS 2 `respawn=True` behaviour for crashes, without looping on success).
pub const DEFAULT_RESTART: RestartPolicy = RestartPolicy::OnFailure;
/// First backoff delay: long enough not to spin on a missing device, short enough that a
/// one-off crash of a sensor driver costs a tenth of a second of data.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Backoff ceiling: a broken node is retried twice a minute, not hammered.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Backoff growth per consecutive failure (classic doubling).
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// ± fraction of random jitter so a fleet of nodes does not restart in lockstep.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.2;
/// A run this long counts as stable and resets the backoff to `initial`.
pub const DEFAULT_BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Crash-loop limit: this many failures ...
pub const DEFAULT_CRASH_LOOP_MAX_FAILURES: u32 = 5;
/// ... within this window mark the process `failed` (no respawn until an operator acts);
/// unlimited respawn hides crash loops (ROBOTICS-NOTES, `respawn_max_retries`).
pub const DEFAULT_CRASH_LOOP_WINDOW: Duration = Duration::from_secs(120);
/// Per-step timeout of the default stop ladder (the `ros2 launch` convention).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Check pacing: often enough to gate bring-up quickly, rarely enough to cost nothing.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// One check attempt may take this long before it counts as failed.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive liveness failures before the process is restarted (tolerates one hiccup).
pub const DEFAULT_CHECK_FAILURE_THRESHOLD: u32 = 3;
/// Window of the topic-rate check: two seconds smooths bursty publishers.
pub const DEFAULT_TOPIC_RATE_WINDOW: Duration = Duration::from_secs(2);
/// A diagnostics status older than this counts as stale (failed).
pub const DEFAULT_DIAGNOSTICS_STALE_AFTER: Duration = Duration::from_secs(5);
/// Longest process name (metric label, file names).
pub const MAX_NAME_LEN: usize = 64;

/// Problems with a workload manifest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest file could not be read.
    #[error("cannot read workload manifest {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, a wrong type, or an unknown key.
    #[error("workload manifest: key `{key}`: {message}")]
    Parse {
        /// Dotted key path, e.g. `process.nav.restart` (`.` for the whole document).
        key: String,
        /// What is wrong (with line and column where the parser knows them).
        message: String,
    },
    /// Parsed, but the content is inconsistent (missing dependency, cycle, bad value).
    #[error("workload manifest has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One semantic problem, naming the key (which starts with `process.<name>` for a process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path.
    pub key: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

/// A parsed, validated workload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// ROS 2 environment shared by every process.
    #[serde(default)]
    pub ros2: Ros2,
    /// Processes by name.
    #[serde(default, rename = "process")]
    pub processes: BTreeMap<String, ProcessSpec>,
    /// ROS 2 topics forwarded as telemetry (used by the ROS 2 bridge).
    #[serde(default)]
    pub forward: Vec<Forward>,
    /// Directory relative paths resolve against (the installed bundle's root, or the
    /// manifest's directory). Not part of the TOML; set with [`Workload::with_root`].
    #[serde(skip)]
    pub root: PathBuf,
}

/// The `[ros2]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ros2 {
    /// `ROS_DOMAIN_ID` for every process (0..=232); unset leaves the agent's environment.
    pub domain_id: Option<u16>,
    /// `RMW_IMPLEMENTATION`, e.g. `rmw_cyclonedds_cpp`.
    pub rmw_implementation: Option<String>,
    /// The bundle's colcon install space (relative to the root). Its prefixes are
    /// prepended to `AMENT_PREFIX_PATH`, `PATH`, `LD_LIBRARY_PATH` and `PYTHONPATH`
    /// (isolated or merged layout, as `.colcon_install_layout` says).
    pub install_prefix: Option<PathBuf>,
}

/// One supervised process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program to run (looked up on `PATH`, which includes the install space's `bin`).
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (on top of the agent's and the ROS 2 ones).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the workload root; default: the root.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Processes that must be started (or ready) first.
    #[serde(default)]
    pub depends_on: DependsOn,
    /// When to restart after an exit.
    #[serde(default = "default_restart")]
    pub restart: RestartPolicy,
    /// Restart the processes that depend on this one whenever it restarts.
    #[serde(default)]
    pub restart_dependants: bool,
    /// Wait this long after dependencies are satisfied before starting.
    #[serde(default, with = "humantime_serde")]
    pub start_delay: Option<Duration>,
    /// Restart delays.
    #[serde(default)]
    pub backoff: Backoff,
    /// Crash-loop detection.
    #[serde(default)]
    pub crash_loop: CrashLoop,
    /// Stop ladder: each signal goes to the whole process group, then the supervisor waits
    /// up to its timeout for the group to be gone; SIGKILL always ends the ladder.
    #[serde(default = "default_stop")]
    pub stop: Vec<StopStep>,
    /// Gate for dependants (`depends_on = { x = "ready" }`) and for bundle probation.
    #[serde(default)]
    pub readiness: Option<Check>,
    /// Failing this check `failure_threshold` times in a row restarts the process.
    #[serde(default)]
    pub liveness: Option<Check>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
}

fn default_restart() -> RestartPolicy {
    DEFAULT_RESTART
}

fn default_stop() -> Vec<StopStep> {
    vec![
        StopStep {
            signal: StopSignal(Signal::SIGINT),
            timeout: DEFAULT_STOP_TIMEOUT,
        },
        StopStep {
            signal: StopSignal(Signal::SIGTERM),
            timeout: DEFAULT_STOP_TIMEOUT,
        },
    ]
}

/// What a dependant waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency's process has been spawned.
    Started,
    /// The dependency passed its readiness check (or has none and is running).
    Ready,
}

/// `depends_on`: either a list of names (each `started`) or a table `name = "condition"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependsOn(pub BTreeMap<String, Condition>);

impl Serialize for DependsOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = DependsOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of process names or a table of name = \"started\" | \"ready\"")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<DependsOn, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.insert(name, Condition::Started);
                }
                Ok(DependsOn(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<DependsOn, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, cond)) = map.next_entry::<String, Condition>()? {
                    out.insert(name, cond);
                }
                Ok(DependsOn(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart after every exit, clean or not.
    Always,
    /// Restart after a non-zero exit, a death by signal or a liveness failure.
    OnFailure,
    /// Never restart.
    Never,
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first restart (`0s` restarts immediately; there is no floor).
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Ceiling.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Growth per consecutive failure (≥ 1).
    pub multiplier: f64,
    /// Random ± fraction applied to each delay (0..=1).
    pub jitter: f64,
    /// A run at least this long resets the delay to `initial`.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            jitter: DEFAULT_BACKOFF_JITTER,
            reset_after: DEFAULT_BACKOFF_RESET_AFTER,
        }
    }
}

/// Crash-loop detection: `max_failures` restarts within `window` → `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrashLoop {
    /// Failures within the window that mark the process failed; 0 disables the limit
    /// (not recommended: it hides crash loops).
    pub max_failures: u32,
    /// Sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_CRASH_LOOP_MAX_FAILURES,
            window: DEFAULT_CRASH_LOOP_WINDOW,
        }
    }
}

/// One step of the stop ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StopStep {
    /// Signal sent to the process group (`SIGINT`, `SIGTERM`, `SIGHUP`, `SIGQUIT`, `SIGUSR1`, ...).
    pub signal: StopSignal,
    /// How long to wait for the whole group to exit before the next step.
    #[serde(with = "humantime_serde", default = "default_stop_timeout")]
    pub timeout: Duration,
}

fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}

/// A signal name as written in the manifest (`"SIGINT"` or `"INT"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(pub Signal);

impl FromStr for StopSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        let sig = Signal::from_str(&full).map_err(|_| format!("{s:?} is not a signal name"))?;
        if matches!(sig, Signal::SIGSTOP | Signal::SIGCONT | Signal::SIGCHLD) {
            return Err(format!(
                "{s:?} cannot stop a process; use SIGINT, SIGTERM, SIGKILL, ..."
            ));
        }
        Ok(Self(sig))
    }
}

impl Serialize for StopSignal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for StopSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A readiness or liveness check: exactly one kind plus pacing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawCheck", into = "RawCheck")]
pub struct Check {
    /// What to probe.
    pub kind: CheckKind,
    /// Time between attempts.
    pub interval: Duration,
    /// One attempt's deadline.
    pub timeout: Duration,
    /// Consecutive failures that count as failed (liveness → restart).
    pub failure_threshold: u32,
    /// Wait this long after the process starts before the first attempt.
    pub initial_delay: Duration,
    /// Readiness only: not ready within this long after start → restart per policy.
    pub deadline: Option<Duration>,
}

/// The kinds of check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// Run a command; exit 0 passes.
    Exec(ExecCheck),
    /// A TCP connect succeeds.
    Tcp(TcpCheck),
    /// A topic publishes at ≥ `min_hz` over `window` (ROS 2 check provider).
    Ros2TopicRate(TopicRateCheck),
    /// A lifecycle node is in `state` (default `active`) (ROS 2 check provider).
    Ros2Lifecycle(LifecycleCheck),
    /// A `/diagnostics` status is at or below `max_level` and fresh (ROS 2 check provider).
    Ros2Diagnostics(DiagnosticsCheck),
}

impl CheckKind {
    /// The manifest key of this kind (`exec`, `tcp`, `ros2_topic_rate`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Tcp(_) => "tcp",
            Self::Ros2TopicRate(_) => "ros2_topic_rate",
            Self::Ros2Lifecycle(_) => "ros2_lifecycle",
            Self::Ros2Diagnostics(_) => "ros2_diagnostics",
        }
    }

    /// Whether a [`crate::supervisor::CheckProvider`] evaluates this kind.
    pub fn needs_provider(&self) -> bool {
        matches!(
            self,
            Self::Ros2TopicRate(_) | Self::Ros2Lifecycle(_) | Self::Ros2Diagnostics(_)
        )
    }
}

/// `exec = { command, args }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCheck {
    /// Program (same `PATH` and environment as the process).
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `tcp = { port }` (on 127.0.0.1) or `tcp = { addr = "host:port" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// Port on 127.0.0.1.
    pub port: Option<u16>,
    /// Full socket address.
    pub addr: Option<SocketAddr>,
}

impl TcpCheck {
    /// The address to connect to (validated: exactly one of `port`/`addr`).
    pub fn target(&self) -> SocketAddr {
        match (self.addr, self.port) {
            (Some(a), _) => a,
            (None, Some(p)) => SocketAddr::from(([127, 0, 0, 1], p)),
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// `ros2_topic_rate = { topic, min_hz, window }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRateCheck {
    /// Fully qualified topic, e.g. `/scan`.
    pub topic: String,
    /// Minimum publish rate over the window.
    pub min_hz: f64,
    /// Averaging window.
    #[serde(with = "humantime_serde", default = "default_topic_window")]
    pub window: Duration,
}

fn default_topic_window() -> Duration {
    DEFAULT_TOPIC_RATE_WINDOW
}

/// `ros2_lifecycle = { node, state }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleCheck {
    /// Fully qualified node name, e.g. `/map_server`.
    pub node: String,
    /// Required state label (`active` by default).
    #[serde(default = "default_lifecycle_state")]
    pub state: String,
}

fn default_lifecycle_state() -> String {
    "active".to_owned()
}

/// Level of a `diagnostic_msgs/DiagnosticStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticLevel {
    /// OK (0).
    Ok,
    /// WARN (1).
    Warn,
    /// ERROR (2).
    Error,
    /// STALE (3).
    Stale,
}

/// `ros2_diagnostics = { name, hardware_id, max_level, stale_after }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsCheck {
    /// `DiagnosticStatus.name` to watch (exact match).
    pub name: String,
    /// Optional `hardware_id` it must carry.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// Worst level that still passes (default `warn`).
    #[serde(default = "default_max_level")]
    pub max_level: DiagnosticLevel,
    /// No status for this long counts as failed.
    #[serde(with = "humantime_serde", default = "default_stale_after")]
    pub stale_after: Duration,
}

fn default_max_level() -> DiagnosticLevel {
    DiagnosticLevel::Warn
}

fn default_stale_after() -> Duration {
    DEFAULT_DIAGNOSTICS_STALE_AFTER
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<ExecCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ros2_topic_rate: Option<TopicRateCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ros2_lifecycle: Option<LifecycleCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ros2_diagnostics: Option<DiagnosticsCheck>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    failure_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    initial_delay: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    deadline: Option<Duration>,
}

impl TryFrom<RawCheck> for Check {
    type Error = String;
    fn try_from(r: RawCheck) -> Result<Self, String> {
        let mut kinds = Vec::new();
        if let Some(c) = r.exec {
            kinds.push(CheckKind::Exec(c));
        }
        if let Some(c) = r.tcp {
            kinds.push(CheckKind::Tcp(c));
        }
        if let Some(c) = r.ros2_topic_rate {
            kinds.push(CheckKind::Ros2TopicRate(c));
        }
        if let Some(c) = r.ros2_lifecycle {
            kinds.push(CheckKind::Ros2Lifecycle(c));
        }
        if let Some(c) = r.ros2_diagnostics {
            kinds.push(CheckKind::Ros2Diagnostics(c));
        }
        if kinds.len() != 1 {
            let given: Vec<&str> = kinds.iter().map(CheckKind::name).collect();
            return Err(format!(
                "a check needs exactly one of exec, tcp, ros2_topic_rate, ros2_lifecycle, ros2_diagnostics (given: {})",
                if given.is_empty() { "none".to_owned() } else { given.join(", ") }
            ));
        }
        let kind = kinds.remove(0);
        Ok(Self {
            kind,
            interval: r.interval.unwrap_or(DEFAULT_CHECK_INTERVAL),
            timeout: r.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT),
            failure_threshold: r
                .failure_threshold
                .unwrap_or(DEFAULT_CHECK_FAILURE_THRESHOLD),
            initial_delay: r.initial_delay.unwrap_or(Duration::ZERO),
            deadline: r.deadline,
        })
    }
}

impl From<Check> for RawCheck {
    fn from(c: Check) -> Self {
        let mut r = RawCheck {
            exec: None,
            tcp: None,
            ros2_topic_rate: None,
            ros2_lifecycle: None,
            ros2_diagnostics: None,
            interval: Some(c.interval),
            timeout: Some(c.timeout),
            failure_threshold: Some(c.failure_threshold),
            initial_delay: Some(c.initial_delay),
            deadline: c.deadline,
        };
        match c.kind {
            CheckKind::Exec(x) => r.exec = Some(x),
            CheckKind::Tcp(x) => r.tcp = Some(x),
            CheckKind::Ros2TopicRate(x) => r.ros2_topic_rate = Some(x),
            CheckKind::Ros2Lifecycle(x) => r.ros2_lifecycle = Some(x),
            CheckKind::Ros2Diagnostics(x) => r.ros2_diagnostics = Some(x),
        }
        r
    }
}

/// Resource limits: cgroup v2 when the agent has a writable delegated cgroup, else rlimits
/// (memory only; a CPU rate cannot be expressed as an rlimit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory ceiling: bytes, or a string with a unit (`"512MiB"`, `"1G"`, `"64k"`).
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPU quota in cores (`0.5` = half a core), cgroup `cpu.max`.
    #[serde(default)]
    pub cpu: Option<f64>,
}

/// A byte count written as an integer or with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (like 512MiB, 1G or 1048576)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use B, k, KiB, M, MiB, G, GiB)"
                ))
            }
        };
        Ok(Self((n * mult as f64) as u64))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a size string like \"512MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[[forward]]` entry: a ROS 2 topic forwarded as telemetry by the ROS 2 bridge (the
/// same type serves the agent's `[[ros2.forward]]` config and the bridge itself).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Fully qualified topic, e.g. `/odom`.
    pub topic: String,
    /// Message type, e.g. `nav_msgs/msg/Odometry`.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Throttle: at most this many records per second (extra messages are dropped).
    #[serde(default)]
    pub max_rate_hz: Option<f64>,
    /// Field paths to keep (`pose.pose.position`); empty keeps the whole message.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Telemetry priority.
    #[serde(default = "default_forward_priority")]
    pub priority: Priority,
    /// Telemetry stream; default `ros` + the topic (`/odom` → `ros/odom`).
    #[serde(default)]
    pub stream: Option<String>,
}

fn default_forward_priority() -> Priority {
    Priority::Bulk
}

impl Forward {
    /// The telemetry stream this topic goes to.
    pub fn stream_name(&self) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| format!("ros{}", self.topic))
    }

    /// Every problem of this entry as `(key, message)`, keys relative to the entry
    /// (`topic`, `type`, `max_rate_hz`, `stream`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.topic.starts_with('/') {
            out.push((
                "topic",
                format!("{:?} must be fully qualified (start with /)", self.topic),
            ));
        }
        if self.msg_type.split('/').count() != 3 {
            out.push((
                "type",
                format!("{:?} must look like pkg/msg/Type", self.msg_type),
            ));
        }
        if let Some(r) = self.max_rate_hz {
            if !(r.is_finite() && r > 0.0) {
                out.push(("max_rate_hz", format!("{r} must be > 0")));
            }
        }
        let stream = self.stream_name();
        if stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        {
            out.push((
                "stream",
                format!("{stream:?} must use only A-Z a-z 0-9 _ - . / (it becomes an MQTT topic)"),
            ));
        }
        out
    }
}

impl Workload {
    /// Parses and validates a manifest. Relative paths resolve against the current
    /// directory until [`Workload::with_root`] sets the bundle root.
    ///
    /// # Errors
    /// [`Error::Parse`] for TOML/type/unknown-key errors (naming the key path, which
    /// starts with `process.<name>`), [`Error::Invalid`] listing every semantic problem.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let de = toml::Deserializer::new(text);
        let mut w: Workload = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string().trim().to_owned();
            let mut key = path;
            if let Some(field) = message
                .lines()
                .find_map(|l| l.strip_prefix("unknown field `"))
                .and_then(|m| m.split('`').next())
            {
                if key == "." || key.is_empty() {
                    key = field.to_owned();
                } else if !key.ends_with(&format!(".{field}")) {
                    key = format!("{key}.{field}");
                }
            }
            Error::Parse { key, message }
        })?;
        w.validate()?;
        w.root = PathBuf::from(".");
        Ok(w)
    }

    /// Reads, parses and validates a manifest file; its directory becomes the root.
    ///
    /// # Errors
    /// [`Error::Read`] or any error of [`Workload::from_toml_str`].
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let root = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Ok(Self::from_toml_str(&text)?.with_root(root))
    }

    /// Sets the directory relative paths resolve against.
    #[must_use]
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Resolves a manifest path against the root.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }

    /// Process names in start order: dependencies first, ties by name.
    pub fn start_order(&self) -> Vec<String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.processes.len());
        while order.len() < self.processes.len() {
            let next = self.processes.iter().find(|(n, p)| {
                !done.contains(n.as_str())
                    && p.depends_on.0.keys().all(|d| done.contains(d.as_str()))
            });
            match next {
                Some((n, _)) => {
                    done.insert(n);
                    order.push(n.clone());
                }
                // Unreachable for a validated workload (no cycles); stop instead of looping.
                None => break,
            }
        }
        order
    }

    /// Processes that declare `name` in their `depends_on` (direct dependants).
    pub fn dependants(&self, name: &str) -> Vec<String> {
        self.processes
            .iter()
            .filter(|(_, p)| p.depends_on.0.contains_key(name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut push = |key: String, message: String| problems.push(Problem { key, message });
        if let Some(d) = self.ros2.domain_id {
            if d > 232 {
                push(
                    "ros2.domain_id".into(),
                    format!("{d} is out of range; ROS 2 domain ids are 0..=232"),
                );
            }
        }
        if let Some(r) = &self.ros2.rmw_implementation {
            if !r.starts_with("rmw_") {
                push(
                    "ros2.rmw_implementation".into(),
                    format!("{r:?} is not an RMW implementation (expected rmw_*, e.g. rmw_cyclonedds_cpp)"),
                );
            }
        }
        for (name, p) in &self.processes {
            let k = |key: &str| format!("process.{name}.{key}");
            if name.is_empty()
                || name.len() > MAX_NAME_LEN
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                push(
                    format!("process.{name}"),
                    format!("process name {name:?} must be 1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 _ - ."),
                );
            }
            if p.command.trim().is_empty() {
                push(k("command"), "must not be empty".into());
            }
            for var in p.env.keys() {
                if var.is_empty() || var.contains('=') || var.contains('\0') {
                    push(k("env"), format!("{var:?} is not a valid variable name"));
                }
            }
            for dep in p.depends_on.0.keys() {
                if dep == name {
                    push(
                        k("depends_on"),
                        format!("process {name:?} depends on itself"),
                    );
                } else if !self.processes.contains_key(dep) {
                    push(
                        k("depends_on"),
                        format!("process {name:?} depends on {dep:?}, which is not declared"),
                    );
                }
            }
            let b = &p.backoff;
            if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
                push(
                    k("backoff.multiplier"),
                    format!("{} must be ≥ 1", b.multiplier),
                );
            }
            if !(0.0..=1.0).contains(&b.jitter) {
                push(
                    k("backoff.jitter"),
                    format!("{} must be within 0..=1", b.jitter),
                );
            }
            if b.initial > b.max {
                push(
                    k("backoff.initial"),
                    format!(
                        "{} exceeds backoff.max {}",
                        humantime::format_duration(b.initial),
                        humantime::format_duration(b.max)
                    ),
                );
            }
            if p.crash_loop.max_failures > 0 && p.crash_loop.window.is_zero() {
                push(k("crash_loop.window"), "must be non-zero".into());
            }
            for (i, s) in p.stop.iter().enumerate() {
                if s.timeout.is_zero() && s.signal.0 != Signal::SIGKILL {
                    push(
                        format!("process.{name}.stop[{i}].timeout"),
                        format!("{} needs a non-zero timeout", s.signal.0),
                    );
                }
            }
            for (which, check) in [("readiness", &p.readiness), ("liveness", &p.liveness)] {
                let Some(c) = check else { continue };
                if c.interval.is_zero() {
                    push(k(&format!("{which}.interval")), "must be non-zero".into());
                }
                if c.timeout.is_zero() {
                    push(k(&format!("{which}.timeout")), "must be non-zero".into());
                }
                if c.failure_threshold == 0 {
                    push(
                        k(&format!("{which}.failure_threshold")),
                        "must be ≥ 1".into(),
                    );
                }
                if which == "liveness" && c.deadline.is_some() {
                    push(
                        k("liveness.deadline"),
                        "only readiness checks have a deadline".into(),
                    );
                }
                match &c.kind {
                    CheckKind::Exec(e) if e.command.trim().is_empty() => {
                        push(
                            k(&format!("{which}.exec.command")),
                            "must not be empty".into(),
                        );
                    }
                    CheckKind::Tcp(t) => match (t.port, t.addr) {
                        (Some(_), Some(_)) | (None, None) => push(
                            k(&format!("{which}.tcp")),
                            "give exactly one of port or addr".into(),
                        ),
                        (Some(0), None) => {
                            push(k(&format!("{which}.tcp.port")), "must be non-zero".into());
                        }
                        _ => {}
                    },
                    CheckKind::Ros2TopicRate(t) => {
                        if !t.topic.starts_with('/') {
                            push(
                                k(&format!("{which}.ros2_topic_rate.topic")),
                                format!("{:?} must be fully qualified (start with /)", t.topic),
                            );
                        }
                        if !(t.min_hz.is_finite() && t.min_hz > 0.0) {
                            push(
                                k(&format!("{which}.ros2_topic_rate.min_hz")),
                                format!("{} must be > 0", t.min_hz),
                            );
                        }
                        if t.window.is_zero() {
                            push(
                                k(&format!("{which}.ros2_topic_rate.window")),
                                "must be non-zero".into(),
                            );
                        }
                    }
                    CheckKind::Ros2Lifecycle(l) => {
                        if !l.node.starts_with('/') {
                            push(
                                k(&format!("{which}.ros2_lifecycle.node")),
                                format!("{:?} must be fully qualified (start with /)", l.node),
                            );
                        }
                        const STATES: [&str; 4] =
                            ["unconfigured", "inactive", "active", "finalized"];
                        if !STATES.contains(&l.state.as_str()) {
                            push(
                                k(&format!("{which}.ros2_lifecycle.state")),
                                format!(
                                    "{:?} is not a primary lifecycle state ({})",
                                    l.state,
                                    STATES.join(", ")
                                ),
                            );
                        }
                    }
                    CheckKind::Ros2Diagnostics(d) => {
                        if d.name.is_empty() {
                            push(
                                k(&format!("{which}.ros2_diagnostics.name")),
                                "must not be empty".into(),
                            );
                        }
                    }
                    CheckKind::Exec(_) => {}
                }
            }
            if let Some(m) = p.limits.memory {
                if m.0 < 1 << 20 {
                    push(
                        k("limits.memory"),
                        format!("{} bytes is below 1 MiB; nothing can run in that", m.0),
                    );
                }
            }
            if let Some(c) = p.limits.cpu {
                if !(c.is_finite() && c >= 0.01) {
                    push(k("limits.cpu"), format!("{c} must be ≥ 0.01 cores"));
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            push(
                format!("process.{}.depends_on", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
        }
        let mut streams = BTreeSet::new();
        for (i, f) in self.forward.iter().enumerate() {
            let k = |key: &str| format!("forward[{i}].{key}");
            for (key, message) in f.problems() {
                push(k(key), message);
            }
            let stream = f.stream_name();
            if !streams.insert(stream.clone()) {
                push(
                    k("stream"),
                    format!("stream {stream:?} is used by another forward entry"),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// A dependency cycle as the processes on it (`[a, b, a]`), if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = self
            .processes
            .keys()
            .map(|k| (k.as_str(), Mark::New))
            .collect();
        fn visit<'a>(
            w: &'a Workload,
            n: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            marks.insert(n, Mark::Active);
            stack.push(n);
            if let Some(p) = w.processes.get(n) {
                for dep in p.depends_on.0.keys() {
                    match marks.get(dep.as_str()).copied() {
                        Some(Mark::Active) => {
                            let start = stack.iter().position(|s| *s == dep.as_str()).unwrap_or(0);
                            let mut cycle: Vec<String> =
                                stack[start..].iter().map(|s| (*s).to_owned()).collect();
                            cycle.push(dep.clone());
                            return Some(cycle);
                        }
                        Some(Mark::New) => {
                            if let Some(c) = visit(w, dep, marks, stack) {
                                return Some(c);
                            }
                        }
                        _ => {}
                    }
                }
            }
            stack.pop();
            marks.insert(n, Mark::Done);
            None
        }
        let names: Vec<&str> = self.processes.keys().map(String::as_str).collect();
        for n in names {
            if marks.get(n) == Some(&Mark::New) {
                let mut stack = Vec::new();
                if let Some(c) = visit(self, n, &mut marks, &mut stack) {
                    return Some(c);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Workload, Error> {
        Workload::from_toml_str(s)
    }

    #[test]
    fn minimal_process_gets_the_documented_defaults() {
        let w = parse("[process.a]\ncommand = \"sleep\"\nargs = [\"10\"]\n").unwrap();
        let a = &w.processes["a"];
        assert_eq!(a.restart, RestartPolicy::OnFailure);
        assert_eq!(a.backoff, Backoff::default());
        assert_eq!(a.crash_loop, CrashLoop::default());
        assert_eq!(
            a.stop
                .iter()
                .map(|s| (s.signal.0, s.timeout))
                .collect::<Vec<_>>(),
            vec![
                (Signal::SIGINT, Duration::from_secs(5)),
                (Signal::SIGTERM, Duration::from_secs(5))
            ]
        );
        assert!(a.readiness.is_none() && a.liveness.is_none());
    }

    #[test]
    fn full_process_parses_every_key() {
        let w = parse(
            r#"
            [ros2]
            domain_id = 42
            rmw_implementation = "rmw_cyclonedds_cpp"
            install_prefix = "install"

            [process.lidar]
            command = "lidar"
            [process.lidar.readiness]
            ros2_topic_rate = { topic = "/scan", min_hz = 5.0, window = "3s" }
            deadline = "30s"

            [process.nav]
            command = "ros2"
            args = ["launch", "nav", "x.launch.py"]
            env = { RCUTILS_LOGGING_BUFFERED_STREAM = "1" }
            working_dir = "share/nav"
            depends_on = { lidar = "ready" }
            restart = "always"
            restart_dependants = true
            start_delay = "250ms"
            backoff = { initial = "0s", max = "10s", multiplier = 1.5, jitter = 0.0, reset_after = "5m" }
            crash_loop = { max_failures = 3, window = "30s" }
            stop = [{ signal = "INT", timeout = "2s" }, { signal = "SIGTERM" }]
            limits = { memory = "512MiB", cpu = 1.5 }
            liveness = { tcp = { port = 9000 }, interval = "500ms", timeout = "200ms", failure_threshold = 2, initial_delay = "1s" }

            [[forward]]
            topic = "/odom"
            type = "nav_msgs/msg/Odometry"
            max_rate_hz = 5.0
            fields = ["pose.pose.position"]
            priority = "normal"
            "#,
        )
        .unwrap();
        assert_eq!(w.ros2.domain_id, Some(42));
        let nav = &w.processes["nav"];
        assert_eq!(nav.depends_on.0["lidar"], Condition::Ready);
        assert_eq!(nav.restart, RestartPolicy::Always);
        assert_eq!(nav.backoff.initial, Duration::ZERO);
        assert_eq!(nav.stop[0].signal.0, Signal::SIGINT);
        assert_eq!(nav.stop[1].timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(nav.limits.memory, Some(ByteSize(512 << 20)));
        let live = nav.liveness.as_ref().unwrap();
        assert_eq!(live.failure_threshold, 2);
        assert_eq!(live.kind.name(), "tcp");
        assert!(
            matches!(&w.processes["lidar"].readiness.as_ref().unwrap().kind,
            CheckKind::Ros2TopicRate(t) if t.min_hz == 5.0 && t.window == Duration::from_secs(3))
        );
        assert_eq!(w.forward[0].stream_name(), "ros/odom");
        assert_eq!(w.forward[0].priority, Priority::Normal);
        assert_eq!(w.start_order(), vec!["lidar", "nav"]);
        assert_eq!(w.dependants("lidar"), vec!["nav"]);
    }

    #[test]
    fn depends_on_list_means_started() {
        let w =
            parse("[process.a]\ncommand=\"x\"\n[process.b]\ncommand=\"x\"\ndepends_on=[\"a\"]\n")
                .unwrap();
        assert_eq!(w.processes["b"].depends_on.0["a"], Condition::Started);
    }

    #[test]
    fn unknown_key_names_process_and_key() {
        let e = parse("[process.nav]\ncommand = \"x\"\nrestart_policy = \"always\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("process.nav.restart_policy"), "{msg}");
        let e = parse(
            "[process.nav]\ncommand = \"x\"\nbackoff = { initial = \"1s\", maximum = \"2s\" }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("process.nav.backoff.maximum"), "{e}");
        let e = parse("[processes.nav]\ncommand = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("processes"), "{e}");
    }

    #[test]
    fn bad_values_name_process_and_key() {
        let e = parse("[process.nav]\ncommand = \"x\"\nrestart = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("process.nav.restart"), "{e}");
        let e = parse("[process.nav]\ncommand = \"x\"\nstop = [{ signal = \"SIGFOO\" }]\n")
            .unwrap_err();
        assert!(e.to_string().contains("SIGFOO"), "{e}");
        let e = parse("[process.nav]\ncommand = \"x\"\nreadiness = { interval = \"1s\" }\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("process.nav.readiness")
                && e.to_string().contains("exactly one"),
            "{e}"
        );
        let e = parse("[process.nav]\ncommand = \"x\"\nreadiness = { tcp = { port = 1 }, exec = { command = \"true\" } }\n").unwrap_err();
        assert!(e.to_string().contains("given: exec, tcp"), "{e}");
        let e = parse("[process.nav]\ncommand = \"x\"\nlimits = { memory = \"12 parsecs\" }\n")
            .unwrap_err();
        assert!(e.to_string().contains("process.nav.limits.memory"), "{e}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let e = parse(
            "[process.a]\ncommand = \"\"\ndepends_on = [\"ghost\"]\nbackoff = { multiplier = 0.5, jitter = 2.0 }\n[\"process\".\"bad name\"]\ncommand = \"x\"\n",
        )
        .unwrap_err();
        let Error::Invalid(p) = e else { panic!("{e}") };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "process.a.command",
            "process.a.depends_on",
            "process.a.backoff.multiplier",
            "process.a.backoff.jitter",
            "process.bad name",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
        assert!(p.iter().any(|p| p.message.contains("\"ghost\"")));
    }

    #[test]
    fn dependency_cycle_names_the_processes_on_it() {
        let e = parse(
            "[process.a]\ncommand=\"x\"\ndepends_on=[\"c\"]\n[process.b]\ncommand=\"x\"\ndepends_on=[\"a\"]\n[process.c]\ncommand=\"x\"\ndepends_on=[\"b\"]\n[process.d]\ncommand=\"x\"\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("dependency cycle: a -> c -> b -> a"), "{msg}");
        let e = parse("[process.a]\ncommand=\"x\"\ndepends_on=[\"a\"]\n").unwrap_err();
        assert!(e.to_string().contains("depends on itself"), "{e}");
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let w = parse(
            "[process.z]\ncommand=\"x\"\n[process.a]\ncommand=\"x\"\ndepends_on={ m = \"ready\" }\n[process.m]\ncommand=\"x\"\ndepends_on=[\"z\"]\n",
        )
        .unwrap();
        assert_eq!(w.start_order(), vec!["z", "m", "a"]);
    }

    #[test]
    fn byte_sizes_accept_units() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("64k".parse::<ByteSize>().unwrap().0, 64_000);
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert!("lots".parse::<ByteSize>().is_err());
        let w = parse("[process.a]\ncommand=\"x\"\nlimits={memory=67108864}\n").unwrap();
        assert_eq!(w.processes["a"].limits.memory, Some(ByteSize(64 << 20)));
    }

    #[test]
    fn forward_entries_are_checked() {
        let e =
            parse("[[forward]]\ntopic=\"odom\"\ntype=\"Odometry\"\nmax_rate_hz=0.0\n").unwrap_err();
        let Error::Invalid(p) = e else { panic!() };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "forward[0].topic",
                "forward[0].type",
                "forward[0].max_rate_hz"
            ]
        );
        let e = parse("[[forward]]\ntopic=\"/odom\"\ntype=\"nav_msgs/msg/Odometry\"\nunknown=1\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
    }

    #[test]
    fn ros2_section_is_checked() {
        let e = parse("[ros2]\ndomain_id = 300\nrmw_implementation = \"cyclone\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ros2.domain_id") && msg.contains("ros2.rmw_implementation"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_carry_position() {
        let e = parse("[process.a\ncommand=1").unwrap_err();
        assert!(matches!(e, Error::Parse { .. }));
        assert!(e.to_string().contains("line"), "{e}");
    }
}
