//! The MQTT link to the fleet (DESIGN.md "MQTT topics").
//!
//! [`start`] spawns one task that owns the rumqttc `EventLoop` and polls it continuously
//! ([`link`]); everything else talks to it through the cloneable [`Handle`]:
//! - presence: Last Will `<p>/<device>/status` = offline (retained), `online` with version
//!   and boot id published on every connect (retained);
//! - reconnects with exponential backoff and full jitter; downlink subscriptions are
//!   restored on every connect;
//! - downlink payloads are decoded by [`codec`]; bad ones are logged and counted, never
//!   fatal; valid ones go to a bounded channel (full: the newest is dropped and counted);
//! - tracked publishes ([`Handle::publish_tracked`]) report their PUBACK, which the telemetry
//!   uploader uses to delete records only once the broker has them.

pub mod codec;
pub mod link;
pub mod tail;
pub mod topics;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problem;
pub use link::{Handle, LinkEvent};

/// Default broker port for plain TCP.
pub const DEFAULT_PORT: u16 = 1883;
/// Default keepalive: short enough to notice a dead Wi-Fi link within a minute, long enough
/// to cost nothing on cellular.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
/// First reconnect delay (upper bound of the jittered delay).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Reconnect delay cap: a thousand robots coming back at once spread over a minute.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Depth of the downlink channel: desired states and commands are rare.
pub const DEFAULT_DOWNLINK_CAPACITY: usize = 64;
/// TCP/TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A password that never shows up in logs or `config check` output.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// TLS settings (rustls).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Connect to a broker at all. Off by default: there is no sensible default broker.
    pub enabled: bool,
    /// Broker host name or IP.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS; plain TCP when absent.
    pub tls: Option<TlsConfig>,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password.
    pub password: Option<Secret>,
    /// Keepalive interval.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Topic prefix.
    pub prefix: String,
    /// Smallest reconnect backoff.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Largest reconnect backoff.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest accepted downlink payload.
    pub downlink_max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: DEFAULT_PORT,
            tls: None,
            username: None,
            password: None,
            keepalive: DEFAULT_KEEPALIVE,
            prefix: topics::DEFAULT_PREFIX.into(),
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            downlink_max_bytes: codec::DEFAULT_DOWNLINK_MAX_BYTES,
        }
    }
}

impl Config {
    /// Pushes every problem with full dotted keys (`mqtt.port`, ...).
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        if !self.enabled {
            return;
        }
        if self.host.trim().is_empty() {
            problems.push(Problem::new(
                "mqtt.host",
                "must not be empty when mqtt.enabled = true",
            ));
        }
        if self.port == 0 {
            problems.push(Problem::new("mqtt.port", "0 is not a valid port"));
        }
        if self.prefix.is_empty()
            || self.prefix.contains(['+', '#', '\0'])
            || self.prefix.starts_with('/')
        {
            problems.push(Problem::new(
                "mqtt.prefix",
                format!(
                    "{:?} must be non-empty, not start with '/', and contain no + # or NUL",
                    self.prefix
                ),
            ));
        }
        let ka = self.keepalive.as_secs();
        if !(5..=65535).contains(&ka) {
            problems.push(Problem::new(
                "mqtt.keepalive",
                format!(
                    "{} is out of range (5s..=65535s)",
                    humantime::format_duration(self.keepalive)
                ),
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            problems.push(Problem::new(
                "mqtt.reconnect_min",
                format!(
                    "{} must be > 0 and <= mqtt.reconnect_max ({})",
                    humantime::format_duration(self.reconnect_min),
                    humantime::format_duration(self.reconnect_max)
                ),
            ));
        }
        if self.reconnect_max > Duration::from_secs(3600) {
            problems.push(Problem::new(
                "mqtt.reconnect_max",
                format!(
                    "{} is above 1h",
                    humantime::format_duration(self.reconnect_max)
                ),
            ));
        }
        if self.connect_timeout < Duration::from_secs(1) {
            problems.push(Problem::new("mqtt.connect_timeout", "must be at least 1s"));
        }
        if self.downlink_max_bytes < 1024 || self.downlink_max_bytes > 16 << 20 {
            problems.push(Problem::new(
                "mqtt.downlink_max_bytes",
                format!(
                    "{} is out of range (1024..=16777216)",
                    self.downlink_max_bytes
                ),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            problems.push(Problem::new(
                "mqtt.password",
                "is set but mqtt.username is not",
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.ca.as_os_str().is_empty() {
                problems.push(Problem::new(
                    "mqtt.tls.ca",
                    "must name the CA certificate PEM file",
                ));
            } else if !tls.ca.is_file() {
                problems.push(Problem::new(
                    "mqtt.tls.ca",
                    format!("{} does not exist or is not a file", tls.ca.display()),
                ));
            }
            match (&tls.client_cert, &tls.client_key) {
                (Some(c), Some(k)) => {
                    for (key, p) in [("mqtt.tls.client_cert", c), ("mqtt.tls.client_key", k)] {
                        if !p.is_file() {
                            problems.push(Problem::new(
                                key,
                                format!("{} does not exist or is not a file", p.display()),
                            ));
                        }
                    }
                }
                (None, None) => {}
                (Some(_), None) => problems.push(Problem::new(
                    "mqtt.tls.client_key",
                    "missing: mqtt.tls.client_cert needs its key",
                )),
                (None, Some(_)) => problems.push(Problem::new(
                    "mqtt.tls.client_cert",
                    "missing: mqtt.tls.client_key needs its certificate",
                )),
            }
        }
    }
}

/// Errors starting the link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The device id cannot be a topic level.
    #[error("device id {0:?} cannot be used as an MQTT topic level")]
    DeviceId(String),
}

/// Starts the link (when `cfg.enabled`): spawns the event-loop task on `svc.tracker` and
/// registers the `mqtt` status. Returns the handle and the receiver of valid downlink
/// messages (bounded; when nobody drains it, newer messages are dropped and counted).
///
/// # Errors
/// [`Error::TlsFile`] for unreadable TLS files, [`Error::DeviceId`].
pub fn start(
    svc: &crate::runtime::Services,
    cfg: &Config,
) -> Result<(Handle, tokio::sync::mpsc::Receiver<codec::Downlink>), Error> {
    link::start(svc, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_disabled_skips_checks() {
        let mut p = Vec::new();
        Config::default().validate(&mut p);
        let c = Config {
            enabled: true,
            ..Config::default()
        };
        c.validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn every_problem_is_named_with_its_key() {
        let c = Config {
            enabled: true,
            host: " ".into(),
            prefix: "a/#".into(),
            reconnect_min: Duration::from_secs(100),
            password: Some(Secret("x".into())),
            tls: Some(TlsConfig {
                ca: "/nonexistent/ca.pem".into(),
                client_cert: Some("/nonexistent/c.pem".into()),
                client_key: None,
            }),
            ..Config::default()
        };
        let mut p = Vec::new();
        c.validate(&mut p);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "mqtt.host",
            "mqtt.prefix",
            "mqtt.reconnect_min",
            "mqtt.password",
            "mqtt.tls.ca",
            "mqtt.tls.client_key",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
    }

    #[test]
    fn password_is_redacted_in_debug_and_serialization() {
        let c = Config {
            password: Some(Secret("hunter2".into())),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!toml::to_string(&c).unwrap().contains("hunter2"));
    }
}
