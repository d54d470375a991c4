//! Topic bridge: ROS 2 topics forwarded as telemetry records.
//!
//! Each [`Forward`] entry gets a raw subscription (bytes only, nothing deserialized) drained
//! on the spin thread, where the throttle runs: only the messages it keeps are handed to the
//! entry's task, which deserializes them. A 1 kHz topic forwarded at 10 Hz costs 10 decodes
//! and 10 task wake-ups per second, not 1000. Kept messages are
//! converted to JSON through r2r's untyped support (any type compiled into this build), cut
//! down to the selected fields, and emitted on the entry's stream with its priority.
//!
//! Record payload: `{"topic": "/odom", "type": "nav_msgs/msg/Odometry", "data": {...}}`,
//! where `data` is the whole message or `{"<field path>": value, ...}` for the selected fields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spin::{watch_qos, Ros2, TapOptions, LOSSLESS_DEPTH};
use super::Error;
use crate::telemetry::Sink;
pub use crate::workload::Forward;

/// Throttle: lets through at most `rate` events per second on average, evenly spaced.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Throttle {
    /// `None` lets everything through.
    pub fn new(max_rate_hz: Option<f64>) -> Self {
        Self {
            interval: max_rate_hz
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: None,
        }
    }

    /// Whether an event at `now` passes.
    pub fn admit(&mut self, now: Instant) -> bool {
        let Some(iv) = self.interval else {
            return true;
        };
        match self.next {
            Some(next) if now < next => false,
            Some(next) => {
                // Keep the schedule (accurate average rate) unless we fell behind by more than
                // one interval (a pause in the source): then restart from now.
                self.next = Some(if now.duration_since(next) > iv {
                    now + iv
                } else {
                    next + iv
                });
                true
            }
            None => {
                self.next = Some(now + iv);
                true
            }
        }
    }
}

