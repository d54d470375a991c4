//! Hardware-in-the-loop rig for the fleetlet ↔ safety MCU link.
//!
//! A rig is described by a TOML file ([`RigFile`]): where the MCU's serial port is, how
//! the firmware is started, how the rig presses the e-stop and reads the motor-enable
//! output, and the timing tolerances. The default rig (`rigs/qemu.toml`) boots the QEMU
//! firmware with UART0 (agent link) and UART1 (rig port) on ptys; a bench rig points at a
//! real board (`HIL_RIG=rigs/bench-pico.toml`).
//!
//! The agent side under test is the `hil-agent` binary of this crate: the real
//! `fleetlet::serial` link in its own process (so it can be SIGKILLed or stalled), printing
//! every telemetry record as a JSON line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleetlet_proto::{self as proto, Faults, RigCmd, RigEvent};
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
    /// Bench rig pins (for `firmware.kind = "external"`).
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

/// Bench-host pins wired to the board (BCM numbers, read through `fleetlet::hal`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// Output that opens the board's e-stop loop when high.
    pub estop_out: u8,
    /// Input that reads the board's motor-enable output.
    pub motor_enable_in: u8,
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

/// One observation from the rig port.
#[derive(Debug, Clone, Copy)]
pub struct PinEvent {
    /// Host time of arrival.
    pub at: Instant,
    /// Motor-enable output.
    pub motor_enabled: bool,
    /// E-stop input.
    pub estop_pressed: bool,
    /// Latched faults.
    pub faults: Faults,
}

/// A running rig: the agent-side port path and the rig control channel.
pub struct Rig {
    /// The rig file.
    pub file: RigFile,
    dir: PathBuf,
    tmp: PathBuf,
    qemu: Option<Child>,
    rig_tx: Option<std::fs::File>,
    rig_seq: u32,
    events: mpsc::Receiver<PinEvent>,
    events_tx: mpsc::Sender<PinEvent>,
    /// Last known pin state.
    pub last: Option<PinEvent>,
}

/// Which image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// The normal firmware.
    Normal,
    /// The protocol-mismatch build.
    Mismatch,
}

impl Rig {
    /// Starts the rig (boots QEMU for a QEMU rig).
    ///
    /// # Errors
    /// The firmware does not start, the ptys do not appear, the image is missing.
    pub fn start(file: RigFile, rig_path: &Path, image: Image) -> Result<Self> {
        let dir = rig_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = std::env::temp_dir().join(format!(
            "hil-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32())
        ));
        std::fs::create_dir_all(&tmp)?;
        let (events_tx, events) = mpsc::channel();
        let mut rig = Self {
            file,
            dir,
            tmp,
            qemu: None,
            rig_tx: None,
            rig_seq: 0,
            events,
            events_tx,
            last: None,
        };
        rig.boot(image)?;
        Ok(rig)
    }

    /// The serial device the agent opens (a stable symlink for QEMU rigs, repointed on
    /// every boot like udev's `/dev/serial/by-id`).
    pub fn agent_port(&self) -> PathBuf {
        match (&self.file.firmware, &self.file.serial.device) {
            (Firmware::External, Some(d)) => d.clone(),
            _ => self.tmp.join("mcu0"),
        }
    }

    /// Whether the rig can replug the MCU and inject noise (QEMU rigs can).
    pub fn is_emulated(&self) -> bool {
        matches!(self.file.firmware, Firmware::Qemu { .. })
    }

    fn boot(&mut self, image: Image) -> Result<()> {
        let Firmware::Qemu {
            qemu,
            machine,
            image: normal,
            mismatch_image,
            ..
        } = &self.file.firmware
        else {
            bail!("external rigs are driven through pins; gpio bench rigs need the `rpi` feature of fleetlet on the bench host");
        };
        let img = match image {
            Image::Normal => normal.clone(),
            Image::Mismatch => mismatch_image
                .clone()
                .context("rig has no firmware.mismatch_image")?,
        };
        let img = self.dir.join(img);
        if !img.exists() {
            bail!(
                "firmware image {} is missing; build it with scripts/test.d/40-firmware.sh",
                img.display()
            );
        }
        let mut child = Command::new(qemu)
            .args(["-M", machine, "-nographic", "-monitor", "none"])
            .args(["-serial", "pty", "-serial", "pty", "-kernel"])
            .arg(&img)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {qemu}"))?;
        // QEMU prints "char device redirected to /dev/pts/N" per UART (stderr on 7.x,
        // stdout on some builds): read both.
        let (line_tx, line_rx) = mpsc::channel::<String>();
        let out = child.stdout.take().context("qemu stdout")?;
        let err = child.stderr.take().context("qemu stderr")?;
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tx = line_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let _ = tx.send(line);
                }
            });
        }
        let mut ptys = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ptys.len() < 2 {
            let Ok(line) = line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                break;
            };
            if let Some(i) = line.find("/dev/pts/") {
                let p: String = line[i..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                ptys.push(PathBuf::from(p));
            }
        }
        if ptys.len() < 2 {
            let _ = child.kill();
            let _ = child.wait();
            bail!("qemu did not report two ptys within 10 s (got {ptys:?})");
        }
        let link = self.agent_port();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&ptys[0], &link)?;
        self.qemu = Some(child);
        self.open_rig_port(&ptys[1])?;
        Ok(())
    }

    fn open_rig_port(&mut self, pty: &Path) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty)
            .with_context(|| format!("opening rig port {}", pty.display()))?;
        let mut t = nix::sys::termios::tcgetattr(&f)?;
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(&f, nix::sys::termios::SetArg::TCSANOW, &t)?;
        let mut rd = f.try_clone()?;
        let tx = self.events_tx.clone();
        std::thread::spawn(move || {
            let mut dec = proto::Decoder::<RigEvent>::new();
            let mut buf = [0u8; 64];
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 {
                    return;
                }
                for b in &buf[..n] {
                    if let Some(Ok(f)) = dec.push(*b) {
                        let RigEvent::Pins {
                            motor_enabled,
                            estop_pressed,
                            faults,
                            ..
                        } = f.msg;
                        let ev = PinEvent {
                            at: Instant::now(),
                            motor_enabled,
                            estop_pressed,
                            faults,
                        };
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        self.rig_tx = Some(f);
        Ok(())
    }

    /// Sends a rig command.
    ///
    /// # Errors
    /// The rig port is closed.
    pub fn send(&mut self, cmd: RigCmd) -> Result<()> {
        let mut out = [0u8; proto::MAX_FRAME];
        let n = proto::encode(self.rig_seq, &cmd, &mut out)?;
        self.rig_seq = self.rig_seq.wrapping_add(1);
        self.rig_tx
            .as_mut()
            .context("rig port not open")?
            .write_all(&out[..n])?;
        Ok(())
    }

    /// Presses or releases the e-stop.
    ///
    /// # Errors
    /// As [`Rig::send`].
    pub fn set_estop(&mut self, pressed: bool) -> Result<()> {
        self.send(RigCmd::SetEstop(pressed))
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

    /// Powers the MCU off (the port disappears), waits `off`, and boots it again.
    ///
    /// # Errors
    /// Boot failures.
    pub fn replug(&mut self, off: Duration, image: Image) -> Result<()> {
        self.shutdown();
        let _ = std::fs::remove_file(self.agent_port());
        std::thread::sleep(off);
        self.last = None;
        self.boot(image)
    }

    fn shutdown(&mut self) {
        self.rig_tx = None;
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
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
