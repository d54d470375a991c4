//! Board GPIO: a small [`Gpio`] trait with a simulated backend ([`sim::SimGpio`], tests and
//! machines without GPIO), a Linux GPIO character-device backend ([`cdev::CdevGpio`], any
//! board, `/dev/gpiochipN`) and an rppal backend (`rpi` feature, Raspberry Pi only).
//!
//! Uses: a status LED blinking a code per agent state ([`Pattern`]), an optional e-stop
//! input pin (a button on the compute box: reported to the e-stop engine
//! [`crate::estop`], which applies the same policy as for the MCU's e-stop and has the MCU
//! link cut motor power), and a sensor-power relay with a power-cycle action (control op
//! `relay.power_cycle`). The HIL suite's bench rigs drive their pins through this module too.
//!
//! # Invariants
//! - Every GPIO call runs on one dedicated thread ([`Driver`]); the async side talks to it
//!   over bounded channels, so a slow GPIO driver never blocks a tokio worker.
//! - The e-stop input is debounced ([`Config::estop_debounce`]) and fails safe: a read
//!   error counts as pressed.
//! - Pin levels are not relied upon after the agent exits (rppal resets pins on drop).

pub mod cdev;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

/// Default relay off-time for a power cycle: long enough for a USB sensor's capacitors to
/// drain (LiDARs and cameras typically need 1–2 s).
pub const DEFAULT_POWER_CYCLE_OFF: Duration = Duration::from_secs(2);
/// Default e-stop debounce: mechanical buttons bounce for ~5–20 ms.
pub const DEFAULT_ESTOP_DEBOUNCE: Duration = Duration::from_millis(30);
/// The driver thread's step: LED timing and e-stop sampling resolution.
pub const STEP: Duration = Duration::from_millis(10);
/// Default chip of the `cdev` backend: the SoC's main GPIO controller on a Raspberry Pi
/// (4, and 5 since kernel 6.6) and on most single-board computers.
pub const DEFAULT_CHIP: &str = "/dev/gpiochip0";

/// GPIO errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot run on this machine.
    #[error("gpio backend `{backend}` is not available: {reason}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// A pin operation failed.
    #[error("gpio pin {pin}: {reason}")]
    Pin {
        /// BCM pin number.
        pin: u8,
        /// Why.
        reason: String,
    },
    /// A line of a GPIO chip (`cdev` backend) could not be used.
    #[error("gpio line {line} on {chip}: {reason}")]
    Line {
        /// Chip path.
        chip: String,
        /// Line offset.
        line: u32,
        /// Why.
        reason: String,
    },
    /// The driver thread is gone.
    #[error("gpio driver thread is not running")]
    NotRunning,
    /// The feature is not configured.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
}

/// Pin access. Implementations are blocking and are only called on the driver thread.
pub trait Gpio: Send + 'static {
    /// Configures `pin` as an output at `high`.
    ///
    /// # Errors
    /// [`Error::Pin`].
    fn output(&mut self, pin: u8, high: bool) -> Result<(), Error>;
    /// Configures `pin` as an input with `bias`.
    ///
    /// # Errors
    /// [`Error::Pin`] / [`Error::Line`].
    fn input(&mut self, pin: u8, bias: Bias) -> Result<(), Error>;
    /// Configures `pin` as an input with a pull-up.
    ///
    /// # Errors
    /// [`Error::Pin`] / [`Error::Line`].
    fn input_pullup(&mut self, pin: u8) -> Result<(), Error> {
        self.input(pin, Bias::PullUp)
    }
    /// Drives an output.
    ///
    /// # Errors
    /// [`Error::Pin`] (for example: not configured as an output).
    fn write(&mut self, pin: u8, high: bool) -> Result<(), Error>;
    /// Reads an input.
    ///
    /// # Errors
    /// [`Error::Pin`].
    fn read(&mut self, pin: u8) -> Result<bool, Error>;
}

/// An input's pull resistor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// Pull-up.
    PullUp,
    /// Pull-down.
    PullDown,
    /// None: the line floats unless something drives it.
    #[default]
    None,
}

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In-memory pins (no hardware).
    #[default]
    Sim,
    /// Raspberry Pi GPIO through rppal (needs the `rpi` feature). Pins are BCM numbers.
    Rpi,
    /// Linux GPIO character device `chip`. Pins are line offsets on that chip.
    Cdev,
}

/// An output pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputPin {
    /// BCM pin number.
    pub pin: u8,
    /// Whether "on" is a low level.
    #[serde(default)]
    pub active_low: bool,
}

