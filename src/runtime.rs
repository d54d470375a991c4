//! The agent's runtime: builds every subsystem, owns the cancellation token and the task
//! tracker, and shuts down in order (stop intake, flush telemetry, stop children, exit).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::datadir::DataDir;
use crate::status::Registry;
use crate::telemetry::Sink;
pub use crate::liveness::Liveness;

/// What every subsystem gets when it starts. Subsystems spawn their tasks on `tracker`
/// with `cancel.child_token()`, report on `status`, and emit records into `telemetry`.
#[derive(Clone)]
pub struct Services {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Paths of the data directory.
    pub data: DataDir,
    /// The agent's sled database; subsystems use their own trees.
    pub db: sled::Db,
    /// Cancelled when the agent shuts down.
    pub cancel: CancellationToken,
    /// Tracks every spawned task.
    pub tracker: TaskTracker,
    /// Subsystem status registry.
    pub status: Registry,
    /// Telemetry intake.
    pub telemetry: Sink,
    /// Random id of this agent start (telemetry dedup key, `status` online message).
    pub boot_id: String,
    /// Event-loop liveness: `liveness.is_live()` is false when the tokio runtime stalls.
    pub liveness: Liveness,
}
