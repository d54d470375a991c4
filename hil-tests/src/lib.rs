//! Hardware-in-the-loop rig for the fleetlet ↔ safety MCU link.
//!
//! A rig is described by a TOML file ([`RigFile`]): where the MCU's serial port is, how
//! the firmware is started, how the rig presses the e-stop and reads the motor-enable
//! output, and the timing tolerances. Every rig is driven through one trait,
//! [`RigDriver`], behind [`Rig`], so the same tests run on each:
//! - [`qemu::QemuRig`] (`rigs/qemu.toml`, the default, in CI) boots the QEMU firmware with
//!   UART0 (agent link) and UART1 (rig port: e-stop, noise, pins, faults) on ptys;
//! - [`bench::BenchRig`] (`firmware.kind = "external"`, e.g. `rigs/bench-pico.toml`) is a
//!   flashed board whose e-stop loop, motor-enable output and (optionally) supply are wired
//!   to the rig host's GPIO, used through `fleetlet::hal` (`cdev` or `rpi` backend).
//!
//! A test needing something a rig cannot do ([`Capability`]) says which and what the rig
//! file lacks, and returns early.
//!
//! The agent side under test is the `hil-agent` binary of this crate: the real
//! `fleetlet::serial` link in its own process (so it can be SIGKILLed or stalled), printing
//! every telemetry record as a JSON line.

pub mod bench;
pub mod qemu;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleetlet_proto::{self as proto, Faults};
use serde::Deserialize;

/// The rig file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigFile {
    /// Rig name (printed in test output).
    pub name: String,
    /// How the firmware runs.
    pub firmware: Firmware,
    /// Serial settings.
    #[serde(default)]
    pub serial: Serial,
    /// Rig-host pins wired to the board (for `firmware.kind = "external"`).
    pub pins: Option<Pins>,
    /// Timing.
    #[serde(default)]
    pub timing: Timing,
}

/// How the firmware runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Firmware {
    /// QEMU boots the image; UART0 and UART1 go to ptys.
    Qemu {
        /// QEMU binary.
        #[serde(default = "default_qemu")]
        qemu: String,
        /// QEMU machine.
        #[serde(default = "default_machine")]
        machine: String,
        /// Firmware image (relative paths are relative to the rig file).
        image: PathBuf,
        /// Image built with the `protocol-mismatch` feature.
        mismatch_image: Option<PathBuf>,
        /// Commands run once before the first test (e.g. building the images), in the
        /// rig file's directory.
        #[serde(default)]
        build: Vec<String>,
    },
    /// A real board, already flashed and wired to the bench host.
    External,
}

fn default_qemu() -> String {
    "qemu-system-arm".into()
}
fn default_machine() -> String {
    "lm3s6965evb".into()
}

/// Serial settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Serial {
    /// Device (external rigs only; QEMU rigs get a pty).
    pub device: Option<PathBuf>,
    /// Baud rate.
    pub baud: u32,
}

impl Default for Serial {
    fn default() -> Self {
        Self {
            device: None,
            baud: 115_200,
        }
    }
}

/// Rig-host pins wired to the board, and the GPIO backend that drives them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// `cdev` (Linux GPIO character device, default) or `rpi` (rppal; build hil-tests
    /// with `--features rpi`).
    #[serde(default = "default_pin_backend")]
    pub backend: fleetlet::hal::Backend,
    /// GPIO chip for `cdev` (pins are line offsets on it).
    #[serde(default = "default_chip")]
    pub chip: PathBuf,
    /// Output that opens the board's e-stop loop ("pressed") when active.
    pub estop_out: Option<u8>,
    /// `estop_out` is active low.
    #[serde(default)]
    pub estop_out_active_low: bool,
    /// Input reading the board's motor-enable output.
    pub motor_enable_in: Option<u8>,
    /// `motor_enable_in` is active low.
    #[serde(default)]
    pub motor_enable_active_low: bool,
    /// Pull resistor on `motor_enable_in` (default none: the board drives it).
    #[serde(default)]
    pub motor_enable_bias: fleetlet::hal::Bias,
    /// Output switching the board's supply (a relay), active = powered: the replug test.
    pub power_out: Option<u8>,
    /// `power_out` is active low.
    #[serde(default)]
    pub power_out_active_low: bool,
    /// How often `motor_enable_in` is sampled.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
}