/// The `[hal]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Backend.
    pub backend: Backend,
    /// GPIO chip of the `cdev` backend.
    pub chip: PathBuf,
    /// Status LED.
    pub status_led: Option<OutputPin>,
    /// E-stop input (BCM pin, pull-up, normally-closed contact to GND: high = pressed).
    pub estop_input: Option<u8>,
    /// E-stop debounce.
    #[serde(with = "humantime_serde")]
    pub estop_debounce: Duration,
    /// Sensor-power relay.
    pub sensor_relay: Option<OutputPin>,
    /// How long the relay stays off during a power cycle.
    #[serde(with = "humantime_serde")]
    pub power_cycle_off: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: Backend::Sim,
            chip: PathBuf::from(DEFAULT_CHIP),
            status_led: None,
            estop_input: None,
            estop_debounce: DEFAULT_ESTOP_DEBOUNCE,
            sensor_relay: None,
            power_cycle_off: DEFAULT_POWER_CYCLE_OFF,
        }
    }
}

impl Config {
    /// Pushes every problem of this section.
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        use crate::config::Problem;
        let mut pins = Vec::new();
        for (key, pin) in [
            ("hal.status_led.pin", self.status_led.map(|p| p.pin)),
            ("hal.estop_input", self.estop_input),
            ("hal.sensor_relay.pin", self.sensor_relay.map(|p| p.pin)),
        ] {
            let Some(pin) = pin else { continue };
            // BCM numbering for rpi (and sim, which stands in for it); cdev line offsets
            // are checked against the chip when it is opened.
            if pin > 27 && self.backend != Backend::Cdev {
                problems.push(Problem::new(
                    key,
                    format!("BCM pin {pin} does not exist on the 40-pin header (0..=27)"),
                ));
            }
            if pins.contains(&pin) {
                problems.push(Problem::new(key, format!("BCM pin {pin} is used twice")));
            }
            pins.push(pin);
        }
        if self.backend == Backend::Rpi && !cfg!(feature = "rpi") {
            problems.push(Problem::new(
                "hal.backend",
                "\"rpi\" needs fleetlet built with --features rpi",
            ));
        }
        if self.power_cycle_off.is_zero() {
            problems.push(Problem::new(
                "hal.power_cycle_off",
                "must be longer than 0s",
            ));
        }
    }
}

/// LED blink codes, one per agent state. Each is a repeating list of (on, off) ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Starting: slow even blink.
    Starting,
    /// Running: on, with a short blip off every 2 s (alive).
    Running,
    /// Degraded (MQTT down, buffering): two short blinks, pause.
    Degraded,
    /// Failed: fast blink.
    Failed,
    /// E-stop active: three short blinks, pause.
    Estop,
    /// Off.
    Off,
}

impl Pattern {
    /// The (on_ms, off_ms) steps of one period.
    pub fn steps(self) -> &'static [(u32, u32)] {
        match self {
            Self::Starting => &[(500, 500)],
            Self::Running => &[(1900, 100)],
            Self::Degraded => &[(150, 150), (150, 1000)],
            Self::Failed => &[(100, 100)],
            Self::Estop => &[(150, 150), (150, 150), (150, 1000)],
            Self::Off => &[(0, 1000)],
        }
    }

    /// Whether the LED is on `t_ms` into the pattern.
    pub fn level_at(self, t_ms: u64) -> bool {
        let steps = self.steps();
        let period: u64 = steps.iter().map(|(a, b)| u64::from(a + b)).sum();
        let mut t = t_ms % period.max(1);
        for (on, off) in steps {
            if t < u64::from(*on) {
                return true;
            }
            t -= u64::from(*on);
            if t < u64::from(*off) {
                return false;
            }
            t -= u64::from(*off);
        }
        false
    }

    /// The pattern for an agent whose subsystems are in these states.
    pub fn for_states(
        states: impl IntoIterator<Item = crate::status::SubsystemState>,
        estop: bool,
    ) -> Self {
        use crate::status::SubsystemState as S;
        if estop {
            return Self::Estop;
        }
        let mut worst = Self::Running;
        for s in states {
            worst = match (s, worst) {
                (S::Failed, _) | (_, Self::Failed) => Self::Failed,
                (S::Degraded, _) | (_, Self::Degraded) => Self::Degraded,
                (S::Starting, _) | (_, Self::Starting) => Self::Starting,
                _ => worst,
            };
        }
        worst
    }
}

enum Request {
    PowerCycle(oneshot::Sender<Result<(), Error>>),
}

