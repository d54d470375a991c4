//! The hardware-in-the-loop suite. Runs against the rig in `HIL_RIG` (default: the QEMU
//! rig, `rigs/qemu.toml`). Tests run one at a time (they share the rig's timing budget).
//! Tests needing rig capabilities a bench rig lacks (pin access, noise, replug) say so and
//! return early on such rigs.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use fleetlet_proto::{self as proto, Faults, HostMsg, McuMsg, Refusal, PROTOCOL_VERSION};
use hil_tests::{proc_state, Agent, Image, Rig, RigFile};

static LOADED: OnceLock<Result<(RigFile, PathBuf), String>> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn rig(image: Image) -> (MutexGuard<'static, ()>, Rig) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let loaded = LOADED.get_or_init(|| {
        let (file, path) = RigFile::from_env().map_err(|e| format!("{e:#}"))?;
        let dir = path.parent().unwrap().to_path_buf();
        file.build(&dir).map_err(|e| format!("{e:#}"))?;
        Ok((file, path))
    });
    let (file, path) = loaded.as_ref().expect("rig setup failed");
    let rig = Rig::start(file.clone(), path, image).expect("rig start");
    (guard, rig)
}

fn agent(rig: &Rig, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--port".to_string(),
        rig.agent_port().display().to_string(),
        "--baud".into(),
        rig.file.serial.baud.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Agent::start(env!("CARGO_BIN_EXE_hil-agent"), &args).expect("start hil-agent")
}

fn boot(rig: &Rig) -> Duration {
    Duration::from_millis(rig.file.timing.boot_ms)
}

fn cut_limit(rig: &Rig) -> Duration {
    Duration::from_millis(rig.file.timing.heartbeat_timeout_ms + rig.file.timing.tolerance_ms)
}

/// A real child process for the e-stop policy to act on.
struct Proc(Child);