fn default_pin_backend() -> fleetlet::hal::Backend {
    fleetlet::hal::Backend::Cdev
}
fn default_chip() -> PathBuf {
    PathBuf::from(fleetlet::hal::DEFAULT_CHIP)
}
fn default_poll() -> Duration {
    Duration::from_millis(1)
}

impl Pins {
    /// The `fleetlet::hal` config that opens this backend.
    pub fn hal_config(&self) -> fleetlet::hal::Config {
        fleetlet::hal::Config {
            backend: self.backend,
            chip: self.chip.clone(),
            ..fleetlet::hal::Config::default()
        }
    }
}

/// Timing expectations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// The firmware's heartbeat timeout.
    pub heartbeat_timeout_ms: u64,
    /// Allowed lateness on top of it (scheduling, USB latency, emulation).
    pub tolerance_ms: u64,
    /// How long a fresh firmware may take until it answers.
    pub boot_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: u64::from(proto::DEFAULT_HEARTBEAT_TIMEOUT_MS),
            tolerance_ms: 100,
            boot_ms: 3000,
        }
    }
}

impl RigFile {
    /// The rig named by `HIL_RIG`, or the QEMU rig next to this crate.
    ///
    /// # Errors
    /// Unreadable or invalid rig file.
    pub fn from_env() -> Result<(Self, PathBuf)> {
        let path = std::env::var_os("HIL_RIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("rigs/qemu.toml"));
        let path = std::fs::canonicalize(&path)
            .with_context(|| format!("rig file {} (HIL_RIG)", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading rig file {}", path.display()))?;
        let rig: Self =
            toml::from_str(&text).with_context(|| format!("rig file {}", path.display()))?;
        Ok((rig, path))
    }

    /// Why this rig cannot do `cap` (naming what the rig file lacks), or `None` if it can.
    pub fn missing(&self, cap: Capability) -> Option<String> {
        let pins = self.pins.as_ref();
        let need = |ok: bool, key: &str| {
            (!ok).then(|| format!("rig {} has no {key} in its rig file", self.name))
        };
        match (&self.firmware, cap) {
            (Firmware::Qemu { .. }, Capability::BootMismatchImage) => need(
                matches!(
                    &self.firmware,
                    Firmware::Qemu {
                        mismatch_image: Some(_),
                        ..
                    }
                ),
                "firmware.mismatch_image",
            ),
            (Firmware::Qemu { .. }, _) => None,
            (Firmware::External, Capability::PressEstop) => need(
                pins.is_some_and(|p| p.estop_out.is_some()),
                "pins.estop_out",
            ),
            (Firmware::External, Capability::ReadMotorEnable) => need(
                pins.is_some_and(|p| p.motor_enable_in.is_some()),
                "pins.motor_enable_in",
            ),
            (Firmware::External, Capability::Replug) => need(
                pins.is_some_and(|p| p.power_out.is_some()),
                "pins.power_out",
            ),
            (Firmware::External, Capability::InjectNoise) => Some(format!(
                "rig {}: a bench rig cannot put noise on the board's serial line",
                self.name
            )),
            (Firmware::External, Capability::BootMismatchImage) => Some(format!(
                "rig {}: a bench board runs the firmware flashed on it",
                self.name
            )),
        }
    }

    /// Runs the rig's build commands.
    ///
    /// # Errors
    /// A command failed.
    pub fn build(&self, dir: &Path) -> Result<()> {
        if let Firmware::Qemu { build, .. } = &self.firmware {
            for cmd in build {
                let st = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .current_dir(dir)
                    .status()
                    .with_context(|| format!("running `{cmd}`"))?;
                if !st.success() {
                    bail!("rig build command `{cmd}` failed: {st}");
                }
            }
        }
        Ok(())
    }
}

/// Something a test needs from the rig beyond the serial link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Press and release the board's e-stop input.
    PressEstop,
    /// Read the board's motor-enable output.
    ReadMotorEnable,
    /// Put line noise on the agent link.
    InjectNoise,
    /// Power the board off and on (its port goes away or goes silent).
    Replug,
    /// Boot the protocol-mismatch firmware.
    BootMismatchImage,
}

/// One observation of the board's pins.
#[derive(Debug, Clone, Copy)]
pub struct PinEvent {
    /// Host time of arrival.
    pub at: Instant,
    /// Motor-enable output.
    pub motor_enabled: bool,
    /// E-stop input (on a bench rig: the level the rig drives).
    pub estop_pressed: bool,
    /// Latched faults, when the rig can see them (the QEMU rig port reports them; a bench
    /// rig sees pins only: ask the agent's link state instead).
    pub faults: Option<Faults>,
}

/// What every rig implements. Pin observations go to the `mpsc::Sender<PinEvent>` the
/// rig was started with.
pub trait RigDriver: Send {
    /// The serial device the agent opens.
    fn agent_port(&self) -> PathBuf;
    /// Presses (`true`) or releases the board's e-stop.
    ///
    /// # Errors
    /// The rig cannot, or its pin/port failed.
    fn set_estop(&mut self, pressed: bool) -> Result<()>;
    /// Sends `bytes` of line noise onto the agent link.
    ///
    /// # Errors
    /// The rig cannot.
    fn inject_noise(&mut self, bytes: u16) -> Result<()>;
    /// Powers the board off for `off`, then boots `image`.
    ///
    /// # Errors
    /// The rig cannot, or the board does not come back.
    fn replug(&mut self, off: Duration, image: Image) -> Result<()>;
}

/// Which image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// The normal firmware.
    Normal,
    /// The protocol-mismatch build.
    Mismatch,
}

/// A running rig: a [`RigDriver`] plus the pin observations.
pub struct Rig {
    /// The rig file.
    pub file: RigFile,
    driver: Box<dyn RigDriver>,
    events: mpsc::Receiver<PinEvent>,
    /// Last known pin state.
    pub last: Option<PinEvent>,
}

impl Rig {
    /// Starts the rig the file describes (boots QEMU, or opens a bench rig's pins).
    ///
    /// # Errors
    /// The firmware does not start, the image is missing, the GPIO backend is not
    /// available (naming the chip and lines).
    pub fn start(file: RigFile, rig_path: &Path, image: Image) -> Result<Self> {
        let (tx, events) = mpsc::channel();
        let driver: Box<dyn RigDriver> = match file.firmware {
            Firmware::Qemu { .. } => {
                Box::new(qemu::QemuRig::start(file.clone(), rig_path, image, tx)?)
            }
            Firmware::External => Box::new(bench::BenchRig::start(&file, image, tx)?),
        };
        Ok(Self::with_driver(file, driver, events))
    }

