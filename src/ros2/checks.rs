//! Health checks the supervisor runs through its check provider:
//! "topic T publishes at ≥ N Hz over W", "lifecycle node X is `active`", and a
//! `/diagnostics` status level check.
//!
//! Topic rates come from a raw (never deserialized) best-effort subscription per watched
//! topic, created on first use with the type the ROS graph reports for the topic. Arrival
//! times are kept for the longest window asked for, bounded by [`MAX_SAMPLES`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::diagnostics::{Diagnostics, Level};
use super::lifecycle::Lifecycle;
use super::spin::{watch_qos, Ros2, TapOptions, LOSSLESS_DEPTH, MAX_SPIN_INTERVAL};

/// Most arrival times kept per topic (e.g. 10 s of a 2 kHz topic); older ones are dropped
/// first, so a huge window over a fast topic under-reads rather than growing memory.
pub const MAX_SAMPLES: usize = 20_000;

/// One ROS 2 check, in the shapes of the workload manifest's `ros2_*` check kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Ros2Check {
    /// `ros2_topic_rate = { topic, min_hz, window }`.
    TopicRate {
        /// Topic.
        topic: String,
        /// Minimum average rate over the window.
        min_hz: f64,
        /// Window.
        window: Duration,
    },
    /// `ros2_lifecycle = { node, state }`.
    Lifecycle {
        /// Node name (`/nav` or `nav`).
        node: String,
        /// Required state label (`active`).
        state: String,
    },
    /// `ros2_diagnostics = { name, hardware_id, max_level, stale_after }`.
    Diagnostics {
        /// Status name.
        name: String,
        /// Optional hardware id.
        hardware_id: Option<String>,
        /// Worst level that passes.
        max_level: Level,
        /// Older statuses fail.
        stale_after: Duration,
    },
}

#[derive(Debug)]
struct Samples {
    since: Instant,
    times: VecDeque<Instant>,
}

/// Rate monitors for watched topics.
#[derive(Clone)]
pub struct TopicRates {
    ros: Ros2,
    topics: Arc<Mutex<HashMap<String, Arc<Mutex<Samples>>>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for TopicRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicRates").finish_non_exhaustive()
    }
}

