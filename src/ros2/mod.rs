//! ROS 2 integration (feature `ros2`, through r2r).
//!
//! - [`env`]: one source of truth for the ROS 2 environment (domain id, RMW, discovery range,
//!   static peers) shared by the agent's own context and every child it starts.
//! - [`spin`]: the r2r node, owned by one dedicated thread that spins it (never a tokio
//!   worker) and runs jobs sent from async code over a bounded channel.
//! - [`bridge`]: topics forwarded as telemetry records (throttled, optional field selection).
//! - [`checks`]: topic-rate, lifecycle-state and diagnostics checks for the supervisor.
//! - [`lifecycle`]: managed-node bring-up (configure → activate in dependency order) and
//!   teardown in reverse.
//! - [`diagnostics`]: `/diagnostics` aggregation; level changes become events.
//! - [`provider`]: the supervisor's check provider (and lifecycle autostart).
//! - [`status`]: the agent's own state published on `/fleetlet/status`.

pub mod bridge;
pub mod checks;
pub mod config;
pub mod diagnostics;
pub mod env;
pub mod lifecycle;
pub mod provider;
pub mod spin;
pub mod status;

pub use config::Config;
pub use env::Ros2Env;
pub use spin::Ros2;

use std::sync::{Arc, Mutex};

/// Errors of the ROS 2 subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ROS 2 environment is invalid or conflicts with a workload.
    #[error(transparent)]
    Env(#[from] env::EnvError),
    /// r2r/rcl refused an operation.
    #[error("ros2: {what}: {source}")]
    Rcl {
        /// What the agent was doing (`create node fleetlet`, `subscribe /odom`, ...).
        what: String,
        /// The r2r error.
        source: r2r::Error,
    },
    /// The message type has no type support in this build.
    #[error("ros2: message type {msg_type:?} (topic {topic}) is not available in this build: {reason}; add its package to IDL_PACKAGE_FILTER (scripts/ros2-env.sh) and rebuild")]
    UnknownType {
        /// Topic.
        topic: String,
        /// The requested type.
        msg_type: String,
        /// r2r's reason.
        reason: String,
    },
    /// The spin thread is gone (agent shutting down, or it panicked).
    #[error("ros2: the spin thread is not running")]
    NotRunning,
    /// The spin thread could not be started.
    #[error("ros2: cannot start the spin thread: {0}")]
    Thread(std::io::Error),
    /// A lifecycle transition or query failed.
    #[error("ros2: lifecycle node {node}: {message}")]
    Lifecycle {
        /// Node name.
        node: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn rcl(what: impl Into<String>, source: r2r::Error) -> Self {
        Self::Rcl {
            what: what.into(),
            source,
        }
    }
}

/// The running ROS 2 subsystem.
#[derive(Debug, Clone)]
pub struct Handle {
    /// The node.
    pub ros: Ros2,
    /// Check evaluation for the supervisor's provider.
    pub checker: checks::Checker,
    /// Lifecycle bring-up/teardown.
    pub lifecycle: lifecycle::Lifecycle,
    /// Bridged topics with their counters, the workload's included (shared with the status
    /// reporter; see [`Handle::bridged`]).
    bridged: Arc<Mutex<Vec<bridge::Bridged>>>,
    /// Drive unconfigured lifecycle nodes to active in `ros2_lifecycle` checks.
    pub lifecycle_autostart: bool,
    /// Lifecycle teardown before stop (None: disabled).
    pub teardown: Option<lifecycle::Teardown>,
}

impl Handle {
    /// The check provider to pass to [`crate::supervisor::start`].
    pub fn provider(&self) -> std::sync::Arc<dyn crate::supervisor::CheckProvider> {
        provider::Provider::new(self.checker.clone(), self.lifecycle_autostart).shared()
    }

    /// Everything the supervisor takes from ROS 2 ([`crate::supervisor::start_with_hooks`]):
    /// the check provider and the lifecycle teardown before stop.
    pub fn supervisor_hooks(&self) -> crate::supervisor::Hooks {
        crate::supervisor::Hooks {
            checks: Some(self.provider()),
            pre_stop: self
                .teardown
                .clone()
                .map(|t| std::sync::Arc::new(t) as std::sync::Arc<dyn crate::supervisor::PreStop>),
        }
    }

    /// Checks a workload before it is applied: its `[ros2]` section must agree with the
    /// agent's graph, and it gets its `[[forward]]` entries bridged.
    ///
    /// # Errors
    /// [`Error::Env`] on a conflicting domain/RMW, or any bridge error.
    pub async fn accept_workload(
        &mut self,
        svc: &crate::runtime::Services,
        w: &crate::workload::Workload,
    ) -> Result<(), Error> {
        self.ros
            .env()
            .check_workload(w.ros2.domain_id, w.ros2.rmw_implementation.as_deref())?;
        self.forward(svc, &w.forward).await
    }

    /// The variables every child process must get (same graph as the agent).
    pub fn child_env(&self) -> std::collections::BTreeMap<String, String> {
        self.ros.env().child_vars()
    }

    /// Starts forwarding more topics (e.g. a newly installed workload's `[[forward]]`).
    ///
    /// # Errors
    /// As [`bridge::start`].
    pub async fn forward(
        &mut self,
        svc: &crate::runtime::Services,
        forwards: &[bridge::Forward],
    ) -> Result<(), Error> {
        let more = bridge::start(
            &self.ros,
            forwards,
            svc.telemetry.clone(),
            svc.cancel.child_token(),
            &svc.tracker,
        )
        .await?;
        if let Ok(mut b) = self.bridged.lock() {
            b.extend(more);
        }
        Ok(())
    }

    /// Bridged topics with their counters, the workload's included.
    pub fn bridged(&self) -> Vec<bridge::Bridged> {
        self.bridged.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Starts the ROS 2 subsystem: resolves the environment, creates the node on its spin
/// thread, and starts diagnostics aggregation, the status publisher and the configured
/// bridge entries. The node is shut down (spin thread joined) when `svc.cancel` fires.
///
/// # Errors
/// An invalid environment, or any r2r failure while setting up.
pub async fn start(svc: &crate::runtime::Services, cfg: &Config) -> Result<Handle, Error> {
    let env = cfg.resolve_env()?;
    let name = cfg.node_name.clone();
    let timeout = cfg.spin_timeout;
    let pace = cfg.min_spin_interval;
    let reporter = svc.status.register("ros2");
    let ros = tokio::task::spawn_blocking(move || Ros2::start(&name, env, timeout, pace))
        .await
        .map_err(|_| Error::NotRunning)??;
    let cancel = svc.cancel.child_token();
    let diagnostics = if cfg.diagnostics_topic.is_empty() {
        None
    } else {
        Some(
            diagnostics::Diagnostics::start(
                &ros,
                &cfg.diagnostics_topic,
                svc.telemetry.clone(),
                cancel.clone(),
                &svc.tracker,
            )
            .await?,
        )
    };
    if !cfg.status_topic.is_empty() {
        status::start(
            &ros,
            &cfg.status_topic,
            cfg.status_interval,
            svc.status.clone(),
            cancel.clone(),
            &svc.tracker,
        )
        .await?;
    }
    let bridged = bridge::start(
        &ros,
        &cfg.forward,
        svc.telemetry.clone(),
        cancel.clone(),
        &svc.tracker,
    )
    .await?;
    let lifecycle = lifecycle::Lifecycle::new(ros.clone());
    let checker = checks::Checker {
        rates: checks::TopicRates::new(ros.clone(), cancel.clone(), svc.tracker.clone()),
        lifecycle: lifecycle.clone(),
        diagnostics: diagnostics.clone(),
    };
    reporter.set_state(crate::status::SubsystemState::Running);
    reporter.set_detail(serde_json::json!({"node": ros.node_name(), "env": ros.env(), "forwarded_topics": bridged.len()}));
    let r = ros.clone();
    let bridged = Arc::new(Mutex::new(bridged));
    let b = bridged.clone();
    svc.tracker.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let bridged = b.lock().map(|v| v.clone()).unwrap_or_default();
                    let topics: Vec<serde_json::Value> = bridged.iter().map(|x| serde_json::json!({
                        "topic": x.forward.topic,
                        "received": x.counters.received.load(std::sync::atomic::Ordering::Relaxed),
                        "forwarded": x.counters.forwarded.load(std::sync::atomic::Ordering::Relaxed),
                        "throttled": x.counters.throttled.load(std::sync::atomic::Ordering::Relaxed),
                        "decode_errors": x.counters.decode_errors.load(std::sync::atomic::Ordering::Relaxed),
                        "overflow": x.counters.overflow.load(std::sync::atomic::Ordering::Relaxed),
                    })).collect();
                    reporter.set_detail(serde_json::json!({
                        "node": r.node_name(), "env": r.env(), "bridge": topics,
                        "diagnostics": diagnostics.as_ref().map(diagnostics::Diagnostics::snapshot),
                    }));
                    if !r.is_running() { reporter.set_state(crate::status::SubsystemState::Failed); }
                }
            }
        }
        r.shutdown_async().await;
        reporter.set_state(crate::status::SubsystemState::Stopped);
    });
    let teardown = cfg
        .lifecycle_teardown
        .then(|| lifecycle::Teardown::new(lifecycle.clone(), cfg.lifecycle_teardown_timeout));
    Ok(Handle {
        ros,
        checker,
        lifecycle,
        bridged,
        lifecycle_autostart: cfg.lifecycle_autostart,
        teardown,
    })
}
