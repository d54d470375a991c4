//! Telemetry: records from every subsystem, a durable sled queue, and the MQTT uploader.
//!
//! This file holds the intake side every other subsystem uses: [`Sink`]. Producers call
//! [`Sink::emit`], which never blocks: when the intake channel is full the newest record is
//! dropped and counted (reported as `fleetlet_telemetry_intake_dropped_total`), so a
//! telemetry stall can never stall the supervisor or the MCU link.
//!
//! Behind it ([`start`]):
//! - a writer task drains the intake into the durable [`queue::Queue`] in batches and makes
//!   them durable per the flush policy (sled calls on the [`queue_io`] thread);
//! - the [`uploader`] publishes batches in priority order over the MQTT link and deletes
//!   records only after PUBACK;
//! - [`source`] samples agent metrics periodically, and drop reports are written as critical
//!   records on the `drops` stream;
//! - status and metrics are published under `telemetry` in the status registry.
//!
//! # Adding a stream
//! A stream is just a name: call `svc.telemetry.emit("ros/battery", Priority::Normal,
//! json!({...}))` from anywhere. Sequence numbers, durability, batching, upload and drop
//! accounting come for free. Optionally give it a priority override or a maximum age in
//! `[telemetry.streams."ros/battery"]`.

pub mod queue;
pub mod queue_io;
pub mod record;
pub mod source;
pub mod uploader;
mod writer;

pub use writer::{start, Config, Error, FlushPolicy, Handle, Inputs, StreamConfig};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Default intake channel depth: a few seconds of bursty events at agent scale.
pub const DEFAULT_INTAKE_CAPACITY: usize = 4096;

/// Delivery priority of a stream. Higher priorities are uploaded first and evicted last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Safety and audit events (e-stop, faults, drops). Evicted last.
    Critical,
    /// Metrics and state changes.
    Normal,
    /// Bulk data (bridged topics, logs). Evicted first.
    Bulk,
}

/// One record as produced, before it gets its sequence number in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stream name (`events`, `metrics`, `mcu`, `ros/fused_pose`, ...).
    pub stream: String,
    /// Priority of the stream.
    pub priority: Priority,
    /// Wall-clock time of the producer, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The record body.
    pub payload: serde_json::Value,
}

/// Cloneable, non-blocking producer handle.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Record>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Creates a sink and the receiver the queue writer drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues one record. Never blocks; when the intake is full (or closed) the record is
    /// dropped and counted.
    pub fn emit(&self, stream: &str, priority: Priority, payload: serde_json::Value) {
        let record = Record {
            stream: stream.to_owned(),
            priority,
            ts_ms: now_ms(),
            payload,
        };
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Emits an agent event (`stream = "events"`) of the given kind.
    pub fn event(&self, priority: Priority, kind: &str, mut detail: serde_json::Value) {
        if let serde_json::Value::Object(map) = &mut detail {
            map.insert("kind".into(), kind.into());
        } else {
            detail = serde_json::json!({ "kind": kind, "detail": detail });
        }
        self.emit("events", priority, detail);
    }

    /// Records dropped at intake because the channel was full.
    pub fn intake_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emit_drops_newest_and_counts_when_full() {
        let (sink, mut rx) = Sink::channel(2);
        sink.emit("a", Priority::Normal, 1.into());
        sink.emit("a", Priority::Normal, 2.into());
        sink.emit("a", Priority::Normal, 3.into());
        assert_eq!(sink.intake_dropped(), 1);
        assert_eq!(rx.recv().await.map(|r| r.payload), Some(1.into()));
        assert_eq!(rx.recv().await.map(|r| r.payload), Some(2.into()));
    }

    #[tokio::test]
    async fn event_carries_its_kind() {
        let (sink, mut rx) = Sink::channel(4);
        sink.event(
            Priority::Critical,
            "estop",
            serde_json::json!({"source": "mcu"}),
        );
        let r = rx.recv().await.unwrap();
        assert_eq!(r.stream, "events");
        assert_eq!(r.payload["kind"], "estop");
        assert_eq!(r.priority, Priority::Critical);
    }
}
