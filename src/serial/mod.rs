//! The link to the safety microcontroller (firmware in `firmware/`, protocol in
//! `firmware/proto`, shared by both ends).
//!
//! One tracked task ([`link::Link::run`]) owns the serial port. It opens the configured
//! port, handshakes (protocol + firmware versions), then sends heartbeats every
//! `heartbeat_period` **only while** the agent's event loop is live and the workload's
//! motion-critical processes are healthy, so a hung navigation stack also cuts motor
//! power. It asks the MCU to enable motor power only once the configured processes are
//! ready and no fault is latched; latched faults (e-stop, heartbeat timeout) need the
//! explicit arm flow ([`Handle::arm`], control op `mcu.arm`).
//!
//! # Invariants
//! - A protocol mismatch ends the session with [`Error::ProtocolMismatch`] reported as a
//!   critical event; the link never sends `RequestEnable` on that session.
//! - Corrupted frames are counted (`fleetlet_mcu_rx_errors_total`) and skipped; the
//!   decoder resyncs on the next delimiter.
//! - When the port disappears (read error, EOF, or no frame from the MCU for
//!   `mcu_silence_timeout`), the link reports it and reopens with capped exponential
//!   backoff until the port returns.
//! - E-stop: the MCU's e-stop (pressed or latched) is reported to the e-stop engine
//!   ([`crate::estop`]) as one source; the engine pauses or stops the configured processes
//!   and resumes them once every source is clear. The board's e-stop input is the other
//!   source: on its press the link sends `Disarm` (the MCU cuts power) and never requests
//!   enable again until the input is released and an operator clears the e-stop
//!   ([`Handle::clear_estop`] / [`Handle::arm`], both refused while it is pressed).
//! - All channels are bounded; commands to a busy link wait up to [`COMMAND_TIMEOUT`].
//!
//! # Layout
//! - `mod.rs`: [`Config`], [`Error`], [`Workload`], [`Handle`], [`start`].
//! - `port.rs`: the [`Port`] trait (tokio-serial, or a pty in tests).
//! - `link.rs`: the link task.

pub mod link;
pub mod port;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use fleetlet_proto as proto;
pub use port::{Io, Port, SerialPort};

/// Default device: a Pico behind a Debug Probe, or any CDC-ACM board.
pub const DEFAULT_PORT: &str = "/dev/ttyACM0";
/// Default baud rate: what the bundled firmwares use.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Heartbeat period: 10 Hz gives three heartbeats per default 300 ms MCU timeout, so one
/// late frame never cuts power while a dead agent still does within 300 ms.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);
/// How long to wait for `HelloAck` before retrying the port.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// No frame at all from the MCU (it reports status every 250 ms) for this long means the
/// link is dead even if the port still looks open.
pub const DEFAULT_MCU_SILENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnect delay; doubled up to the max on every failure.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Reconnect delay cap: a replugged USB board is picked up within 2 s.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Period of the `mcu` telemetry record (battery, link quality).
pub const DEFAULT_TELEMETRY_PERIOD: Duration = Duration::from_secs(5);
/// How long a [`Handle`] command waits for the link.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The e-stop policy lives in [`crate::estop`] (it applies to the MCU's e-stop and to the
/// board's e-stop input pin); the config key stays `[serial.estop]`.
pub use crate::estop::{Action as EstopAction, Policy as EstopPolicy};

/// The `[serial]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Whether the robot has a safety MCU on a serial port.
    pub enabled: bool,
    /// Serial device (a stable `/dev/serial/by-id/...` path is best).
    pub port: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Heartbeat period; must be under half the MCU's heartbeat timeout.
    #[serde(with = "humantime_serde")]
    pub heartbeat_period: Duration,
    /// `HelloAck` timeout.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// No frame from the MCU for this long → reconnect.
    #[serde(with = "humantime_serde")]
    pub mcu_silence_timeout: Duration,
    /// First reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Period of the `mcu` telemetry record.
    #[serde(with = "humantime_serde")]
    pub telemetry_period: Duration,
    /// Processes that must be healthy for heartbeats to go out.
    pub motion_critical: Vec<String>,
    /// Processes that must be ready before motor enable is requested.
    pub enable_after_ready: Vec<String>,
    /// Request motor enable by itself once ready (no latched fault). Off: only `mcu.arm`.
    pub auto_enable: bool,
    /// E-stop policy.
    pub estop: EstopPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: PathBuf::from(DEFAULT_PORT),
            baud: DEFAULT_BAUD,
            heartbeat_period: DEFAULT_HEARTBEAT_PERIOD,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mcu_silence_timeout: DEFAULT_MCU_SILENCE_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            telemetry_period: DEFAULT_TELEMETRY_PERIOD,
            motion_critical: Vec::new(),
            enable_after_ready: Vec::new(),
            auto_enable: true,
            estop: EstopPolicy::default(),
        }
    }
}

