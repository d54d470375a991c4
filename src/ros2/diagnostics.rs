//! `/diagnostics` aggregation.
//!
//! Every `diagnostic_msgs/DiagnosticArray` on the topic updates the latest status per
//! `(name, hardware_id)`. A level change (and a first status that is not OK) becomes an
//! event on the `events` telemetry stream (`kind = "ros2.diagnostics"`; critical priority for
//! ERROR/STALE). [`Diagnostics::check`] backs the manifest's `ros2_diagnostics` check, which
//! is how an ERROR or STALE status counts against a process's health.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spin::{Ros2, TapOptions, LOSSLESS_DEPTH, MAX_SPIN_INTERVAL};
use super::Error;
use crate::telemetry::{Priority, Sink};

/// Level of a `diagnostic_msgs/DiagnosticStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// OK (0).
    Ok,
    /// WARN (1).
    Warn,
    /// ERROR (2).
    Error,
    /// STALE (3).
    Stale,
}

impl Level {
    /// From the message byte (unknown values count as ERROR).
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Ok,
            1 => Self::Warn,
            3 => Self::Stale,
            _ => Self::Error,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    level: Level,
    message: String,
    seen: Instant,
}

/// Latest diagnostics, keyed by (name, hardware_id). Cheap to clone.
#[derive(Clone, Default)]
pub struct Diagnostics {
    latest: Arc<Mutex<BTreeMap<(String, String), Entry>>>,
}

impl std::fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diagnostics").finish_non_exhaustive()
    }
}