    /// A rig over any driver (tests of the rig itself).
    pub fn with_driver(
        file: RigFile,
        driver: Box<dyn RigDriver>,
        events: mpsc::Receiver<PinEvent>,
    ) -> Self {
        Self {
            file,
            driver,
            events,
            last: None,
        }
    }

    /// The serial device the agent opens.
    pub fn agent_port(&self) -> PathBuf {
        self.driver.agent_port()
    }

    /// Why the rig cannot do `cap`, or `None`.
    pub fn missing(&self, cap: Capability) -> Option<String> {
        self.file.missing(cap)
    }

    /// Presses or releases the e-stop.
    ///
    /// # Errors
    /// As [`RigDriver::set_estop`].
    pub fn set_estop(&mut self, pressed: bool) -> Result<()> {
        self.driver.set_estop(pressed)
    }

    /// Sends line noise onto the agent link.
    ///
    /// # Errors
    /// As [`RigDriver::inject_noise`].
    pub fn inject_noise(&mut self, bytes: u16) -> Result<()> {
        self.driver.inject_noise(bytes)
    }

    /// Waits for a pin event matching `pred` (checking the last known state first).
    ///
    /// # Errors
    /// Timeout, naming `what`.
    pub fn wait_pins(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&PinEvent) -> bool,
    ) -> Result<PinEvent> {
        if let Some(l) = self.last.filter(|l| pred(l)) {
            return Ok(l);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    self.last = Some(ev);
                    if pred(&ev) {
                        return Ok(ev);
                    }
                }
                Err(_) => bail!(
                    "rig {}: timed out after {timeout:?} waiting for {what}; last pins: {:?}",
                    self.file.name,
                    self.last
                ),
            }
        }
    }

    /// Collects pin events for `d` and returns them.
    pub fn watch_pins(&mut self, d: Duration) -> Vec<PinEvent> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        while let Ok(ev) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.last = Some(ev);
            v.push(ev);
        }
        v
    }

    /// Powers the MCU off (the port disappears or goes silent), waits `off`, and boots it
    /// again.
    ///
    /// # Errors
    /// As [`RigDriver::replug`].
    pub fn replug(&mut self, off: Duration, image: Image) -> Result<()> {
        self.last = None;
        self.driver.replug(off, image)
    }
}

