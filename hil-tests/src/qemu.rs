//! The QEMU rig: boots the firmware in `qemu-system-arm` with UART0 (agent link) and UART1
//! (rig port) on ptys. The rig port speaks `RigCmd`/`RigEvent`: that is how this rig
//! presses the e-stop, injects line noise and reads the motor-enable output and the
//! latched faults.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleetlet_proto::{self as proto, RigCmd, RigEvent};

use crate::{Firmware, Image, PinEvent, RigDriver, RigFile};

/// A firmware in QEMU.
pub struct QemuRig {
    file: RigFile,
    dir: PathBuf,
    tmp: PathBuf,
    qemu: Option<Child>,
    rig_tx: Option<std::fs::File>,
    rig_seq: u32,
    events: mpsc::Sender<PinEvent>,
}

impl QemuRig {
    /// Boots `image`; pin events go to `events`.
    ///
    /// # Errors
    /// QEMU does not start, the ptys do not appear, the image is missing.
    pub fn start(
        file: RigFile,
        rig_path: &Path,
        image: Image,
        events: mpsc::Sender<PinEvent>,
    ) -> Result<Self> {
        let dir = rig_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = std::env::temp_dir().join(format!(
            "hil-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32())
        ));
        std::fs::create_dir_all(&tmp)?;
        let mut rig = Self {
            file,
            dir,
            tmp,
            qemu: None,
            rig_tx: None,
            rig_seq: 0,
            events,
        };
        rig.boot(image)?;
        Ok(rig)
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
            bail!("not a QEMU rig");
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
        let tx = self.events.clone();
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
                            faults: Some(faults),
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

    /// Sends a rig command on UART1.
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

    fn shutdown(&mut self) {
        self.rig_tx = None;
        if let Some(mut c) = self.qemu.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl RigDriver for QemuRig {
    fn agent_port(&self) -> PathBuf {
        // A stable symlink, re-pointed on every boot like udev's /dev/serial/by-id.
        self.tmp.join("mcu0")
    }

    fn set_estop(&mut self, pressed: bool) -> Result<()> {
        self.send(RigCmd::SetEstop(pressed))
    }

    fn inject_noise(&mut self, bytes: u16) -> Result<()> {
        self.send(RigCmd::InjectNoise(bytes))
    }

    fn replug(&mut self, off: Duration, image: Image) -> Result<()> {
        self.shutdown();
        let _ = std::fs::remove_file(self.agent_port());
        std::thread::sleep(off);
        self.boot(image)
    }
}

impl Drop for QemuRig {
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