impl Config {
    /// Pushes every problem of this section.
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        use crate::config::Problem;
        if !self.enabled {
            return;
        }
        if self.port.as_os_str().is_empty() {
            problems.push(Problem::new("serial.port", "must name a serial device"));
        }
        if !(1200..=4_000_000).contains(&self.baud) {
            problems.push(Problem::new(
                "serial.baud",
                format!("{} is not a usable baud rate (1200..=4000000)", self.baud),
            ));
        }
        let max_period = Duration::from_millis(u64::from(proto::DEFAULT_HEARTBEAT_TIMEOUT_MS) / 2);
        if self.heartbeat_period.is_zero() || self.heartbeat_period > max_period {
            problems.push(Problem::new(
                "serial.heartbeat_period",
                format!(
                    "{} must be between 1ms and {} (half the MCU's {} ms heartbeat timeout)",
                    humantime::format_duration(self.heartbeat_period),
                    humantime::format_duration(max_period),
                    proto::DEFAULT_HEARTBEAT_TIMEOUT_MS
                ),
            ));
        }
        for (key, d) in [
            ("serial.handshake_timeout", self.handshake_timeout),
            ("serial.mcu_silence_timeout", self.mcu_silence_timeout),
            ("serial.reconnect_min", self.reconnect_min),
            ("serial.telemetry_period", self.telemetry_period),
        ] {
            if d.is_zero() {
                problems.push(Problem::new(key, "must be longer than 0s"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            problems.push(Problem::new(
                "serial.reconnect_max",
                format!(
                    "{} is shorter than serial.reconnect_min ({})",
                    humantime::format_duration(self.reconnect_max),
                    humantime::format_duration(self.reconnect_min)
                ),
            ));
        }
        self.estop.validate(problems);
    }
}

/// Errors of the MCU link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid [serial] config: {0}")]
    Config(String),
    /// The port could not be opened.
    #[error("cannot open serial port {port}: {source}")]
    Open {
        /// Port.
        port: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing failed (the port went away).
    #[error("serial port {port} failed: {source}")]
    Io {
        /// Port.
        port: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No `HelloAck` in time.
    #[error("no handshake answer from the mcu on {port} within {timeout:?}")]
    HandshakeTimeout {
        /// Port.
        port: String,
        /// Timeout.
        timeout: Duration,
    },
    /// The MCU speaks another protocol version; motors stay disabled.
    #[error("mcu firmware {firmware} speaks protocol {mcu}, this agent speaks {agent}: motors stay disabled until one of them is updated")]
    ProtocolMismatch {
        /// Agent protocol.
        agent: u16,
        /// MCU protocol.
        mcu: u16,
        /// Firmware version.
        firmware: String,
    },
    /// The MCU stopped sending.
    #[error("no frame from the mcu for {0:?}")]
    Silent(Duration),
    /// The MCU refused a request.
    #[error("mcu refused the request: {0}")]
    Refused(&'static str),
    /// The link task is not running or did not answer in time.
    #[error("mcu link is not running or did not answer within {0:?}")]
    NotRunning(Duration),
    /// The link is not connected to an MCU right now.
    #[error("mcu is not connected")]
    NotConnected,
    /// The board's e-stop input (`hal.estop_input`) is pressed: the agent refuses to arm
    /// or clear until it is released.
    #[error("the e-stop input (hal.estop_input) is pressed; release it first")]
    EstopInputPressed,
}

/// A boxed future returned by [`Workload`] actions.
pub type ActionFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What the link needs from the process supervisor. The runtime implements it over the
/// supervisor handle; tests implement it over real child processes.
pub trait Workload: Send + Sync + 'static {
    /// Whether every named process is running and healthy (liveness checks passing, not
    /// paused or stopped). An empty list is healthy.
    fn motion_ok(&self, names: &[String]) -> bool;
    /// Whether every named process has reached ready. An empty list is ready.
    fn motion_ready(&self, names: &[String]) -> bool;
    /// SIGSTOP the process (group).
    fn pause(&self, name: &str) -> ActionFuture;
    /// SIGCONT the process (group).
    fn resume(&self, name: &str) -> ActionFuture;
    /// Stop the process with its stop ladder (and keep it stopped).
    fn stop(&self, name: &str) -> ActionFuture;
    /// Start a stopped process again.
    fn start(&self, name: &str) -> ActionFuture;
}

/// A workload with no processes: always healthy and ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoWorkload;

impl Workload for NoWorkload {
    fn motion_ok(&self, _: &[String]) -> bool {
        true
    }
    fn motion_ready(&self, _: &[String]) -> bool {
        true
    }
    fn pause(&self, name: &str) -> ActionFuture {
        let name = name.to_owned();
        Box::pin(async move { Err(format!("no workload process named {name}")) })
    }
    fn resume(&self, name: &str) -> ActionFuture {
        self.pause(name)
    }
    fn stop(&self, name: &str) -> ActionFuture {
        self.pause(name)
    }
    fn start(&self, name: &str) -> ActionFuture {
        self.pause(name)
    }
}

/// What the link last knew about the MCU, published on a `watch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkState {
    /// A session is open (handshake done with a matching protocol).
    pub connected: bool,
    /// Firmware version from the last `HelloAck`.
    pub firmware: Option<String>,
    /// Board from the last `HelloAck`.
    pub board: Option<&'static str>,
    /// The MCU's protocol version from the last `HelloAck`.
    pub mcu_protocol: Option<u16>,
    /// Last error that ended a session or blocked enabling, if any.
    pub last_error: Option<String>,
    /// Motor power on.
    pub motor_enabled: bool,
    /// The MCU's e-stop input is pressed now.
    pub estop_pressed: bool,
    /// The board's e-stop input pin (`hal.estop_input`) is pressed now; motor power is
    /// kept off (the link sends `Disarm` and never requests enable).
    pub estop_input_pressed: bool,
    /// The board's e-stop input was pressed and has not been cleared by an operator
    /// (`mcu.clear_estop` / `mcu.arm`) yet: motor power stays off until then.
    pub estop_input_uncleared: bool,
    /// Latched fault names.
    pub faults: Vec<&'static str>,
    /// Battery voltage in mV.
    pub battery_mv: Option<u16>,
    /// Frames the agent dropped since start.
    pub rx_errors: u64,
    /// Frames the MCU reported dropping (its counter).
    pub mcu_rx_errors: u16,
    /// Sessions opened since start.
    pub sessions: u64,
    /// Heartbeats sent since start.
    pub heartbeats_sent: u64,
    /// Heartbeat ticks skipped because the agent or the motion stack was unhealthy.
    pub heartbeats_withheld: u64,
    /// Median heartbeat round trip over the last samples, µs.
    pub rtt_p50_us: Option<u64>,
    /// 99th percentile heartbeat round trip over the last samples, µs.
    pub rtt_p99_us: Option<u64>,
}

/// Operator commands.
#[derive(Debug)]
pub(crate) enum Command {
    /// ClearFault then RequestEnable.
    Arm(oneshot::Sender<Result<LinkState, Error>>),
    /// ClearFault only.
    ClearFault(oneshot::Sender<Result<LinkState, Error>>),
    /// Disarm.
    Disarm(oneshot::Sender<Result<LinkState, Error>>),
}

/// Cloneable handle to the link task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    state: watch::Receiver<LinkState>,
}

impl Handle {
    /// The latest link state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<LinkState, Error>>) -> Command,
    ) -> Result<LinkState, Error> {
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.tx
                .send(make(tx))
                .await
                .map_err(|_| Error::NotRunning(COMMAND_TIMEOUT))?;
            rx.await.map_err(|_| Error::NotRunning(COMMAND_TIMEOUT))?
        };
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| Error::NotRunning(COMMAND_TIMEOUT))?
    }

    /// The arm flow: clears latched faults (refused while the MCU's e-stop or the board's
    /// e-stop input is pressed), then requests motor enable (the processes must be ready).
    ///
    /// # Errors
    /// [`Error::Refused`] with the MCU's reason, [`Error::NotConnected`], [`Error::NotRunning`].
    pub async fn arm(&self) -> Result<LinkState, Error> {
        self.call(Command::Arm).await
    }

    /// Clears latched faults (e-stop released) and the board's e-stop input press without
    /// enabling; the e-stop processes are resumed once no source holds the e-stop.
    ///
    /// # Errors
    /// As [`Handle::arm`].
    pub async fn clear_estop(&self) -> Result<LinkState, Error> {
        self.call(Command::ClearFault).await
    }

    /// Disables motor power (no fault latched) and stops auto-enable until the next arm.
    ///
    /// # Errors
    /// As [`Handle::arm`].
    pub async fn disarm(&self) -> Result<LinkState, Error> {
        self.call(Command::Disarm).await
    }
}