/// One line printed by `hil-agent`.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentLine {
    /// `record` or `state`.
    pub kind: String,
    /// The telemetry record (`kind = "record"`).
    #[serde(default)]
    pub record: Option<serde_json::Value>,
    /// The link state (`kind = "state"`).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
    /// Command outcome (`kind = "reply"`).
    #[serde(default)]
    pub ok: Option<bool>,
    /// Command error (`kind = "reply"`).
    #[serde(default)]
    pub error: Option<String>,
}

/// A running `hil-agent` process.
pub struct Agent {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<AgentLine>,
    /// Every line seen so far.
    pub seen: Vec<AgentLine>,
}

impl Agent {
    /// Starts `hil-agent` (path from the test's `CARGO_BIN_EXE_hil-agent`) with `args`.
    ///
    /// # Errors
    /// Spawn failure.
    pub fn start(bin: &str, args: &[String]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stdin = child.stdin.take().context("agent stdin")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(l) = serde_json::from_str::<AgentLine>(&line) {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line (`arm`, `clear`, `disarm`, `stall <ms>`).
    ///
    /// # Errors
    /// The agent is gone.
    pub fn command(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for a telemetry record matching `pred` (also among those already seen).
    ///
    /// # Errors
    /// Timeout naming `what`.
    pub fn wait_record(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        if let Some(r) = self
            .seen
            .iter()
            .filter_map(|l| l.record.as_ref())
            .find(|r| pred(r))
        {
            return Ok(r.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let hit = l.record.as_ref().filter(|r| pred(r)).cloned();
                    self.seen.push(l);
                    if let Some(r) = hit {
                        return Ok(r);
                    }
                }
                Err(_) => bail!(
                    "agent: timed out after {timeout:?} waiting for {what}; last lines: {:?}",
                    self.seen.iter().rev().take(8).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for an event record of `kind` (stream `events`).
    ///
    /// # Errors
    /// Timeout.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.wait_record(&format!("event {kind}"), timeout, |r| {
            r["stream"] == "events" && r["payload"]["kind"] == kind
        })
    }

    /// Waits for a link state matching `pred`.
    ///
    /// # Errors
    /// Timeout.
    pub fn wait_state(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let hit = l.state.as_ref().filter(|s| pred(s)).cloned();
                    self.seen.push(l);
                    if let Some(s) = hit {
                        return Ok(s);
                    }
                }
                Err(_) => bail!("agent: timed out after {timeout:?} waiting for state {what}"),
            }
        }
    }

    /// Waits for the answer to the last command: `Ok(None)` on success, `Ok(Some(error))`.
    ///
    /// # Errors
    /// Timeout.
    pub fn wait_reply(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let done = l.kind == "reply";
                    let (ok, err) = (l.ok, l.error.clone());
                    self.seen.push(l);
                    if done {
                        return Ok(if ok == Some(true) {
                            None
                        } else {
                            Some(err.unwrap_or_default())
                        });
                    }
                }
                Err(_) => bail!("agent: no reply to the command within {timeout:?}"),
            }
        }
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The scheduler state letter of a process (`T` = stopped), from `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rfind(')')?;
    s[after + 1..].trim_start().chars().next()
}
