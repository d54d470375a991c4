//! Process supervisor: starts, watches, restarts and stops the processes a workload
//! declares, in dependency order, with limits, without orphans.
//!
//! Shape: [`start`] spawns the engine on the agent's task tracker and returns a [`Handle`]
//! (cloneable, only sends commands over a bounded channel and reads the published
//! [`Snapshot`]). The engine owns one actor task per process; each actor owns its child,
//! its checks and its restart state, so a slow stop ladder of one process never delays
//! another.
//!
//! Invariants:
//! - Every process leads its own session (`setsid` before exec; pid = pgid = sid); every
//!   signal of the stop ladder goes to its whole tree (session, group, and descendants that
//!   moved to another group or session), and a stop returns only once the tree is gone
//!   (no member left but zombies nobody can reap).
//! - A process is restarted only after its previous tree is gone: never two copies.
//! - Owned sessions are recorded in sled (tree `supervisor`) before the agent can
//!   forget them; on start, leftovers of a crashed agent are verified through `/proc`
//!   (same kernel boot, same start time) and stopped before anything new starts.
//! - Crash loops (`crash_loop.max_failures` within `crash_loop.window`) end in
//!   [`ProcessState::Failed`]: no further restart until an operator (`start`/`restart`)
//!   or a new workload ([`Handle::apply`]) acts.
//! - Stops go in reverse dependency order: a process is stopped only after every process
//!   that depends on it has stopped.
//! - Output is read continuously (a logging child is never blocked by the agent); lines
//!   beyond the per-process token bucket are dropped and counted, never queued.
//! - A [`PreStop`] hook runs before the stop ladder of a process stopped on purpose, bounded
//!   by [`PreStop::timeout`]: a hook that hangs delays the ladder, never prevents it.

mod cgroup;
mod engine;
mod env;
mod health;
mod logs;
mod orphans;
mod process;
mod restart;
mod spawn;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::runtime::Services;
use crate::workload::{self, Workload};

pub use logs::{LogLine, LogStream};
pub use restart::{BackoffState, CrashWindow};

/// The check specification a [`CheckProvider`] evaluates (the manifest's `Check`).
pub type CheckSpec = workload::Check;

/// Default log ring size per process: a screenful of context for `fleetlet logs`, ~0.5 MiB
/// worst case at 4 KiB lines... usually far less.
pub const DEFAULT_LOG_LINES: usize = 1000;
/// Default sustained log rate per process (lines/s) kept; a ROS node at INFO rarely
/// exceeds a few dozen lines per second, a log storm is cut here.
pub const DEFAULT_LOG_RATE: u32 = 200;
/// Default burst above the rate (start-up banners, a stack trace).
pub const DEFAULT_LOG_BURST: u32 = 1000;
/// Longest line kept; longer lines are split (a missing newline cannot grow memory).
pub const DEFAULT_MAX_LINE_BYTES: usize = 4096;
/// Command channel depth: operator actions are rare; a full channel makes callers wait.
pub const COMMAND_CAPACITY: usize = 64;
/// Followers (`fleetlet logs --follow`) that fall this many lines behind lose lines.
pub const FOLLOW_CAPACITY: usize = 1024;

/// `[supervisor]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Allow running a workload manifest that did not come from a signed bundle (the
    /// `workload` key below). Dev configs only; production must leave this false.
    pub allow_unsigned_workloads: bool,
    /// A workload manifest to run at start (refused unless `allow_unsigned_workloads`).
    pub workload: Option<PathBuf>,
    /// Lines kept per process for `fleetlet logs`.
    pub log_lines: usize,
    /// Sustained lines per second kept per process (stdout + stderr).
    pub log_rate: u32,
    /// Burst of lines allowed above the rate.
    pub log_burst: u32,
    /// Longest line kept, in bytes.
    pub max_line_bytes: usize,
    /// Use cgroup v2 for limits when the agent's cgroup is delegated and writable.
    pub cgroups: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allow_unsigned_workloads: false,
            workload: None,
            log_lines: DEFAULT_LOG_LINES,
            log_rate: DEFAULT_LOG_RATE,
            log_burst: DEFAULT_LOG_BURST,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            cgroups: true,
        }
    }
}