impl Diagnostics {
    /// Subscribes to `topic` and aggregates until `cancel`.
    ///
    /// # Errors
    /// [`Error::Rcl`] when the subscription cannot be created.
    pub async fn start(
        ros: &Ros2,
        topic: &str,
        sink: Sink,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, Error> {
        use r2r::WrappedTypesupport;
        type Array = r2r::diagnostic_msgs::msg::DiagnosticArray;
        // A raw tap (drained on the spin thread, every message kept across a paced spin
        // interval), decoded here.
        let mut rx = ros
            .tap_raw(
                topic,
                "diagnostic_msgs/msg/DiagnosticArray",
                TapOptions {
                    qos: r2r::QosProfile::default().keep_last(LOSSLESS_DEPTH),
                    depth: LOSSLESS_DEPTH,
                    // Nodes publish diagnostics at about 1 Hz: LOSSLESS_DEPTH per longest
                    // interval is plenty.
                    pace: MAX_SPIN_INTERVAL,
                },
                Box::new(|_| true),
                Arc::default(),
            )
            .await?;
        let me = Self::default();
        let agg = me.clone();
        let topic = topic.to_owned();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    msg = rx.recv() => match msg {
                        Some(bytes) => match Array::from_serialized_bytes(&bytes) {
                            Ok(arr) => agg.ingest(&arr, &sink),
                            Err(e) => tracing::debug!(topic = %topic, error = %e, "undecodable diagnostics message"),
                        },
                        None => break,
                    }
                }
            }
        });
        Ok(me)
    }

    /// Folds one array into the aggregate, emitting an event per level change.
    pub fn ingest(&self, arr: &r2r::diagnostic_msgs::msg::DiagnosticArray, sink: &Sink) {
        let Ok(mut latest) = self.latest.lock() else {
            return;
        };
        let now = Instant::now();
        for st in &arr.status {
            let level = Level::from_byte(st.level);
            let key = (st.name.clone(), st.hardware_id.clone());
            let previous = latest.get(&key).map(|e| e.level);
            let changed = match previous {
                Some(p) => p != level,
                None => level != Level::Ok,
            };
            if changed {
                let priority = if level >= Level::Error {
                    Priority::Critical
                } else {
                    Priority::Normal
                };
                sink.event(
                    priority,
                    "ros2.diagnostics",
                    json!({
                        "name": st.name,
                        "hardware_id": st.hardware_id,
                        "level": level.as_str(),
                        "previous": previous.map(Level::as_str),
                        "message": st.message,
                    }),
                );
            }
            latest.insert(
                key,
                Entry {
                    level,
                    message: st.message.clone(),
                    seen: now,
                },
            );
        }
    }

    /// Passes when the newest status named `name` (and `hardware_id`, if given) is at most
    /// `max_level` and younger than `stale_after`.
    ///
    /// # Errors
    /// Why not: never seen, stale, or the level and message.
    pub fn check(
        &self,
        name: &str,
        hardware_id: Option<&str>,
        max_level: Level,
        stale_after: Duration,
    ) -> Result<String, String> {
        let latest = self
            .latest
            .lock()
            .map_err(|_| "diagnostics aggregate poisoned".to_owned())?;
        let newest = latest
            .iter()
            .filter(|((n, hw), _)| n == name && hardware_id.map_or(true, |h| h == hw))
            .max_by_key(|(_, e)| e.seen);
        let Some(((_, hw), e)) = newest else {
            return Err(format!("no diagnostics status named {name:?} yet"));
        };
        let age = e.seen.elapsed();
        if age > stale_after {
            return Err(format!(
                "diagnostics {name:?} ({hw}) is stale: last status {:.1}s ago",
                age.as_secs_f64()
            ));
        }
        if e.level > max_level {
            return Err(format!(
                "diagnostics {name:?} ({hw}) is {}: {}",
                e.level.as_str(),
                e.message
            ));
        }
        Ok(format!("diagnostics {name:?} is {}", e.level.as_str()))
    }

    /// Snapshot for `/v1/status`: `{name: {hardware_id, level, message, age_s}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let Ok(latest) = self.latest.lock() else {
            return serde_json::Value::Null;
        };
        let mut m = serde_json::Map::new();
        for ((n, hw), e) in latest.iter() {
            m.insert(
                n.clone(),
                json!({"hardware_id": hw, "level": e.level.as_str(), "message": e.message, "age_s": e.seen.elapsed().as_secs_f64()}),
            );
        }
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus};

    fn arr(level: u8, msg: &str) -> DiagnosticArray {
        DiagnosticArray {
            status: vec![DiagnosticStatus {
                level,
                name: "nav: planner".into(),
                message: msg.into(),
                hardware_id: "cpu0".into(),
                ..DiagnosticStatus::default()
            }],
            ..DiagnosticArray::default()
        }
    }

    #[test]
    fn level_changes_become_events_and_fail_the_check() {
        let (sink, mut rx) = Sink::channel(16);
        let d = Diagnostics::default();
        d.ingest(&arr(0, "fine"), &sink);
        assert!(rx.try_recv().is_err(), "a first OK status is not an event");
        assert!(d
            .check("nav: planner", None, Level::Warn, Duration::from_secs(5))
            .is_ok());
        d.ingest(&arr(0, "fine"), &sink);
        assert!(rx.try_recv().is_err(), "unchanged level is not an event");
        d.ingest(&arr(2, "no path"), &sink);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.stream, "events");
        assert_eq!(ev.priority, Priority::Critical);
        assert_eq!(ev.payload["kind"], "ros2.diagnostics");
        assert_eq!(ev.payload["level"], "error");
        assert_eq!(ev.payload["previous"], "ok");
        let err = d
            .check(
                "nav: planner",
                Some("cpu0"),
                Level::Warn,
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(err.contains("error: no path"), "{err}");
        assert!(d
            .check(
                "nav: planner",
                Some("gpu"),
                Level::Warn,
                Duration::from_secs(5)
            )
            .is_err());
        assert!(d
            .check("nav: planner", None, Level::Error, Duration::from_secs(5))
            .is_ok());
        let err = d
            .check("nav: planner", None, Level::Error, Duration::ZERO)
            .unwrap_err();
        assert!(err.contains("stale"), "{err}");
    }
}
