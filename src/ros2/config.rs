//! The agent's `[ros2]` config section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::{DiscoveryRange, Ros2Env};
use crate::workload::Forward;

/// Node name of the agent in the ROS graph.
pub const DEFAULT_NODE_NAME: &str = "fleetlet";
/// Longest the spin thread blocks in `rcl_wait`: bounds shutdown and job latency while
/// keeping an idle agent asleep (≈ 20 wake-ups/s cost nothing measurable).
pub const DEFAULT_SPIN_TIMEOUT: Duration = Duration::from_millis(50);
/// Paced spinning: the spin thread spins at most once per interval (plus a burst that takes
/// what is queued), instead of once per message. This is the shortest interval; it grows up
/// to [`super::spin::MAX_SPIN_INTERVAL`] when every tap tolerates more (see
/// [`super::spin`]). 10 ms lets a throttled bridge entry keep rates up to 50 Hz exact and
/// cuts a 1 kHz topic's wake-ups tenfold.
pub const DEFAULT_MIN_SPIN_INTERVAL: Duration = Duration::from_millis(10);
/// Topic of the agent's own state (std_msgs/String carrying JSON).
pub const DEFAULT_STATUS_TOPIC: &str = "/fleetlet/status";
/// Status republish period: on-robot nodes that start late get it within a second.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on driving one process's lifecycle nodes deactivate → cleanup before its SIGINT:
/// the supervisor's default pre-stop bound (a healthy node needs milliseconds; a hung one must
/// not hold up the stop ladder for long).
pub const DEFAULT_LIFECYCLE_TEARDOWN_TIMEOUT: Duration =
    crate::supervisor::DEFAULT_PRE_STOP_TIMEOUT;
/// The standard diagnostics topic.
pub const DEFAULT_DIAGNOSTICS_TOPIC: &str = "/diagnostics";

/// `[ros2]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Start the ROS 2 node at all.
    pub enabled: bool,
    /// The agent's node name.
    pub node_name: String,
    /// `ROS_DOMAIN_ID` for the agent and every child (unset: the agent's environment).
    pub domain_id: Option<u16>,
    /// `RMW_IMPLEMENTATION` (unset: the agent's environment).
    pub rmw_implementation: Option<String>,
    /// `ROS_AUTOMATIC_DISCOVERY_RANGE`.
    pub automatic_discovery_range: Option<DiscoveryRange>,
    /// `ROS_STATIC_PEERS`.
    pub static_peers: Vec<String>,
    /// Spin timeout.
    #[serde(with = "humantime_serde")]
    pub spin_timeout: Duration,
    /// Shortest paced spinning interval ("0s": spin for every message).
    #[serde(with = "humantime_serde")]
    pub min_spin_interval: Duration,
    /// Topic the agent publishes its state on (empty disables).
    pub status_topic: String,
    /// Status republish period.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Diagnostics topic to aggregate (empty disables).
    pub diagnostics_topic: String,
    /// `ros2_lifecycle` checks drive an `unconfigured` node configure → activate
    /// (bring-up in dependency order, and again after a respawn).
    pub lifecycle_autostart: bool,
    /// Before a process with `ros2_lifecycle` checks gets SIGINT, drive its lifecycle nodes
    /// deactivate → cleanup (reverse dependency order, as Nav2's lifecycle manager does).
    pub lifecycle_teardown: bool,
    /// Longest the teardown of one process may take before its stop ladder runs anyway.
    #[serde(with = "humantime_serde")]
    pub lifecycle_teardown_timeout: Duration,
    /// Topics forwarded as telemetry in addition to the workload's `[[forward]]` entries.
    pub forward: Vec<Forward>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            node_name: DEFAULT_NODE_NAME.to_owned(),
            domain_id: None,
            rmw_implementation: None,
            automatic_discovery_range: None,
            static_peers: Vec::new(),
            spin_timeout: DEFAULT_SPIN_TIMEOUT,
            min_spin_interval: DEFAULT_MIN_SPIN_INTERVAL,
            status_topic: DEFAULT_STATUS_TOPIC.to_owned(),
            status_interval: DEFAULT_STATUS_INTERVAL,
            diagnostics_topic: DEFAULT_DIAGNOSTICS_TOPIC.to_owned(),
            lifecycle_autostart: true,
            lifecycle_teardown: true,
            lifecycle_teardown_timeout: DEFAULT_LIFECYCLE_TEARDOWN_TIMEOUT,
            forward: Vec::new(),
        }
    }
}

