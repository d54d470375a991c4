//! The bench rig: a real, flashed board wired to the rig host's GPIO.
//!
//! The rig host (a Raspberry Pi, or any Linux machine with a GPIO chip such as a USB-GPIO
//! adapter) drives the board's e-stop loop, reads its motor-enable output and, optionally,
//! switches its supply, through `fleetlet::hal` (backend `cdev` = `/dev/gpiochipN`, or
//! `rpi` = rppal with `--features rpi`), as the rig file's `[pins]` says. One thread owns
//! the pins: it applies commands and polls the motor-enable input every `pins.poll`
//! (1 ms by default), sending a [`PinEvent`] on every change.
//!
//! A QEMU rig boots a fresh firmware for every test; a bench board keeps its latched faults
//! from one test to the next. So every start brings the board to the same state: e-stop
//! released, then (with `pins.power_out`) a power cycle, else a short session on the serial
//! port that clears latched faults (`Hello`, `ClearFault`) and leaves motor power off.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fleetlet::hal::Gpio;
use fleetlet::serial::Port;
use fleetlet_proto::{self as proto, HostMsg, McuMsg, Refusal, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Image, PinEvent, Pins, RigDriver, RigFile};

enum Cmd {
    Estop(bool, mpsc::Sender<Result<()>>),
    Power(bool, mpsc::Sender<Result<()>>),
}

/// A board on the bench.
pub struct BenchRig {
    name: String,
    port: PathBuf,
    pins: Option<Pins>,
    cmds: Option<mpsc::SyncSender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

/// What the pins are for, for error messages.
fn describe(p: &Pins) -> String {
    let mut v = Vec::new();
    for (k, pin) in [
        ("estop_out", p.estop_out),
        ("motor_enable_in", p.motor_enable_in),
        ("power_out", p.power_out),
    ] {
        if let Some(pin) = pin {
            v.push(format!("{k} = {pin}"));
        }
    }
    match p.backend {
        fleetlet::hal::Backend::Cdev => format!(
            "[pins] backend cdev, lines on {} ({})",
            p.chip.display(),
            v.join(", ")
        ),
        b => format!("[pins] backend {b:?} ({})", v.join(", ")),
    }
}

impl BenchRig {
    /// Opens the rig's pins with the backend the rig file names.
    ///
    /// # Errors
    /// No serial device in the rig file, another image than the flashed one, the GPIO
    /// backend is not available (the error names the chip and the lines).
    pub fn start(file: &RigFile, image: Image, events: mpsc::Sender<PinEvent>) -> Result<Self> {
        let gpio = match &file.pins {
            Some(p) => {
                let g = fleetlet::hal::open(&p.hal_config())
                    .map_err(|e| anyhow!("rig {}: {}: {e}", file.name, describe(p)))?;
                Some(g)
            }
            None => None,
        };
        let mut rig = Self::with_gpio(file, image, gpio, events)?;
        let boot = Duration::from_millis(file.timing.boot_ms);
        if rig.pins.as_ref().is_some_and(|p| p.power_out.is_some()) {
            rig.replug(Duration::from_millis(300), Image::Normal)?;
        }
        clear_latched_faults(&rig.port, file.serial.baud, boot)
            .with_context(|| format!("rig {}: resetting the board at start", rig.name))?;
        Ok(rig)
    }

    /// As [`BenchRig::start`], with the pins behind `gpio` (tests use the simulated backend).
    ///
    /// # Errors
    /// As [`BenchRig::start`].
    pub fn with_gpio(
        file: &RigFile,
        image: Image,
        gpio: Option<Box<dyn Gpio>>,
        events: mpsc::Sender<PinEvent>,
    ) -> Result<Self> {
        if image != Image::Normal {
            bail!(
                "rig {}: an external board runs the firmware flashed on it; it cannot boot {image:?}",
                file.name
            );
        }
        let port = file.serial.device.clone().with_context(|| {
            format!(
                "rig {}: an external rig needs serial.device (e.g. /dev/serial/by-id/...)",
                file.name
            )
        })?;
        let mut rig = Self {
            name: file.name.clone(),
            port,
            pins: file.pins.clone(),
            cmds: None,
            thread: None,
        };
        if let (Some(p), Some(g)) = (file.pins.clone(), gpio) {
            let (tx, rx) = mpsc::sync_channel(4);
            let (ready_tx, ready_rx) = mpsc::channel();
            let name = file.name.clone();
            let thread = std::thread::Builder::new()
                .name("hil-bench-pins".into())
                .spawn(move || pin_thread(g, p, rx, events, ready_tx))?;
            ready_rx
                .recv()
                .map_err(|_| anyhow!("rig {name}: pin thread died"))?
                .with_context(|| format!("rig {}: configuring the pins", rig.name))?;
            rig.cmds = Some(tx);
            rig.thread = Some(thread);
        }
        Ok(rig)
    }

    fn call(&self, make: impl FnOnce(mpsc::Sender<Result<()>>) -> Cmd) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .as_ref()
            .with_context(|| format!("rig {} has no [pins]", self.name))?
            .send(make(tx))
            .map_err(|_| anyhow!("rig {}: pin thread is gone", self.name))?;
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|_| anyhow!("rig {}: pin thread did not answer", self.name))?
    }
}

fn level(on: bool, active_low: bool) -> bool {
    on != active_low
}