impl Proc {
    fn sleep() -> Self {
        use std::os::unix::process::CommandExt;
        // Its own process group, like a supervised process: a stopped process in a group
        // that becomes orphaned would get SIGHUP + SIGCONT from the kernel.
        Self(
            Command::new("sleep")
                .arg("600")
                .process_group(0)
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip_unless_emulated(rig: &Rig, what: &str) -> bool {
    if rig.is_emulated() {
        return false;
    }
    eprintln!(
        "skipped on rig {}: {what} needs an emulated rig",
        rig.file.name
    );
    true
}

/// Waits until the agent has handshaken and the MCU reports motor power on.
fn until_armed(rig: &mut Rig, agent: &mut Agent) {
    agent.wait_event("mcu_connected", boot(rig)).unwrap();
    rig.wait_pins("motor enabled", Duration::from_secs(5), |p| p.motor_enabled)
        .unwrap();
}

#[test]
fn handshake_reports_protocol_and_firmware_versions() {
    let (_g, mut rig) = rig(Image::Normal);
    let mut agent = agent(&rig, &[]);
    let ev = agent.wait_event("mcu_connected", boot(&rig)).unwrap();
    let p = &ev["payload"];
    assert_eq!(p["protocol"], PROTOCOL_VERSION);
    assert_eq!(p["agent_protocol"], PROTOCOL_VERSION);
    assert_eq!(
        p["heartbeat_timeout_ms"],
        rig.file.timing.heartbeat_timeout_ms
    );
    let fw = p["firmware"].as_str().unwrap();
    assert_eq!(fw.split('.').count(), 3, "firmware version {fw}");
    assert!(
        fw.split('.').all(|n| n.parse::<u16>().is_ok()),
        "firmware version {fw}"
    );
    if rig.is_emulated() {
        assert_eq!(p["board"], "qemu-lm3s6965");
        assert_eq!(ev["priority"], "normal");
        // Auto-enable after the handshake: the firmware's motor-enable output goes on.
        rig.wait_pins("motor enabled", Duration::from_secs(5), |p| p.motor_enabled)
            .unwrap();
    }
    let state = agent
        .wait_state("connected", Duration::from_secs(5), |s| {
            s["connected"] == true
        })
        .unwrap();
    assert_eq!(state["firmware"], fw);
    assert_eq!(state["mcu_protocol"], PROTOCOL_VERSION);
}

#[test]
fn agent_killed_with_sigkill_cuts_motor_power_within_heartbeat_timeout() {
    let (_g, mut rig) = rig(Image::Normal);
    if skip_unless_emulated(&rig, "reading the motor-enable pin") {
        return;
    }
    let mut agent = agent(&rig, &[]);
    until_armed(&mut rig, &mut agent);
    let t0 = Instant::now();
    agent.kill();
    let off = rig
        .wait_pins("motor disabled", Duration::from_secs(3), |p| {
            !p.motor_enabled
        })
        .unwrap();
    let took = off.at.saturating_duration_since(t0);
    assert!(
        took <= cut_limit(&rig),
        "motor power cut {took:?} after SIGKILL, limit {:?}",
        cut_limit(&rig)
    );
    assert!(off.faults.contains(Faults::HEARTBEAT_TIMEOUT), "{off:?}");
}

#[test]
fn stalled_agent_event_loop_cuts_motor_power_and_recovery_does_not_resume_it() {
    let (_g, mut rig) = rig(Image::Normal);
    if skip_unless_emulated(&rig, "reading the motor-enable pin") {
        return;
    }
    let mut agent = agent(&rig, &[]);
    until_armed(&mut rig, &mut agent);
    let t0 = Instant::now();
    agent.command("stall 1500").unwrap();
    let off = rig
        .wait_pins("motor disabled", Duration::from_secs(3), |p| {
            !p.motor_enabled
        })
        .unwrap();
    let took = off.at.saturating_duration_since(t0);
    assert!(
        took <= cut_limit(&rig),
        "motor power cut {took:?} after the stall began"
    );
    assert!(off.faults.contains(Faults::HEARTBEAT_TIMEOUT));
    // The agent comes back and heartbeats again; the latched fault keeps power off.
    let fault = agent
        .wait_event("mcu_fault", Duration::from_secs(5))
        .unwrap();
    assert_eq!(fault["payload"]["fault"], "heartbeat_timeout");
    assert_eq!(fault["priority"], "critical");
    let after = rig.watch_pins(Duration::from_millis(1500));
    assert!(
        after.iter().all(|p| !p.motor_enabled),
        "power came back by itself: {after:?}"
    );
    // The explicit arm flow re-enables it.
    agent.command("arm").unwrap();
    assert_eq!(agent.wait_reply(Duration::from_secs(5)).unwrap(), None);
    rig.wait_pins("motor re-enabled after arm", Duration::from_secs(3), |p| {
        p.motor_enabled
    })
    .unwrap();
}

#[test]
fn estop_pauses_processes_and_queues_critical_event_and_clear_resumes_them() {
    let (_g, mut rig) = rig(Image::Normal);
    if skip_unless_emulated(&rig, "pressing the e-stop") {
        return;
    }
    let nav = Proc::sleep();
    let planner = Proc::sleep();
    let mut agent = agent(
        &rig,
        &[
            "--estop-action",
            "pause",
            "--process",
            &format!("nav={}", nav.pid()),
            "--process",
            &format!("planner={}", planner.pid()),
            "--motion-critical",
            "nav",
        ],
    );
    until_armed(&mut rig, &mut agent);

    rig.set_estop(true).unwrap();
    rig.wait_pins("motor disabled by e-stop", Duration::from_secs(2), |p| {
        !p.motor_enabled && p.estop_pressed
    })
    .unwrap();
    let ev = agent.wait_event("estop", Duration::from_secs(3)).unwrap();
    assert_eq!(ev["priority"], "critical");
    assert_eq!(ev["payload"]["action"], "pause");
    for name in ["nav", "planner"] {
        let step = agent
            .wait_record(
                &format!("pause step for {name}"),
                Duration::from_secs(3),
                |r| {
                    r["payload"]["kind"] == "estop_action"
                        && r["payload"]["process"] == name
                        && r["payload"]["action"] == "pause"
                },
            )
            .unwrap();
        assert_eq!(step["payload"]["ok"], true, "{step}");
        assert_eq!(step["priority"], "critical");
    }
    assert_eq!(proc_state(nav.pid()), Some('T'));
    assert_eq!(proc_state(planner.pid()), Some('T'));

    // Releasing the button does not resume anything: the e-stop is latched.
    rig.set_estop(false).unwrap();
    rig.wait_pins("e-stop released", Duration::from_secs(2), |p| {
        !p.estop_pressed
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        proc_state(nav.pid()),
        Some('T'),
        "resumed before the latch was cleared: {:#?}",
        agent.seen.iter().rev().take(12).collect::<Vec<_>>()
    );

    // The operator clears it: processes resume, and the link re-enables motor power.
    agent.command("clear").unwrap();
    assert_eq!(agent.wait_reply(Duration::from_secs(5)).unwrap(), None);
    let cleared = agent
        .wait_event("estop_cleared", Duration::from_secs(3))
        .unwrap();
    assert_eq!(cleared["priority"], "critical");
    for name in ["nav", "planner"] {
        agent
            .wait_record(
                &format!("resume step for {name}"),
                Duration::from_secs(3),
                |r| {
                    r["payload"]["kind"] == "estop_action"
                        && r["payload"]["process"] == name
                        && r["payload"]["action"] == "resume"
                        && r["payload"]["ok"] == true
                },
            )
            .unwrap();
    }
    assert_ne!(proc_state(nav.pid()), Some('T'));
    assert_ne!(proc_state(planner.pid()), Some('T'));
    rig.wait_pins(
        "motor re-enabled after clear",
        Duration::from_secs(5),
        |p| p.motor_enabled,
    )
    .unwrap();
}

#[test]
fn serial_noise_is_survived_and_counted() {
    let (_g, mut rig) = rig(Image::Normal);
    if skip_unless_emulated(&rig, "injecting line noise") {
        return;
    }
    let mut agent = agent(&rig, &[]);
    until_armed(&mut rig, &mut agent);
    for _ in 0..5 {
        rig.send(proto::RigCmd::InjectNoise(400)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = agent
        .wait_state("rx errors counted", Duration::from_secs(5), |s| {
            s["rx_errors"].as_u64() > Some(0)
        })
        .unwrap();
    assert_eq!(
        state["sessions"], 1,
        "noise must not cost the session: {state}"
    );
    assert_eq!(state["connected"], true);
    let after = rig.watch_pins(Duration::from_millis(800));
    assert!(
        after.iter().all(|p| p.motor_enabled),
        "noise cut motor power: {after:?}"
    );
    assert!(rig.last.is_some_and(|p| p.motor_enabled));
    // Link metrics carry the count.
    let rec = agent
        .wait_record("mcu record with rx errors", Duration::from_secs(3), |r| {
            r["stream"] == "mcu" && r["payload"]["rx_errors"].as_u64() > Some(0)
        })
        .unwrap();
    assert_eq!(rec["payload"]["connected"], true);
}

#[test]
fn port_closed_and_reopened_reconnects() {
    let (_g, mut rig) = rig(Image::Normal);
    if skip_unless_emulated(&rig, "replugging the board") {
        return;
    }
    let mut agent = agent(&rig, &[]);
    until_armed(&mut rig, &mut agent);
    rig.replug(Duration::from_millis(1500), Image::Normal)
        .unwrap();
    let lost = agent
        .wait_event("mcu_link_lost", Duration::from_secs(5))
        .unwrap();
    assert_eq!(lost["priority"], "critical");
    agent
        .wait_state("second session", boot(&rig) + Duration::from_secs(5), |s| {
            s["sessions"] == 2 && s["connected"] == true
        })
        .unwrap();
    rig.wait_pins(
        "motor enabled on the new session",
        Duration::from_secs(5),
        |p| p.motor_enabled,
    )
    .unwrap();
}

#[test]
fn firmware_with_other_protocol_version_never_enables_motors() {
    let (_g, mut rig) = rig(Image::Mismatch);
    if skip_unless_emulated(&rig, "booting the mismatch firmware") {
        return;
    }
    let mut agent = agent(&rig, &[]);
    let ev = agent
        .wait_event("mcu_protocol_mismatch", boot(&rig))
        .unwrap();
    assert_eq!(ev["priority"], "critical");
    let err = ev["payload"]["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("speaks protocol {}", PROTOCOL_VERSION + 100)),
        "{err}"
    );
    assert!(err.contains("motors stay disabled"), "{err}");
    let pins = rig.watch_pins(Duration::from_secs(2));
    assert!(pins.iter().all(|p| !p.motor_enabled), "{pins:?}");
    assert!(!rig.last.is_some_and(|p| p.motor_enabled));
    assert!(agent
        .seen
        .iter()
        .filter_map(|l| l.state.as_ref())
        .all(|s| s["motor_enabled"] == false));
}

/// Talks to the firmware directly (no agent): a host with another protocol is refused.
#[test]
fn host_with_other_protocol_version_is_refused_by_firmware() {
    use std::io::{Read, Write};
    let (_g, mut rig) = rig(Image::Normal);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(rig.agent_port())
        .unwrap();
    let mut t = nix::sys::termios::tcgetattr(&f).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::cfsetspeed(&mut t, nix::sys::termios::BaudRate::B115200).unwrap();
    t.control_chars[nix::sys::termios::SpecialCharacterIndices::VMIN as usize] = 0;
    t.control_chars[nix::sys::termios::SpecialCharacterIndices::VTIME as usize] = 1;
    nix::sys::termios::tcsetattr(&f, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let mut wr = f.try_clone().unwrap();
    let mut send = |seq: u32, m: HostMsg| {
        let mut out = [0u8; proto::MAX_FRAME];
        let n = proto::encode(seq, &m, &mut out).unwrap();
        wr.write_all(&out[..n]).unwrap();
    };
    let mut port = f;
    let mut dec = proto::Decoder::<McuMsg>::new();
    let mut buf = [0u8; 256];
    // Read frames for `window`, checking every one: motors never on, and every refusal is
    // for the protocol mismatch once the firmware has seen our Hello.
    let mut pump =
        |window: Duration, hello_seen: bool, ack: &mut Option<(u16, bool)>, refusals: &mut u32| {
            let until = Instant::now() + window;
            while Instant::now() < until {
                let n = port.read(&mut buf).unwrap_or(0);
                for b in &buf[..n] {
                    if let Some(Ok(f)) = dec.push(*b) {
                        match f.msg {
                            McuMsg::HelloAck {
                                protocol, accepted, ..
                            } => *ack = Some((protocol, accepted)),
                            McuMsg::Refused { reason, .. } => {
                                if hello_seen {
                                    assert_eq!(reason, Refusal::ProtocolMismatch);
                                    *refusals += 1;
                                }
                            }
                            McuMsg::Status(s) => assert!(!s.motor_enabled),
                            McuMsg::HeartbeatAck { motor_enabled, .. } => assert!(!motor_enabled),
                        }
                    }
                }
            }
        };
    // The Hello is repeated until the firmware answers it: on a loaded machine QEMU may
    // still be booting when the port opens, and a frame sent before its UART runs is lost.
    let (mut ack, mut refusals) = (None, 0u32);
    let boot_deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 1;
    while ack.is_none() && Instant::now() < boot_deadline {
        send(
            seq,
            HostMsg::Hello {
                protocol: PROTOCOL_VERSION + 1,
                agent: proto::Version::new(9, 9, 9),
            },
        );
        seq += 1;
        pump(Duration::from_millis(200), false, &mut ack, &mut refusals);
    }
    for _ in 0..6 {
        send(seq, HostMsg::Heartbeat);
        send(seq + 100, HostMsg::RequestEnable);
        seq += 1;
        pump(Duration::from_millis(50), true, &mut ack, &mut refusals);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && refusals < 6 {
        pump(Duration::from_millis(50), true, &mut ack, &mut refusals);
    }
    assert_eq!(ack, Some((PROTOCOL_VERSION, false)));
    assert_eq!(refusals, 6, "every enable request refused");
    if rig.is_emulated() {
        assert!(!rig.last.is_some_and(|p| p.motor_enabled));
        let pins = rig.watch_pins(Duration::from_millis(300));
        assert!(pins.iter().all(|p| !p.motor_enabled));
    }
}