impl Config {
    /// The environment this config asks for (unset fields: the process environment).
    ///
    /// # Errors
    /// An invalid value in the config or in the process environment.
    pub fn resolve_env(&self) -> Result<Ros2Env, super::env::EnvError> {
        let own = Ros2Env {
            domain_id: self.domain_id,
            rmw_implementation: self.rmw_implementation.clone(),
            automatic_discovery_range: self.automatic_discovery_range,
            static_peers: self.static_peers.clone(),
        };
        own.validate()?;
        Ok(own.or(&Ros2Env::from_process_env()?))
    }

    /// Pushes every problem with its full dotted key (`ros2.domain_id`, ...).
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        problems.extend(
            self.problems()
                .into_iter()
                .map(|(k, m)| crate::config::Problem::new(k, m)),
        );
    }

    /// Collects every problem as `(key, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let env = Ros2Env {
            domain_id: self.domain_id,
            rmw_implementation: self.rmw_implementation.clone(),
            automatic_discovery_range: self.automatic_discovery_range,
            static_peers: self.static_peers.clone(),
        };
        if let Err(super::env::EnvError::Invalid { key, message }) = env.validate() {
            out.push((format!("ros2.{key}"), message));
        }
        if self.node_name.is_empty()
            || !self
                .node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.node_name.starts_with(|c: char| c.is_ascii_digit())
        {
            out.push((
                "ros2.node_name".to_owned(),
                format!(
                    "{:?} is not a ROS node name (letters, digits, _; not starting with a digit)",
                    self.node_name
                ),
            ));
        }
        if self.spin_timeout.is_zero() {
            out.push((
                "ros2.spin_timeout".to_owned(),
                "0s would busy-spin; use e.g. 50ms".to_owned(),
            ));
        }
        if self.min_spin_interval > Duration::from_millis(100) {
            out.push((
                "ros2.min_spin_interval".to_owned(),
                format!(
                    "{} is above 100ms (service calls and typed subscriptions would lag)",
                    humantime::format_duration(self.min_spin_interval)
                ),
            ));
        }
        if !self.status_topic.is_empty() && !self.status_topic.starts_with('/') {
            out.push((
                "ros2.status_topic".to_owned(),
                format!("{:?} must be absolute (start with /)", self.status_topic),
            ));
        }
        if self.lifecycle_teardown && self.lifecycle_teardown_timeout.is_zero() {
            out.push((
                "ros2.lifecycle_teardown_timeout".to_owned(),
                "must be > 0 (set lifecycle_teardown = false to disable the teardown)".to_owned(),
            ));
        }
        if self.status_interval.is_zero() {
            out.push(("ros2.status_interval".to_owned(), "must be > 0".to_owned()));
        }
        for (i, f) in self.forward.iter().enumerate() {
            for (k, m) in f.problems() {
                out.push((format!("ros2.forward[{i}].{k}"), m));
            }
            if self.forward[..i]
                .iter()
                .any(|g| g.stream_name() == f.stream_name())
            {
                out.push((
                    format!("ros2.forward[{i}].stream"),
                    format!(
                        "stream {:?} is used by another forward entry",
                        f.stream_name()
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_parses_and_bad_values_are_named() {
        let c: Config = toml::from_str(
            "domain_id = 7\nautomatic_discovery_range = \"LOCALHOST\"\nspin_timeout = \"20ms\"\n[[forward]]\ntopic = \"/odom\"\ntype = \"nav_msgs/msg/Odometry\"\nmax_rate_hz = 5.0\n",
        )
        .unwrap();
        assert_eq!(c.domain_id, Some(7));
        assert_eq!(c.spin_timeout, Duration::from_millis(20));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let bad = Config {
            domain_id: Some(999),
            node_name: "9lives".into(),
            spin_timeout: Duration::ZERO,
            status_topic: "status".into(),
            ..Config::default()
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                "ros2.domain_id",
                "ros2.node_name",
                "ros2.spin_timeout",
                "ros2.status_topic"
            ]
        );
        assert!(toml::from_str::<Config>("domainid = 1").is_err());
    }
}