impl Config {
    /// Collects every problem of this section (keys prefixed `supervisor.`).
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        use crate::config::Problem;
        if let Some(path) = &self.workload {
            if !self.allow_unsigned_workloads {
                problems.push(Problem::new(
                    "supervisor.workload",
                    format!("{} is an unsigned workload; running it needs supervisor.allow_unsigned_workloads = true (development only)", path.display()),
                ));
            }
        }
        if self.log_lines == 0 || self.log_lines > 100_000 {
            problems.push(Problem::new(
                "supervisor.log_lines",
                format!("{} must be within 1..=100000", self.log_lines),
            ));
        }
        if self.log_rate == 0 {
            problems.push(Problem::new("supervisor.log_rate", "must be ≥ 1 line/s"));
        }
        if self.log_burst == 0 {
            problems.push(Problem::new("supervisor.log_burst", "must be ≥ 1 line"));
        }
        if !(80..=1 << 20).contains(&self.max_line_bytes) {
            problems.push(Problem::new(
                "supervisor.max_line_bytes",
                format!("{} must be within 80..=1048576", self.max_line_bytes),
            ));
        }
    }
}

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A workload from config was given without `allow_unsigned_workloads`.
    #[error("refusing unsigned workload {path}: set supervisor.allow_unsigned_workloads = true (development only)")]
    UnsignedRefused {
        /// The manifest path.
        path: PathBuf,
    },
    /// The workload manifest is invalid.
    #[error(transparent)]
    Workload(#[from] workload::Error),
    /// No process of that name in the current workload.
    #[error("no process named {name:?} in the current workload")]
    UnknownProcess {
        /// The name asked for.
        name: String,
    },
    /// The operation does not apply in the process's current state.
    #[error("cannot {op} process {name:?} while it is {state}")]
    InvalidState {
        /// Process.
        name: String,
        /// Operation.
        op: &'static str,
        /// Its state.
        state: ProcessState,
    },
    /// Signalling the process group failed.
    #[error("cannot signal process {name:?} (group {pgid}): {source}")]
    Signal {
        /// Process.
        name: String,
        /// Process group.
        pgid: i32,
        /// OS error.
        source: nix::Error,
    },
    /// The supervisor has shut down.
    #[error("the supervisor is not running")]
    Closed,
}

/// Lifecycle state of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Waiting for its dependencies (or for leftovers of a crashed agent to be cleaned up).
    Pending,
    /// Spawned; its readiness check has not passed yet.
    Starting,
    /// Running; it has no readiness check (so it counts as ready).
    Running,
    /// Running and its readiness check passed.
    Ready,
    /// Exited; waiting out the backoff before the next start.
    Backoff,
    /// Running the stop ladder.
    Stopping,
    /// Stopped on purpose (operator or shutdown); starts again only on `start`/`restart`.
    Stopped,
    /// Exited and the restart policy says not to restart (clean exit, or `never`).
    Exited,
    /// Crash loop, failed spawn or failed exit under `never`: needs an operator or a new bundle.
    Failed,
    /// Frozen with SIGSTOP (whole group) by an operator.
    Paused,
}

impl ProcessState {
    /// Whether the process (group) exists in this state.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Ready | Self::Stopping | Self::Paused
        )
    }

    /// Value of the `fleetlet_process_state` gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Pending => 0.0,
            Self::Starting => 1.0,
            Self::Running => 2.0,
            Self::Ready => 3.0,
            Self::Backoff => 4.0,
            Self::Stopping => 5.0,
            Self::Stopped => 6.0,
            Self::Exited => 7.0,
            Self::Failed => 8.0,
            Self::Paused => 9.0,
        }
    }

    /// Lowercase name as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Backoff => "backoff",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Paused => "paused",
        }
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal name, when a signal killed it.
    pub signal: Option<String>,
    /// Wall clock of the exit (ms since the epoch).
    pub at_ms: u64,
    /// How long it ran, in milliseconds.
    pub ran_ms: u64,
}

impl ExitInfo {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// How a limit was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "via", content = "detail")]
pub enum LimitApplied {
    /// No limit declared.
    None,
    /// Applied through a cgroup v2 directory.
    Cgroup(String),
    /// Applied as an rlimit (`RLIMIT_DATA` for memory).
    Rlimit(String),
    /// Declared but could not be applied, with the reason.
    NotApplied(String),
}

/// Which limits applied to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsApplied {
    /// Memory limit.
    pub memory: LimitApplied,
    /// CPU quota.
    pub cpu: LimitApplied,
}

impl Default for LimitsApplied {
    fn default() -> Self {
        Self {
            memory: LimitApplied::None,
            cpu: LimitApplied::None,
        }
    }
}