/// Cloneable handle to the driver thread.
#[derive(Clone)]
pub struct Handle {
    pattern: Arc<watch::Sender<Pattern>>,
    estop: watch::Receiver<bool>,
    requests: std::sync::mpsc::SyncSender<Request>,
    power_cycle_off: Duration,
}

impl Handle {
    /// Sets the LED pattern.
    pub fn set_pattern(&self, p: Pattern) {
        self.pattern.send_replace(p);
    }

    /// The debounced e-stop input (`true` = pressed); always `false` when not configured.
    pub fn estop(&self) -> watch::Receiver<bool> {
        self.estop.clone()
    }

    /// Switches the sensor relay off for `power_cycle_off`, then on again.
    ///
    /// # Errors
    /// [`Error::NotConfigured`] without a relay, [`Error::Pin`], [`Error::NotRunning`].
    pub async fn power_cycle(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .try_send(Request::PowerCycle(tx))
            .map_err(|_| Error::NotRunning)?;
        tokio::time::timeout(self.power_cycle_off + Duration::from_secs(5), rx)
            .await
            .map_err(|_| Error::NotRunning)?
            .map_err(|_| Error::NotRunning)?
    }
}

/// The driver thread's state.
pub struct Driver {
    gpio: Box<dyn Gpio>,
    cfg: Config,
}

fn level(p: OutputPin, on: bool) -> bool {
    on != p.active_low
}

impl Driver {
    /// Configures the pins (LED off, relay on, e-stop input) and returns the driver.
    ///
    /// # Errors
    /// [`Error::Pin`] when a pin cannot be configured.
    pub fn new(mut gpio: Box<dyn Gpio>, cfg: Config) -> Result<Self, Error> {
        if let Some(p) = cfg.status_led {
            gpio.output(p.pin, level(p, false))?;
        }
        if let Some(p) = cfg.sensor_relay {
            gpio.output(p.pin, level(p, true))?;
        }
        if let Some(pin) = cfg.estop_input {
            gpio.input_pullup(pin)?;
        }
        Ok(Self { gpio, cfg })
    }