fn pin_thread(
    mut g: Box<dyn Gpio>,
    p: Pins,
    rx: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<PinEvent>,
    ready: mpsc::Sender<Result<()>>,
) {
    let setup = (|| -> Result<()> {
        if let Some(pin) = p.estop_out {
            g.output(pin, level(false, p.estop_out_active_low))?;
        }
        if let Some(pin) = p.power_out {
            g.output(pin, level(true, p.power_out_active_low))?;
        }
        if let Some(pin) = p.motor_enable_in {
            g.input(pin, p.motor_enable_bias)?;
        }
        Ok(())
    })();
    let ok = setup.is_ok();
    let _ = ready.send(setup);
    if !ok {
        return;
    }
    let mut estop = false;
    let mut last: Option<(bool, bool)> = None;
    let mut read_error_reported = false;
    loop {
        match rx.recv_timeout(p.poll) {
            Ok(Cmd::Estop(on, reply)) => {
                let r = match p.estop_out {
                    Some(pin) => g
                        .write(pin, level(on, p.estop_out_active_low))
                        .map_err(Into::into),
                    None => Err(anyhow!("rig has no pins.estop_out")),
                };
                if r.is_ok() {
                    estop = on;
                }
                let _ = reply.send(r);
            }
            Ok(Cmd::Power(on, reply)) => {
                let r = match p.power_out {
                    Some(pin) => g
                        .write(pin, level(on, p.power_out_active_low))
                        .map_err(Into::into),
                    None => Err(anyhow!("rig has no pins.power_out")),
                };
                let _ = reply.send(r);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let Some(pin) = p.motor_enable_in else {
            continue;
        };
        let motor = match g.read(pin) {
            Ok(v) => v != p.motor_enable_active_low,
            Err(e) => {
                if !read_error_reported {
                    eprintln!("hil bench rig: reading motor_enable_in: {e}");
                    read_error_reported = true;
                }
                continue;
            }
        };
        if last != Some((motor, estop)) {
            last = Some((motor, estop));
            let ev = PinEvent {
                at: Instant::now(),
                motor_enabled: motor,
                estop_pressed: estop,
                faults: None,
            };
            if events.send(ev).is_err() {
                return;
            }
        }
    }
}

impl RigDriver for BenchRig {
    fn agent_port(&self) -> PathBuf {
        self.port.clone()
    }

    fn set_estop(&mut self, pressed: bool) -> Result<()> {
        self.call(|r| Cmd::Estop(pressed, r))
    }

    fn inject_noise(&mut self, _bytes: u16) -> Result<()> {
        bail!(
            "rig {}: a bench rig cannot put noise on the board's serial line",
            self.name
        )
    }

    fn replug(&mut self, off: Duration, image: Image) -> Result<()> {
        if image != Image::Normal {
            bail!(
                "rig {}: cannot boot {image:?} on a flashed board",
                self.name
            );
        }
        if self.pins.as_ref().and_then(|p| p.power_out).is_none() {
            bail!("rig {} has no pins.power_out", self.name);
        }
        self.call(|r| Cmd::Power(false, r))?;
        std::thread::sleep(off);
        self.call(|r| Cmd::Power(true, r))
    }
}

impl Drop for BenchRig {
    fn drop(&mut self) {
        // Stops the pin thread; the lines are released when its GPIO handle drops.
        self.cmds = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a short session on the board's port and clears its latched faults, leaving motor
/// power off (no enable is requested, so no heartbeat fault latches when it closes).
///
/// # Errors
/// No `HelloAck` within `boot`, the e-stop is still pressed, the port cannot be opened.
pub fn clear_latched_faults(port: &std::path::Path, baud: u32, boot: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sp = fleetlet::serial::SerialPort::new(port.to_path_buf(), baud);
        let deadline = tokio::time::Instant::now() + boot;
        // A board that is its own USB device re-enumerates after a power cycle: retry.
        let io = loop {
            match sp.open() {
                Ok(io) => break io,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("opening {}", port.display()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut dec = proto::Decoder::<McuMsg>::new();
        let mut buf = [0u8; 256];
        let mut seq = 0u32;
        let mut frame = |m: HostMsg| {
            let mut out = [0u8; proto::MAX_FRAME];
            let n = proto::encode(seq, &m, &mut out).map_err(|e| anyhow!("{e}"))?;
            seq = seq.wrapping_add(1);
            anyhow::Ok(out[..n].to_vec())
        };
        let hello = HostMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent: proto::Version::new(0, 0, 0),
        };
        let mut session = false;
        wr.write_all(&[0]).await?;
        loop {
            let msg = if session {
                frame(HostMsg::ClearFault)?
            } else {
                frame(hello)?
            };
            wr.write_all(&msg).await?;
            let until = tokio::time::Instant::now() + Duration::from_millis(200);
            loop {
                let n = tokio::select! {
                    _ = tokio::time::sleep_until(until.min(deadline)) => break,
                    r = rd.read(&mut buf) => r?,
                };
                for b in &buf[..n] {
                    if let Some(Ok(f)) = dec.push(*b) {
                        match f.msg {
                            McuMsg::HelloAck { accepted: true, .. } => session = true,
                            McuMsg::HelloAck { protocol, .. } => bail!(
                                "the board speaks protocol {protocol}, this suite {PROTOCOL_VERSION}"
                            ),
                            McuMsg::Status(s) if session && s.faults.is_empty() => {
                                return Ok(());
                            }
                            McuMsg::Refused {
                                reason: Refusal::EstopPressed,
                                ..
                            } if session => bail!(
                                "the board reports its e-stop pressed (check the e-stop loop and pins.estop_out_active_low)"
                            ),
                            _ => {}
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "no {} from the board on {} within {boot:?}",
                    if session { "fault clear" } else { "HelloAck" },
                    port.display()
                );
            }
        }
    })
}
