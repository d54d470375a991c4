//! Subsystem status registry: how every subsystem tells the local API (and the systemd
//! watchdog) what state it is in, with a JSON detail for `/v1/status` and metrics for
//! `/metrics`.
//!
//! Invariants:
//! - A subsystem registers once under a unique `&'static str` name; reporting never blocks
//!   (a `watch` channel per subsystem, the last value wins).
//! - `/readyz` is 200 only when every registered subsystem is `Running` (or `Disabled`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

/// The coarse state of one subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsystemState {
    /// Registered, not yet up.
    Starting,
    /// Up and doing its job.
    Running,
    /// Up, but impaired (for example: MQTT link down, telemetry buffering).
    Degraded,
    /// Turned off by configuration.
    Disabled,
    /// Shut down on purpose.
    Stopped,
    /// Gave up after an error.
    Failed,
}

impl SubsystemState {
    /// Whether this state counts as "started" for `/readyz`.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Running | Self::Degraded | Self::Disabled)
    }

    /// The value exported as the `fleetlet_subsystem_state` gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Starting => 0.0,
            Self::Running => 1.0,
            Self::Degraded => 2.0,
            Self::Disabled => 3.0,
            Self::Stopped => 4.0,
            Self::Failed => 5.0,
        }
    }
}

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

/// One sample for `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// Full metric name, `fleetlet_` prefixed.
    pub name: String,
    /// `# HELP` text.
    pub help: String,
    /// `# TYPE`.
    pub kind: MetricKind,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Sample value.
    pub value: f64,
}

impl Metric {
    /// A gauge without labels.
    pub fn gauge(name: impl Into<String>, help: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: MetricKind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    /// A counter without labels.
    pub fn counter(name: impl Into<String>, help: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: MetricKind::Counter,
            labels: Vec::new(),
            value,
        }
    }

    /// Adds one label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
}

/// What one subsystem last reported.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Coarse state.
    pub state: SubsystemState,
    /// Subsystem-specific JSON for `/v1/status`.
    pub detail: serde_json::Value,
    /// Samples for `/metrics`.
    #[serde(skip)]
    pub metrics: Vec<Metric>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            state: SubsystemState::Starting,
            detail: serde_json::Value::Null,
            metrics: Vec::new(),
        }
    }
}

/// Shared registry of all subsystems. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<&'static str, watch::Receiver<Report>>>>,
}

impl Registry {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a subsystem and returns its reporter. Registering the same name again
    /// replaces the earlier entry (used when a subsystem restarts).
    pub fn register(&self, name: &'static str) -> Reporter {
        let (tx, rx) = watch::channel(Report::default());
        self.lock().insert(name, rx);
        Reporter { tx: Arc::new(tx) }
    }

    /// A snapshot of every subsystem's last report, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Report> {
        self.lock()
            .iter()
            .map(|(k, rx)| (*k, rx.borrow().clone()))
            .collect()
    }

    /// True when every registered subsystem is started.
    pub fn all_ready(&self) -> bool {
        self.lock().values().all(|rx| rx.borrow().state.is_ready())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, watch::Receiver<Report>>> {
        // A poisoned lock only means a panic elsewhere while inserting; the map is still valid.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A subsystem's handle for reporting its state. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Reporter {
    tx: Arc<watch::Sender<Report>>,
}

impl Reporter {
    /// Sets the coarse state.
    pub fn set_state(&self, state: SubsystemState) {
        self.tx.send_modify(|r| r.state = state);
    }

    /// Replaces the JSON detail shown in `/v1/status`.
    pub fn set_detail(&self, detail: serde_json::Value) {
        self.tx.send_modify(|r| r.detail = detail);
    }

    /// Replaces the metric samples shown in `/metrics`.
    pub fn set_metrics(&self, metrics: Vec<Metric>) {
        self.tx.send_modify(|r| r.metrics = metrics);
    }

    /// The current state.
    pub fn state(&self) -> SubsystemState {
        self.tx.borrow().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_requires_every_subsystem_started() {
        let reg = Registry::new();
        let a = reg.register("a");
        let b = reg.register("b");
        assert!(!reg.all_ready());
        a.set_state(SubsystemState::Running);
        assert!(!reg.all_ready());
        b.set_state(SubsystemState::Disabled);
        assert!(reg.all_ready());
        b.set_state(SubsystemState::Failed);
        assert!(!reg.all_ready());
    }
}