    /// Spawns the driver thread; it exits when `cancel` fires.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the thread cannot be spawned.
    pub fn spawn(mut self, cancel: tokio_util::sync::CancellationToken) -> Result<Handle, Error> {
        let (pattern_tx, pattern_rx) = watch::channel(Pattern::Starting);
        let (estop_tx, estop_rx) = watch::channel(false);
        let (req_tx, req_rx) = std::sync::mpsc::sync_channel::<Request>(4);
        let off = self.cfg.power_cycle_off;
        std::thread::Builder::new()
            .name("fleetlet-gpio".into())
            .spawn(move || {
                let start = Instant::now();
                let mut raw_estop = false;
                let mut raw_since = Instant::now();
                let mut led_on = false;
                while !cancel.is_cancelled() {
                    let t = start.elapsed().as_millis() as u64;
                    if let Some(p) = self.cfg.status_led {
                        let want = pattern_rx.borrow().level_at(t);
                        if want != led_on {
                            led_on = want;
                            if let Err(e) = self.gpio.write(p.pin, level(p, want)) {
                                tracing::warn!(error = %e, "status led");
                            }
                        }
                    }
                    if let Some(pin) = self.cfg.estop_input {
                        let pressed = self.gpio.read(pin).unwrap_or(true);
                        if pressed != raw_estop {
                            raw_estop = pressed;
                            raw_since = Instant::now();
                        }
                        if raw_since.elapsed() >= self.cfg.estop_debounce
                            && *estop_tx.borrow() != raw_estop
                        {
                            estop_tx.send_replace(raw_estop);
                        }
                    }
                    match req_rx.recv_timeout(STEP) {
                        Ok(Request::PowerCycle(reply)) => {
                            let r = self.power_cycle();
                            reply.send(r).ok();
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| Error::Unavailable {
                backend: "thread",
                reason: e.to_string(),
            })?;
        Ok(Handle {
            pattern: Arc::new(pattern_tx),
            estop: estop_rx,
            requests: req_tx,
            power_cycle_off: off,
        })
    }

    fn power_cycle(&mut self) -> Result<(), Error> {
        let p = self
            .cfg
            .sensor_relay
            .ok_or(Error::NotConfigured("hal.sensor_relay"))?;
        self.gpio.write(p.pin, level(p, false))?;
        std::thread::sleep(self.cfg.power_cycle_off);
        self.gpio.write(p.pin, level(p, true))
    }
}

/// Opens the configured backend.
///
/// # Errors
/// [`Error::Unavailable`] when the backend cannot run here (not a Pi, no such GPIO chip,
/// no permission, fleetlet built without `rpi`).
pub fn open(cfg: &Config) -> Result<Box<dyn Gpio>, Error> {
    match cfg.backend {
        Backend::Sim => Ok(Box::new(sim::SimGpio::default())),
        Backend::Cdev => Ok(Box::new(cdev::CdevGpio::open(&cfg.chip)?)),
        #[cfg(feature = "rpi")]
        Backend::Rpi => Ok(Box::new(rpi::RpiGpio::new()?)),
        #[cfg(not(feature = "rpi"))]
        Backend::Rpi => Err(Error::Unavailable {
            backend: "rpi",
            reason: "this fleetlet was built without the `rpi` feature".into(),
        }),
    }
}

/// Reports the debounced e-stop input to the e-stop engine as [`Source::Input`](crate::estop::Source::Input)
/// on every change (and once at start if it is already pressed), until `cancel`.
pub fn forward_estop(
    handle: &Handle,
    estop: crate::estop::Handle,
    pin: u8,
    tracker: &tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut rx = handle.estop();
    tracker.spawn(async move {
        let detail = serde_json::json!({ "pin": pin });
        let pressed = *rx.borrow_and_update();
        if pressed {
            estop.report(crate::estop::Source::Input, true, detail.clone());
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let pressed = *rx.borrow_and_update();
            estop.report(crate::estop::Source::Input, pressed, detail.clone());
        }
    });
}

/// Starts the GPIO subsystem: opens the backend, spawns the driver thread, follows the
/// status registry with the LED, reports e-stop input edges as critical events and to the
/// e-stop engine, and registers the control op `relay.power_cycle`.
///
/// # Errors
/// [`Error::Unavailable`] / [`Error::Pin`] / [`Error::Line`].
pub async fn start(
    svc: &crate::runtime::Services,
    cfg: &Config,
    estop: crate::estop::Handle,
) -> Result<Handle, Error> {
    let reporter = svc.status.register("hal");
    let cfg2 = cfg.clone();
    let driver = tokio::task::spawn_blocking(move || {
        let gpio = open(&cfg2)?;
        Driver::new(gpio, cfg2)
    })
    .await
    .map_err(|e| Error::Unavailable {
        backend: "thread",
        reason: e.to_string(),
    })??;
    let handle = driver.spawn(svc.cancel.child_token())?;
    if let Some(pin) = cfg.estop_input {
        forward_estop(
            &handle,
            estop.clone(),
            pin,
            &svc.tracker,
            svc.cancel.child_token(),
        );
    }
    reporter.set_state(crate::status::SubsystemState::Running);
    reporter.set_detail(serde_json::json!({ "backend": cfg.backend, "chip": (cfg.backend == Backend::Cdev).then(|| cfg.chip.display().to_string()), "status_led": cfg.status_led, "estop_input": cfg.estop_input, "sensor_relay": cfg.sensor_relay }));

    let (h, status, telemetry, cancel) = (
        handle.clone(),
        svc.status.clone(),
        svc.telemetry.clone(),
        svc.cancel.child_token(),
    );
    let engine = estop;
    svc.tracker.spawn(async move {
        let mut estop = h.estop();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                r = estop.changed() => {
                    if r.is_err() { return; }
                    let pressed = *estop.borrow();
                    telemetry.event(crate::telemetry::Priority::Critical, "estop_input", serde_json::json!({ "pressed": pressed }));
                }
            }
            let snap = status.snapshot();
            // The e-stop code shows for any source (this pin or the MCU).
            let pressed = *estop.borrow() || engine.state().engaged();
            h.set_pattern(Pattern::for_states(snap.iter().filter(|(k, _)| **k != "hal").map(|(_, r)| r.state), pressed));
        }
    });
    if cfg.sensor_relay.is_some() {
        let (h, telemetry) = (handle.clone(), svc.telemetry.clone());
        svc.ops.register("relay.power_cycle", move |_| {
            let (h, telemetry) = (h.clone(), telemetry.clone());
            async move {
                let r = h.power_cycle().await;
                telemetry.event(crate::telemetry::Priority::Normal, "relay_power_cycle", serde_json::json!({ "ok": r.is_ok(), "error": r.as_ref().err().map(|e| e.to_string()) }));
                r.map(|()| serde_json::json!({ "power_cycled": true })).map_err(|e| e.to_string())
            }
        });
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SubsystemState as S;

    #[test]
    fn patterns_follow_their_steps() {
        assert!(Pattern::Starting.level_at(0));
        assert!(!Pattern::Starting.level_at(500));
        assert!(Pattern::Starting.level_at(1000));
        assert!(Pattern::Running.level_at(1899));
        assert!(!Pattern::Running.level_at(1950));
        // Estop: on 0-150, off 150-300, on 300-450, off 450-600, on 600-750, off till 1750.
        let on: Vec<bool> = [0, 200, 350, 500, 700, 800, 1700, 1760]
            .iter()
            .map(|t| Pattern::Estop.level_at(*t))
            .collect();
        assert_eq!(on, vec![true, false, true, false, true, false, false, true]);
        assert!(!Pattern::Off.level_at(10));
    }

    #[test]
    fn worst_subsystem_state_picks_the_pattern() {
        assert_eq!(
            Pattern::for_states([S::Running, S::Disabled], false),
            Pattern::Running
        );
        assert_eq!(
            Pattern::for_states([S::Running, S::Starting], false),
            Pattern::Starting
        );
        assert_eq!(
            Pattern::for_states([S::Degraded, S::Starting], false),
            Pattern::Degraded
        );
        assert_eq!(
            Pattern::for_states([S::Degraded, S::Failed, S::Running], false),
            Pattern::Failed
        );
        assert_eq!(Pattern::for_states([S::Running], true), Pattern::Estop);
    }

    fn driver(cfg: Config) -> (sim::SimGpio, Handle, tokio_util::sync::CancellationToken) {
        let gpio = sim::SimGpio::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let h = Driver::new(Box::new(gpio.clone()), cfg)
            .unwrap()
            .spawn(cancel.clone())
            .unwrap();
        (gpio, h, cancel)
    }

    #[tokio::test]
    async fn power_cycle_switches_relay_off_then_on() {
        let cfg = Config {
            sensor_relay: Some(OutputPin {
                pin: 17,
                active_low: true,
            }),
            power_cycle_off: Duration::from_millis(50),
            ..Config::default()
        };
        let (gpio, h, cancel) = driver(cfg);
        assert_eq!(gpio.level(17), Some(false), "active-low relay on = low");
        let t = Instant::now();
        h.power_cycle().await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(gpio.history(17), vec![false, true, false]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn power_cycle_without_relay_is_a_clear_error() {
        let (_gpio, h, cancel) = driver(Config::default());
        let err = h.power_cycle().await.unwrap_err();
        assert_eq!(err.to_string(), "hal.sensor_relay is not configured");
        cancel.cancel();
    }

    #[tokio::test]
    async fn estop_input_is_debounced() {
        let cfg = Config {
            estop_input: Some(5),
            estop_debounce: Duration::from_millis(40),
            ..Config::default()
        };
        let (gpio, h, cancel) = driver(cfg);
        let mut rx = h.estop();
        // A 15 ms bounce is ignored.
        gpio.set_input(5, true);
        tokio::time::sleep(Duration::from_millis(15)).await;
        gpio.set_input(5, false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!*rx.borrow_and_update());
        gpio.set_input(5, true);
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(*rx.borrow());
        cancel.cancel();
    }

    #[tokio::test]
    async fn led_blinks_the_pattern() {
        let cfg = Config {
            status_led: Some(OutputPin {
                pin: 4,
                active_low: false,
            }),
            ..Config::default()
        };
        let (gpio, h, cancel) = driver(cfg);
        h.set_pattern(Pattern::Failed);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let toggles = gpio.history(4).len();
        assert!(
            toggles >= 4,
            "fast blink toggled only {toggles} times in 700 ms"
        );
        cancel.cancel();
    }

    #[test]
    fn rpi_backend_without_feature_or_pi_fails_clearly() {
        let cfg = Config {
            backend: Backend::Rpi,
            ..Config::default()
        };
        match open(&cfg) {
            Err(Error::Unavailable {
                backend: "rpi",
                reason,
            }) => assert!(!reason.is_empty()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => assert!(
                std::path::Path::new("/dev/gpiomem").exists(),
                "opened rpi gpio on a non-Pi"
            ),
        }
    }

    #[test]
    fn validate_names_bad_pins() {
        let cfg = Config {
            estop_input: Some(40),
            status_led: Some(OutputPin {
                pin: 4,
                active_low: false,
            }),
            sensor_relay: Some(OutputPin {
                pin: 4,
                active_low: false,
            }),
            ..Config::default()
        };
        let mut p = Vec::new();
        cfg.validate(&mut p);
        let text = format!("{p:?}");
        assert!(
            text.contains("hal.estop_input") && text.contains("40"),
            "{text}"
        );
        assert!(
            text.contains("hal.sensor_relay.pin") && text.contains("used twice"),
            "{text}"
        );
    }
}