/// Status of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Lifecycle state.
    pub state: ProcessState,
    /// Readiness passed (or no readiness check) and running.
    pub ready: bool,
    /// Liveness passing (true when there is no liveness check).
    pub healthy: bool,
    /// Pid (= process group id = session id) of the current run.
    pub pid: Option<u32>,
    /// Restarts since the workload was applied (operator restarts included).
    pub restarts: u64,
    /// Failures since the last stable run (drives the backoff).
    pub consecutive_failures: u32,
    /// Delay of the pending restart, in milliseconds, while in `backoff`.
    pub backoff_ms: Option<u64>,
    /// Why it is in this state (failure reason, stop reason, ...).
    pub reason: Option<String>,
    /// When the state was entered (ms since the epoch).
    pub since_ms: u64,
    /// How the last run ended.
    pub last_exit: Option<ExitInfo>,
    /// Which limits applied, and how.
    pub limits: LimitsApplied,
    /// Output lines dropped by the rate limit.
    pub log_suppressed: u64,
}

impl ProcessStatus {
    fn new() -> Self {
        Self {
            state: ProcessState::Pending,
            ready: false,
            healthy: true,
            pid: None,
            restarts: 0,
            consecutive_failures: 0,
            backoff_ms: None,
            reason: None,
            since_ms: crate::telemetry::now_ms(),
            last_exit: None,
            limits: LimitsApplied::default(),
            log_suppressed: 0,
        }
    }
}

/// Status of every process of the current workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Bumped on every [`Handle::apply`].
    pub generation: u64,
    /// By process name.
    pub processes: BTreeMap<String, ProcessStatus>,
}

impl Snapshot {
    /// Every process is ready (or exited cleanly), none failed.
    pub fn all_ready(&self) -> bool {
        self.processes.values().all(|p| {
            p.ready
                || (p.state == ProcessState::Exited
                    && p.last_exit.as_ref().is_some_and(ExitInfo::success))
        })
    }

    /// Names of processes in `failed`.
    pub fn failed(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|(_, p)| p.state == ProcessState::Failed)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Result of one provider check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The check passed.
    Pass,
    /// The check failed, with why (shown in status and events).
    Fail(String),
}

/// Evaluates check kinds the supervisor cannot evaluate itself (`ros2_topic_rate`,
/// `ros2_lifecycle`, `ros2_diagnostics`). The ROS 2 bridge implements it; the supervisor
/// applies `timeout` around the returned future, so it need not.
pub trait CheckProvider: Send + Sync {
    /// Runs one attempt of `check` for `process`.
    fn check(&self, process: &str, check: &CheckSpec) -> BoxFuture<'static, CheckOutcome>;
}

/// Default bound on one [`PreStop`] call: long enough for a ROS 2 node to deactivate and
/// clean up (milliseconds when healthy), short enough that a hung hook adds little to the
/// stop ladder that follows (SIGINT 5 s → SIGTERM 5 s by default).
pub const DEFAULT_PRE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Work to do right before the stop ladder of a process, e.g. driving its ROS 2 lifecycle
/// nodes deactivate → cleanup (as Nav2's lifecycle manager does before the processes get
/// SIGINT).
///
/// The supervisor calls it when it stops a live, running (not paused) process on purpose:
/// agent shutdown, a new workload, an operator stop/restart, a dependency restart. Not when
/// the process already exited, nor when it is being stopped for failing a readiness or
/// liveness check (a hung process cannot cooperate). Stops go in reverse dependency order
/// (dependants first), so hooks do too. The process is `stopping` meanwhile.
///
/// Bounded: the supervisor waits at most [`PreStop::timeout`] (or until the process exits),
/// then drops the future and runs the stop ladder regardless. A hook error is logged to the
/// process's log and the ladder proceeds.
pub trait PreStop: Send + Sync {
    /// The work for `process` (declared as `spec`); `None` when there is nothing to do.
    fn pre_stop(
        &self,
        process: &str,
        spec: &workload::ProcessSpec,
    ) -> Option<BoxFuture<'static, Result<(), String>>>;

    /// Longest the supervisor waits for one call.
    fn timeout(&self) -> Duration {
        DEFAULT_PRE_STOP_TIMEOUT
    }
}

/// Optional extensions of the supervisor (see [`start_with_hooks`]).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Evaluates the check kinds the supervisor cannot (ROS 2).
    pub checks: Option<Arc<dyn CheckProvider>>,
    /// Runs before the stop ladder.
    pub pre_stop: Option<Arc<dyn PreStop>>,
}

/// Commands from a [`Handle`] to the engine.
pub(crate) enum Command {
    Op {
        op: Op,
        name: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Apply {
        workload: Box<Workload>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Operator operations on one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Restart => "restart",
            Op::Pause => "pause",
            Op::Resume => "resume",
        }
    }
}

/// Cloneable handle to the running supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Snapshot>,
    logs: logs::Registry,
}