/// Picks `paths` out of `msg` (`a.b.c`; array indexes as numbers: `poses.0.x`).
/// Missing paths are `null`.
pub fn select_fields(msg: &Value, paths: &[String]) -> Value {
    if paths.is_empty() {
        return msg.clone();
    }
    let mut out = serde_json::Map::new();
    for p in paths {
        let mut cur = Some(msg);
        for seg in p.split('.') {
            cur = cur.and_then(|v| match v {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            });
        }
        out.insert(p.clone(), cur.cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// Counters of one bridged topic.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages received.
    pub received: AtomicU64,
    /// Records emitted.
    pub forwarded: AtomicU64,
    /// Messages dropped by the throttle.
    pub throttled: AtomicU64,
    /// Messages that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Messages the throttle passed but the bridge task was too far behind to take
    /// (more than [`BRIDGE_QUEUE_DEPTH`] waiting).
    pub overflow: Arc<AtomicU64>,
}

/// Messages waiting between the spin thread and a bridge task: a burst of an unthrottled
/// topic fits; beyond it the newest are dropped and counted (the spin thread never blocks).
pub const BRIDGE_QUEUE_DEPTH: usize = 64;

/// A running bridge entry.
#[derive(Debug, Clone)]
pub struct Bridged {
    /// The entry.
    pub forward: Forward,
    /// Its counters.
    pub counters: Arc<Counters>,
}

/// Starts forwarding every entry. Each entry is a raw tap ([`Ros2::tap_raw`]): the throttle
/// runs on the spin thread, so a dropped message is never copied to, nor wakes, async code.
///
/// # Errors
/// [`Error::UnknownType`] for a type not compiled in, [`Error::Rcl`] when subscribing fails.
pub async fn start(
    ros: &Ros2,
    forwards: &[Forward],
    sink: Sink,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<Bridged>, Error> {
    let mut out = Vec::new();
    for f in forwards {
        let mut throttle = Throttle::new(f.max_rate_hz);
        let depth = tap_depth(f.max_rate_hz, ros.min_spin_interval());
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let rx = ros
            .tap_raw(
                &f.topic,
                &f.msg_type,
                TapOptions {
                    qos: watch_qos(depth),
                    depth: BRIDGE_QUEUE_DEPTH,
                    pace: tap_pace(f.max_rate_hz),
                },
                Box::new(move |_bytes: &[u8]| {
                    c.received.fetch_add(1, Ordering::Relaxed);
                    let pass = throttle.admit(Instant::now());
                    if !pass {
                        c.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    pass
                }),
                counters.overflow.clone(),
            )
            .await?;
        let b = Bridged {
            forward: f.clone(),
            counters: counters.clone(),
        };
        tracker.spawn(run_entry(
            f.clone(),
            rx,
            counters,
            sink.clone(),
            cancel.clone(),
        ));
        out.push(b);
    }
    Ok(out)
}

/// DDS queue depth of a bridge tap: only the latest message when the throttle interval spans
/// at least two paced spin intervals (everything older would be throttled anyway), else
/// every message.
pub fn tap_depth(max_rate_hz: Option<f64>, min_spin_interval: Duration) -> usize {
    match max_rate_hz {
        Some(r) if r > 0.0 && r * min_spin_interval.as_secs_f64() <= 0.5 => 1,
        _ => LOSSLESS_DEPTH,
    }
}

/// The longest spin interval a bridge tap tolerates: half the throttle period (the throttle
/// then keeps its average rate, see [`Throttle::admit`]); an unthrottled tap needs every
/// message and spins as often as `min_spin_interval` allows (zero).
pub fn tap_pace(max_rate_hz: Option<f64>) -> Duration {
    match max_rate_hz {
        Some(r) if r > 0.0 => Duration::from_secs_f64(0.5 / r),
        _ => Duration::ZERO,
    }
}

async fn run_entry(
    f: Forward,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    counters: Arc<Counters>,
    sink: Sink,
    cancel: CancellationToken,
) {
    let stream_name = f.stream_name();
    loop {
        let bytes = tokio::select! {
            () = cancel.cancelled() => break,
            m = rx.recv() => match m { Some(b) => b, None => break },
        };
        match decode(&f.msg_type, &bytes) {
            Ok(v) => {
                sink.emit(
                    &stream_name,
                    f.priority,
                    json!({"topic": f.topic, "type": f.msg_type, "data": select_fields(&v, &f.fields)}),
                );
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if counters.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(topic = %f.topic, error = %e, "cannot decode bridged message");
                }
            }
        }
    }
}

/// Serialized (CDR) bytes of a message of type `ty` → JSON.
///
/// # Errors
/// The r2r error (type unknown or bytes not a valid message).
pub fn decode(ty: &str, bytes: &[u8]) -> Result<Value, r2r::Error> {
    let mut msg = r2r::WrappedNativeMsgUntyped::new_from(ty)?;
    msg.from_serialized_bytes(bytes)?;
    msg.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_keeps_the_average_rate_of_a_faster_source() {
        let mut t = Throttle::new(Some(10.0));
        let start = Instant::now();
        // a 1 kHz source for 10 s
        let admitted = (0..10_000)
            .filter(|i| t.admit(start + Duration::from_millis(*i)))
            .count();
        assert!((100..=101).contains(&admitted), "{admitted}");
        let mut all = Throttle::new(None);
        assert!((0..100).all(|i| all.admit(start + Duration::from_micros(i))));
    }

    #[test]
    fn throttle_restarts_after_a_pause_instead_of_bursting() {
        let mut t = Throttle::new(Some(10.0));
        let s = Instant::now();
        assert!(t.admit(s));
        assert!(!t.admit(s + Duration::from_millis(50)));
        assert!(t.admit(s + Duration::from_millis(100)));
        // 5 s pause, then a 1 kHz burst: only one message in the first 100 ms
        let resume = s + Duration::from_secs(5);
        let n = (0..100)
            .filter(|i| t.admit(resume + Duration::from_millis(*i)))
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn only_a_throttle_slower_than_two_spin_intervals_keeps_just_the_latest_message() {
        let pace = Duration::from_millis(10);
        assert_eq!(tap_depth(Some(10.0), pace), 1);
        assert_eq!(tap_depth(Some(50.0), pace), 1);
        assert_eq!(tap_depth(Some(51.0), pace), LOSSLESS_DEPTH);
        assert_eq!(tap_depth(None, pace), LOSSLESS_DEPTH);
        assert_eq!(tap_depth(Some(10.0), Duration::ZERO), 1);
    }

    #[test]
    fn a_throttled_tap_tolerates_half_its_period_and_an_unthrottled_one_none() {
        assert_eq!(tap_pace(Some(10.0)), Duration::from_millis(50));
        assert_eq!(tap_pace(Some(100.0)), Duration::from_millis(5));
        assert_eq!(tap_pace(None), Duration::ZERO);
        assert_eq!(tap_pace(Some(0.0)), Duration::ZERO);
    }

    #[test]
    fn field_selection_picks_paths_and_nulls_missing_ones() {
        let v = json!({"pose": {"pose": {"position": {"x": 1.0, "y": 2.0}}}, "poses": [{"x": 5}]});
        let s = select_fields(
            &v,
            &[
                "pose.pose.position".into(),
                "poses.0.x".into(),
                "nope.x".into(),
            ],
        );
        assert_eq!(
            s,
            json!({"pose.pose.position": {"x": 1.0, "y": 2.0}, "poses.0.x": 5, "nope.x": null})
        );
        assert_eq!(select_fields(&v, &[]), v);
    }

    #[test]
    fn typed_message_bytes_decode_to_json() {
        let msg = r2r::std_msgs::msg::String { data: "hi".into() };
        let bytes = r2r::WrappedTypesupport::to_serialized_bytes(&msg).unwrap();
        let v = decode("std_msgs/msg/String", &bytes).unwrap();
        assert_eq!(v, json!({"data": "hi"}));
        let e = decode("nope_msgs/msg/Nope", &bytes).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
}