impl TopicRates {
    /// Monitors that subscribe through `ros`; their tasks stop with `cancel`.
    pub fn new(ros: Ros2, cancel: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            ros,
            topics: Arc::default(),
            cancel,
            tracker,
        }
    }

    /// Messages per second on `topic` over the last `window`, or why it cannot be measured
    /// yet (topic not in the graph, monitored for less than the window).
    ///
    /// # Errors
    /// A message naming the topic and the reason.
    pub async fn rate(&self, topic: &str, window: Duration) -> Result<f64, String> {
        let samples = match self.lookup(topic) {
            Some(s) => s,
            None => {
                self.watch(topic).await?;
                return Err(format!(
                    "topic {topic}: monitoring started, no full {} window yet",
                    humantime::format_duration(window)
                ));
            }
        };
        let now = Instant::now();
        let s = samples
            .lock()
            .map_err(|_| "rate monitor poisoned".to_owned())?;
        if now.duration_since(s.since) < window {
            let n = s.times.len();
            return Err(format!(
                "topic {topic}: monitored for {:.1}s of a {} window ({n} messages so far)",
                now.duration_since(s.since).as_secs_f64(),
                humantime::format_duration(window)
            ));
        }
        let from = now.checked_sub(window).unwrap_or(s.since);
        let n = s.times.iter().rev().take_while(|t| **t >= from).count();
        Ok(n as f64 / window.as_secs_f64())
    }

    fn lookup(&self, topic: &str) -> Option<Arc<Mutex<Samples>>> {
        self.topics.lock().ok().and_then(|m| m.get(topic).cloned())
    }

    /// Starts monitoring `topic` (type taken from the graph). Arrival times are recorded on
    /// the spin thread (a raw tap whose filter passes nothing), so a monitored topic costs
    /// no async wake-up per message.
    async fn watch(&self, topic: &str) -> Result<(), String> {
        let t = topic.to_owned();
        let ty = self
            .ros
            .with_node(move |node| {
                let types = node
                    .get_topic_names_and_types()
                    .map_err(|e| format!("topic {t}: cannot read the ROS graph: {e}"))?;
                types
                    .get(&t)
                    .and_then(|v| v.first())
                    .cloned()
                    .ok_or_else(|| format!("topic {t}: no publisher in the ROS graph"))
            })
            .await
            .map_err(|e| e.to_string())??;
        let samples = Arc::new(Mutex::new(Samples {
            since: Instant::now(),
            times: VecDeque::new(),
        }));
        {
            let mut m = self
                .topics
                .lock()
                .map_err(|_| "rate monitors poisoned".to_owned())?;
            if m.contains_key(topic) {
                return Ok(()); // raced with another check
            }
            m.insert(topic.to_owned(), samples.clone());
        }
        let recorder = samples.clone();
        let tapped = self
            .ros
            .tap_raw(
                topic,
                &ty,
                TapOptions {
                    qos: watch_qos(LOSSLESS_DEPTH),
                    depth: 1,
                    // LOSSLESS_DEPTH per longest interval counts up to 2 kHz, so a `min_hz`
                    // check up to that rate is judged right.
                    pace: MAX_SPIN_INTERVAL,
                },
                Box::new(move |_| {
                    if let Ok(mut s) = recorder.lock() {
                        s.times.push_back(Instant::now());
                        while s.times.len() > MAX_SAMPLES {
                            s.times.pop_front();
                        }
                    }
                    false
                }),
                Arc::default(),
            )
            .await;
        let rx = match tapped {
            Ok(rx) => rx,
            Err(e) => {
                if let Ok(mut m) = self.topics.lock() {
                    m.remove(topic);
                }
                return Err(format!("topic {topic} ({ty}): cannot subscribe: {e}"));
            }
        };
        // The tap lives as long as its receiver: keep it until shutdown.
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            cancel.cancelled().await;
            drop(rx);
        });
        Ok(())
    }
}

/// Evaluates [`Ros2Check`]s: what the supervisor's check provider calls.
#[derive(Clone, Debug)]
pub struct Checker {
    /// Topic rate monitors.
    pub rates: TopicRates,
    /// Lifecycle client.
    pub lifecycle: Lifecycle,
    /// Diagnostics aggregate (None when disabled in config).
    pub diagnostics: Option<Diagnostics>,
}

impl Checker {
    /// Runs one check: `Ok(detail)` when it passes, `Err(reason)` when it fails.
    ///
    /// # Errors
    /// Why the check failed (measured rate and threshold, current state, level).
    pub async fn evaluate(&self, check: &Ros2Check) -> Result<String, String> {
        match check {
            Ros2Check::TopicRate {
                topic,
                min_hz,
                window,
            } => {
                let hz = self.rates.rate(topic, *window).await?;
                if hz >= *min_hz {
                    Ok(format!("{topic} at {hz:.1} Hz (≥ {min_hz} Hz)"))
                } else {
                    Err(format!(
                        "{topic} at {hz:.1} Hz over {}, below {min_hz} Hz",
                        humantime::format_duration(*window)
                    ))
                }
            }
            Ros2Check::Lifecycle { node, state } => {
                let s = self
                    .lifecycle
                    .get_state(node)
                    .await
                    .map_err(|e| e.to_string())?;
                if s.label == *state {
                    Ok(format!("{node} is {}", s.label))
                } else {
                    Err(format!(
                        "lifecycle node {node} is {} (needs {state})",
                        s.label
                    ))
                }
            }
            Ros2Check::Diagnostics {
                name,
                hardware_id,
                max_level,
                stale_after,
            } => {
                let Some(d) = &self.diagnostics else {
                    return Err(
                        "diagnostics aggregation is disabled (ros2.diagnostics_topic is empty)"
                            .to_owned(),
                    );
                };
                d.check(name, hardware_id.as_deref(), *max_level, *stale_after)
            }
        }
    }
}
