//! The agent's own state on ROS 2: `std_msgs/String` carrying JSON on `/fleetlet/status`
//! (configurable), published when it changes and at least every `status_interval`, so
//! on-robot nodes can react to an update in progress, an e-stop, or a lost uplink:
//!
//! ```json
//! {"ts_ms": 1764633600000, "ready": true,
//!  "subsystems": {"bundle": {"state": "ready", "detail": {...}}, "mcu": {...}, "telemetry": {...}}}
//! ```
//!
//! Each subsystem's `detail` is what it reports to the status registry (update state,
//! e-stop state, link state, ...), so there is one source for `/v1/status` and this topic.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spin::Ros2;
use super::Error;
use crate::status::Registry;

/// The JSON document published on the status topic.
pub fn document(registry: &Registry) -> Value {
    let snap = registry.snapshot();
    let mut subsystems = serde_json::Map::new();
    for (name, r) in &snap {
        subsystems.insert(
            (*name).to_owned(),
            json!({"state": r.state, "detail": r.detail}),
        );
    }
    json!({"ready": registry.all_ready(), "subsystems": subsystems})
}

/// Starts the status publisher.
///
/// # Errors
/// [`Error::Rcl`] when the publisher cannot be created.
pub async fn start(
    ros: &Ros2,
    topic: &str,
    interval: Duration,
    registry: Registry,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), Error> {
    let t = topic.to_owned();
    let publisher = ros
        .with_node(move |n| {
            n.create_publisher::<r2r::std_msgs::msg::String>(&t, r2r::QosProfile::default())
                .map_err(|e| Error::rcl(format!("create publisher {t}"), e))
        })
        .await??;
    let topic = topic.to_owned();
    tracker.spawn(async move {
        // Poll the registry often (cheap) so changes go out within ~100 ms, but publish an
        // unchanged document only once per interval.
        let poll = interval
            .min(Duration::from_millis(100))
            .max(Duration::from_millis(10));
        let mut last: Option<Value> = None;
        let mut last_sent = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let doc = document(&registry);
            if last.as_ref() == Some(&doc) && last_sent.elapsed() < interval {
                continue;
            }
            let mut with_ts = doc.clone();
            with_ts["ts_ms"] = json!(crate::telemetry::now_ms());
            let msg = r2r::std_msgs::msg::String {
                data: with_ts.to_string(),
            };
            if let Err(e) = publisher.publish(&msg) {
                tracing::warn!(topic = %topic, error = %e, "cannot publish agent status");
            }
            last = Some(doc);
            last_sent = tokio::time::Instant::now();
        }
    });
    Ok(())
}