/// What the link task uses from the runtime; [`start`] fills it from `Services`.
#[derive(Clone)]
pub struct Deps {
    /// Telemetry intake.
    pub telemetry: crate::telemetry::Sink,
    /// Status reporter for the `serial` subsystem.
    pub status: crate::status::Reporter,
    /// Event-loop liveness.
    pub liveness: crate::liveness::Liveness,
    /// Task tracker.
    pub tracker: TaskTracker,
    /// Cancelled on shutdown.
    pub cancel: CancellationToken,
    /// The e-stop engine: the link reports the MCU's e-stop to it and follows the board's
    /// e-stop input through it.
    pub estop: crate::estop::Handle,
}

/// Spawns the link task over `port` and returns its handle.
pub fn spawn(deps: Deps, cfg: Config, port: Arc<dyn Port>, workload: Arc<dyn Workload>) -> Handle {
    let (tx, rx) = mpsc::channel(8);
    let (state_tx, state_rx) = watch::channel(LinkState::default());
    let link = link::Link::new(deps.clone(), cfg, port, workload, rx, state_tx);
    deps.tracker.spawn(link.run(deps.cancel.child_token()));
    Handle {
        tx,
        state: state_rx,
    }
}

/// Starts the MCU link subsystem: registers `serial` in the status registry, the control
/// ops `mcu.arm`, `mcu.clear_estop`, `mcu.disarm`, and spawns the link task on the tracker.
/// With `enabled = false` it registers as `Disabled` and returns `Ok(None)`.
///
/// # Errors
/// [`Error::Config`] when the section is invalid.
pub async fn start(
    svc: &crate::runtime::Services,
    cfg: &Config,
    workload: Arc<dyn Workload>,
    estop: crate::estop::Handle,
) -> Result<Option<Handle>, Error> {
    let reporter = svc.status.register("serial");
    if !cfg.enabled {
        reporter.set_state(crate::status::SubsystemState::Disabled);
        return Ok(None);
    }
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    if !problems.is_empty() {
        let msg = problems
            .iter()
            .map(|p| format!("`{}`: {}", p.key, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        reporter.set_state(crate::status::SubsystemState::Failed);
        return Err(Error::Config(msg));
    }
    let deps = Deps {
        telemetry: svc.telemetry.clone(),
        status: reporter,
        liveness: svc.liveness.clone(),
        tracker: svc.tracker.clone(),
        cancel: svc.cancel.clone(),
        estop,
    };
    let port = Arc::new(SerialPort::new(cfg.port.clone(), cfg.baud));
    let handle = spawn(deps, cfg.clone(), port, workload);
    register_ops(&svc.ops, &handle);
    Ok(Some(handle))
}

/// Registers `mcu.arm`, `mcu.clear_estop` and `mcu.disarm` on the control socket.
pub fn register_ops(ops: &crate::control::Ops, handle: &Handle) {
    let to_json = |r: Result<LinkState, Error>| {
        r.map_err(|e| e.to_string())
            .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string()))
    };
    let h = handle.clone();
    ops.register("mcu.arm", move |_| {
        let h = h.clone();
        async move { to_json(h.arm().await) }
    });
    let h = handle.clone();
    ops.register("mcu.clear_estop", move |_| {
        let h = h.clone();
        async move { to_json(h.clear_estop().await) }
    });
    let h = handle.clone();
    ops.register("mcu.disarm", move |_| {
        let h = h.clone();
        async move { to_json(h.disarm().await) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_when_enabled_without_estop_processes_only_if_action_none() {
        let mut cfg = Config {
            enabled: true,
            ..Config::default()
        };
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(format!("{:?}", problems[0]).contains("serial.estop.processes"));
        cfg.estop.action = EstopAction::None;
        problems.clear();
        cfg.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let cfg: Config = toml::from_str(
            r#"
            enabled = true
            port = ""
            baud = 7
            heartbeat_period = "200ms"
            reconnect_min = "5s"
            reconnect_max = "1s"
            estop = { action = "stop", processes = ["nav"] }
            "#,
        )
        .unwrap();
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        let text = format!("{problems:?}");
        for key in [
            "serial.port",
            "serial.baud",
            "serial.heartbeat_period",
            "serial.reconnect_max",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert!(text.contains("200ms"), "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("heartbeat = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }
}
