//! The agent's runtime: builds every subsystem, owns the cancellation token and the task
//! tracker, and shuts down in order (stop intake, flush telemetry, stop children, exit).
//!
//! Invariants:
//! - Exactly one agent runs per data directory (the `DataDir` lock is held until `run`
//!   returns or the process dies).
//! - Every task is spawned on `Services::tracker` with a child of `Services::cancel`;
//!   shutdown waits for all of them up to `agent.shutdown_timeout`.
//! - READY is signalled to systemd only after every subsystem has started.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::datadir::{self, DataDir};
pub use crate::liveness::Liveness;
use crate::status::{Registry, SubsystemState};
use crate::telemetry::{Priority, Sink};

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
    /// Operations served on the control socket; subsystems register theirs
    /// (`process.restart`, `mcu.arm`, ...).
    pub ops: crate::control::Ops,
}

/// Why the agent stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Data directory problems (including another agent holding the lock).
    #[error(transparent)]
    DataDir(#[from] datadir::Error),
    /// The local API could not start.
    #[error(transparent)]
    Api(#[from] crate::api::Error),
    /// The supervisor refused its configuration.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::Error),
    /// The MCU link refused its configuration.
    #[error(transparent)]
    Serial(#[from] crate::serial::Error),
    /// The GPIO backend could not be opened.
    #[error(transparent)]
    Hal(#[from] crate::hal::Error),
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// Shutdown took longer than `agent.shutdown_timeout`.
    #[error("shutdown did not finish within {0:?}; tasks still running were abandoned")]
    ShutdownTimeout(std::time::Duration),
    /// Telemetry could not start (queue unreadable).
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::Error),
    // ---- ros2 ----
    /// The ROS 2 node could not start, or the workload asks for another ROS graph.
    #[cfg(feature = "ros2")]
    #[error(transparent)]
    Ros2(#[from] crate::ros2::Error),
    /// The workload manifest could not be read for the ROS 2 bridge.
    #[cfg(feature = "ros2")]
    #[error(transparent)]
    Ros2Workload(#[from] crate::workload::Error),
    // ---- end ros2 ----
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A random 128-bit id in hex.
pub fn new_boot_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Runs the agent until SIGINT/SIGTERM, then shuts down in order.
///
/// # Errors
/// Any [`Error`]; the caller prints it as one line and exits non-zero.
pub async fn run(config: Config) -> Result<(), Error> {
    let started = Instant::now();
    let config = Arc::new(config);
    let data = DataDir::new(&config.agent.data_dir);
    data.create()?;
    let lock = data.lock()?;

    let (cache, flush_ms) = (
        config.agent.db_cache_bytes.get(),
        config.agent.db_flush_every.as_millis() as u64,
    );
    let db_data = data.clone();
    let (db, quarantine) =
        tokio::task::spawn_blocking(move || db_data.open_db(cache, Some(flush_ms.max(1))))
            .await??;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let status = Registry::new();
    let (telemetry, intake) = Sink::channel(crate::telemetry::DEFAULT_INTAKE_CAPACITY);
    let liveness = Liveness::new();
    liveness.tick();
    tracker.spawn(liveness.clone().run(cancel.child_token()));
    let svc = Services {
        config: config.clone(),
        data,
        db,
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        status: status.clone(),
        telemetry: telemetry.clone(),
        boot_id: new_boot_id(),
        liveness: liveness.clone(),
        ops: crate::control::Ops::default(),
    };

    let agent = status.register("agent");
    agent.set_detail(json!({ "data_dir": svc.data.root(), "pid": std::process::id() }));
    if let Some(q) = &quarantine {
        tracing::error!(moved_to = %q.moved_to.display(), reason = %q.reason, "database could not be opened; quarantined it and started a new one");
        telemetry.event(
            Priority::Critical,
            "db_quarantined",
            json!({ "moved_to": q.moved_to, "reason": q.reason }),
        );
    }

    // ---- ros2 ----
    // The ROS 2 node starts before the supervisor: its environment (domain id, RMW,
    // discovery) is applied to the agent's process, so every child inherits the same graph;
    // its check provider evaluates the workload's ros2_* checks; the workload's [[forward]]
    // topics are bridged and a workload asking for another graph is refused; its lifecycle
    // teardown runs before the supervisor stops a managed node.
    #[cfg(feature = "ros2")]
    let hooks = if config.ros2.enabled {
        let mut ros2 = crate::ros2::start(&svc, &config.ros2).await?;
        if let Some(path) = config.supervisor.workload.clone() {
            let w =
                tokio::task::spawn_blocking(move || crate::workload::Workload::from_file(&path))
                    .await
                    .map_err(|_| crate::ros2::Error::NotRunning)??;
            ros2.accept_workload(&svc, &w).await?;
        }
        ros2.supervisor_hooks()
    } else {
        crate::supervisor::Hooks::default()
    };
    #[cfg(not(feature = "ros2"))]
    let hooks = crate::supervisor::Hooks::default();
    // ---- end ros2 ----
    let supervisor = crate::supervisor::start_with_hooks(&svc, &config.supervisor, hooks).await?;
    register_process_ops(&svc.ops, &supervisor);

    // Local API.
    if config.api.enabled {
        let api_status = status.register("api");
        let state = crate::api::State {
            status: status.clone(),
            liveness: liveness.clone(),
            started,
            device_id: config.device.id.clone(),
            boot_id: svc.boot_id.clone(),
            extra: Some(crate::api::logs::router(supervisor.clone())),
        };
        let (bound, serving) =
            crate::api::serve(config.api.listen, state, cancel.child_token()).await?;
        tracker.spawn(serving);
        api_status.set_detail(json!({ "listen": bound.to_string() }));
        api_status.set_state(SubsystemState::Running);
        tracing::info!(listen = %bound, "local API listening");
    }

    // ---- telemetry ----
    let (link, downlink) = if config.mqtt.enabled {
        match crate::mqtt::start(&svc, &config.mqtt) {
            Ok((h, rx)) => (Some(h), Some(rx)),
            Err(e) => {
                tracing::error!(error = %e, "mqtt link not started; telemetry keeps buffering");
                telemetry.event(
                    Priority::Critical,
                    "mqtt_start_failed",
                    json!({ "error": e.to_string() }),
                );
                (None, None)
            }
        }
    } else {
        svc.status
            .register("mqtt")
            .set_state(SubsystemState::Disabled);
        (None, None)
    };
    // The update engine / command handler take `downlink` over once they exist.
    let _downlink = downlink;
    let _telemetry = crate::telemetry::start(
        &svc,
        &config.telemetry,
        crate::telemetry::Inputs {
            intake,
            link,
            quarantine: quarantine.clone(),
        },
    )
    .await?;
    // ---- end telemetry ----

    // Safety MCU link and board GPIO, with one e-stop policy engine for both sources.
    let workload: Arc<dyn crate::serial::Workload> =
        Arc::new(SupervisedWorkload(supervisor.clone()));
    let estop = crate::estop::spawn(
        config.serial.estop.clone(),
        workload.clone(),
        telemetry.clone(),
        &tracker,
        cancel.child_token(),
    );
    let _hal = crate::hal::start(&svc, &config.hal, estop.clone()).await?;
    let _mcu = crate::serial::start(&svc, &config.serial, workload, estop).await?;

    // Control socket: the only local way to change state.
    let serving = crate::control::bind(
        &svc.data.socket(),
        svc.ops.clone(),
        tracker.clone(),
        cancel.child_token(),
    )?;
    tracker.spawn(serving);

    agent.set_state(SubsystemState::Running);
    telemetry.event(Priority::Normal, "agent_started", json!({ "version": env!("CARGO_PKG_VERSION"), "boot_id": svc.boot_id, "pid": std::process::id() }));
    tracing::info!(device = %config.device.id, boot_id = %svc.boot_id, startup_ms = started.elapsed().as_millis() as u64, "fleetlet running");

    let notifier = crate::systemd::Notifier::from_env();
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    if let Some(n) = &notifier {
        n.notify("READY=1\nSTATUS=running");
    }
    if let (Some(interval), Some(n)) = (
        crate::systemd::watchdog_interval(),
        crate::systemd::Notifier::from_env(),
    ) {
        if let Err(e) =
            crate::systemd::spawn_watchdog(n, interval, liveness.clone(), watchdog_stop.clone())
        {
            tracing::warn!(error = %e, "cannot start the systemd watchdog thread");
        }
    }

    wait_for_signal().await?;
    tracing::info!("shutdown requested");
    if let Some(n) = &notifier {
        n.notify("STOPPING=1");
    }
    agent.set_state(SubsystemState::Stopped);
    telemetry.event(
        Priority::Normal,
        "agent_stopping",
        json!({ "uptime_s": started.elapsed().as_secs() }),
    );

    // Ordered shutdown: children first (their exit events still reach the queue), then
    // everything else.
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!(error = %e, "supervisor shutdown");
    }
    cancel.cancel();
    tracker.close();
    let deadline = config.agent.shutdown_timeout;
    let finished = tokio::time::timeout(deadline, tracker.wait()).await.is_ok();
    watchdog_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let db = svc.db.clone();
    drop(svc);
    tokio::task::spawn_blocking(move || db.flush())
        .await?
        .map_err(|e| datadir::Error::Db {
            path: config.agent.data_dir.join("db"),
            source: e,
        })?;
    drop(lock);
    if finished {
        tracing::info!("fleetlet stopped");
        Ok(())
    } else {
        Err(Error::ShutdownTimeout(deadline))
    }
}

/// The MCU link's view of the workload: health and readiness from the supervisor's
/// snapshot, e-stop actions through its handle.
struct SupervisedWorkload(crate::supervisor::Handle);

impl SupervisedWorkload {
    fn all(
        &self,
        names: &[String],
        ok: impl Fn(&crate::supervisor::ProcessStatus) -> bool,
    ) -> bool {
        let snap = self.0.snapshot();
        names.iter().all(|n| snap.processes.get(n).is_some_and(&ok))
    }

    fn act(&self, name: &str, op: &'static str) -> crate::serial::ActionFuture {
        let sup = self.0.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let r = match op {
                "pause" => sup.pause(&name).await,
                "resume" => sup.resume(&name).await,
                "stop" => sup.stop(&name).await,
                _ => sup.start(&name).await,
            };
            r.map_err(|e| e.to_string())
        })
    }
}

impl crate::serial::Workload for SupervisedWorkload {
    fn motion_ok(&self, names: &[String]) -> bool {
        use crate::supervisor::ProcessState::{Ready, Running, Starting};
        self.all(names, |p| {
            p.healthy && matches!(p.state, Starting | Running | Ready)
        })
    }
    fn motion_ready(&self, names: &[String]) -> bool {
        self.all(names, |p| p.ready && p.healthy)
    }
    fn pause(&self, name: &str) -> crate::serial::ActionFuture {
        self.act(name, "pause")
    }
    fn resume(&self, name: &str) -> crate::serial::ActionFuture {
        self.act(name, "resume")
    }
    fn stop(&self, name: &str) -> crate::serial::ActionFuture {
        self.act(name, "stop")
    }
    fn start(&self, name: &str) -> crate::serial::ActionFuture {
        self.act(name, "start")
    }
}

/// Operator actions on processes, served on the control socket.
fn register_process_ops(ops: &crate::control::Ops, sup: &crate::supervisor::Handle) {
    fn name_of(args: &serde_json::Value) -> Result<String, String> {
        args.get("name")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "missing argument `name` (the process name)".to_owned())
    }
    macro_rules! op {
        ($op:literal, $method:ident) => {{
            let sup = sup.clone();
            ops.register($op, move |args| {
                let sup = sup.clone();
                async move {
                    let name = name_of(&args)?;
                    sup.$method(&name).await.map_err(|e| e.to_string())?;
                    Ok(json!({ "process": name, "done": $op }))
                }
            });
        }};
    }
    op!("process.restart", restart);
    op!("process.stop", stop);
    op!("process.start", start);
    op!("process.pause", pause);
    op!("process.resume", resume);
    let sup = sup.clone();
    ops.register("process.list", move |_| {
        let snap = sup.snapshot();
        async move { serde_json::to_value(&snap).map_err(|e| e.to_string()) }
    });
}

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