impl Handle {
    /// The current status of every process.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver that changes on every state transition.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    async fn op(&self, op: Op, name: &str) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op {
                op,
                name: name.to_owned(),
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Restarts a process (stop ladder, then start at once; clears `failed`). Returns when
    /// the new run is spawned (or waiting for its dependencies).
    ///
    /// # Errors
    /// [`Error::UnknownProcess`], [`Error::Closed`].
    pub async fn restart(&self, name: &str) -> Result<(), Error> {
        self.op(Op::Restart, name).await
    }

    /// Stops a process (stop ladder); it stays `stopped` until `start`/`restart`.
    /// Returns when its group is gone.
    ///
    /// # Errors
    /// [`Error::UnknownProcess`], [`Error::Closed`].
    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        self.op(Op::Stop, name).await
    }

    /// Starts a `stopped`, `exited` or `failed` process (a no-op when it runs).
    ///
    /// # Errors
    /// [`Error::UnknownProcess`], [`Error::Closed`].
    pub async fn start(&self, name: &str) -> Result<(), Error> {
        self.op(Op::Start, name).await
    }

    /// Freezes the process's whole tree (session, group, descendants) with SIGSTOP. Checks are suspended while paused.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless it is running; [`Error::UnknownProcess`].
    pub async fn pause(&self, name: &str) -> Result<(), Error> {
        self.op(Op::Pause, name).await
    }

    /// Resumes a paused process tree with SIGCONT.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless it is paused; [`Error::UnknownProcess`].
    pub async fn resume(&self, name: &str) -> Result<(), Error> {
        self.op(Op::Resume, name).await
    }

    /// The last `lines` output lines of a process (oldest first).
    ///
    /// # Errors
    /// [`Error::UnknownProcess`] when no process of that name ever ran.
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<LogLine>, Error> {
        self.logs
            .tail(name, lines)
            .ok_or_else(|| Error::UnknownProcess {
                name: name.to_owned(),
            })
    }

    /// New output lines of a process as they arrive. A follower more than
    /// [`FOLLOW_CAPACITY`] lines behind gets `RecvError::Lagged` and loses lines.
    ///
    /// # Errors
    /// [`Error::UnknownProcess`] when no process of that name ever ran.
    pub fn follow(&self, name: &str) -> Result<broadcast::Receiver<LogLine>, Error> {
        self.logs.follow(name).ok_or_else(|| Error::UnknownProcess {
            name: name.to_owned(),
        })
    }

    /// Replaces the workload: stops every current process in reverse dependency order,
    /// then starts the new workload (failed states are cleared). Returns once the new
    /// processes have been launched (not once they are ready; watch the snapshot for that).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn apply(&self, workload: Workload) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply {
                workload: Box::new(workload),
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Stops every process in reverse dependency order and ends the supervisor.
    ///
    /// # Errors
    /// [`Error::Closed`] when it had already ended.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Shutdown { reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}

/// Starts the supervisor: cleans up leftovers of a crashed agent, then runs the workload
/// from `cfg.workload` (if any, and if allowed). The engine runs on `svc.tracker` until
/// `svc.cancel` fires (then it stops every process in reverse dependency order) or
/// [`Handle::shutdown`] is called.
///
/// `provider` evaluates the ROS 2 check kinds; without one, those checks fail with
/// "built without the ros2 feature".
///
/// # Errors
/// [`Error::UnsignedRefused`] or [`Error::Workload`] for the workload from config.
pub async fn start(
    svc: &Services,
    cfg: &Config,
    provider: Option<Arc<dyn CheckProvider>>,
) -> Result<Handle, Error> {
    start_with_hooks(
        svc,
        cfg,
        Hooks {
            checks: provider,
            pre_stop: None,
        },
    )
    .await
}

/// [`start`] with every extension: the check provider and a [`PreStop`] hook.
///
/// # Errors
/// As [`start`].
pub async fn start_with_hooks(svc: &Services, cfg: &Config, hooks: Hooks) -> Result<Handle, Error> {
    let initial = match &cfg.workload {
        Some(path) if !cfg.allow_unsigned_workloads => {
            return Err(Error::UnsignedRefused { path: path.clone() })
        }
        Some(path) => {
            let p = path.clone();
            let w = tokio::task::spawn_blocking(move || Workload::from_file(&p))
                .await
                .map_err(|e| {
                    Error::Workload(workload::Error::Read {
                        path: path.clone(),
                        source: std::io::Error::other(e),
                    })
                })??;
            Some(w)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (snap_tx, snap_rx) = watch::channel(Snapshot::default());
    let logs = logs::Registry::new(cfg);
    engine::spawn(svc, cfg.clone(), hooks, rx, snap_tx, logs.clone(), initial);
    Ok(Handle {
        tx,
        snapshot: snap_rx,
        logs,
    })
}

/// Time from a `Duration` in whole milliseconds (saturating).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
