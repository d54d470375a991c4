//! The hardware-in-the-loop suite. Runs against the rig in `HIL_RIG` (default: the QEMU
//! rig, `rigs/qemu.toml`). Tests run one at a time (they share the rig's timing budget).
//! Every rig goes through the same `Rig` API; a test needing a capability the rig lacks
//! (a bench rig without `pins.power_out` cannot replug, no bench rig can inject noise)
//! prints `skipped on rig …` with the reason and returns early.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use fleetlet_proto::{self as proto, Faults, HostMsg, McuMsg, Refusal, PROTOCOL_VERSION};
use hil_tests::{proc_state, Agent, Capability, Image, Rig, RigFile};

static LOADED: OnceLock<Result<(RigFile, PathBuf), String>> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn rig_file() -> &'static (RigFile, PathBuf) {
    let loaded = LOADED.get_or_init(|| {
        let (file, path) = RigFile::from_env().map_err(|e| format!("{e:#}"))?;
        let dir = path.parent().unwrap().to_path_buf();
        file.build(&dir).map_err(|e| format!("{e:#}"))?;
        Ok((file, path))
    });
    loaded.as_ref().expect("rig setup failed")
}

/// Starts the rig, or `None` (printing why) when it lacks one of `needs`.
fn rig_with(image: Image, needs: &[Capability]) -> Option<(MutexGuard<'static, ()>, Rig)> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (file, path) = rig_file();
    for cap in needs {
        if let Some(why) = file.missing(*cap) {
            eprintln!("skipped on rig {}: needs {cap:?}: {why}", file.name);
            return None;
        }
    }
    let rig = Rig::start(file.clone(), path, image).expect("rig start");
    Some((guard, rig))
}

fn rig(image: Image) -> (MutexGuard<'static, ()>, Rig) {
    rig_with(image, &[]).expect("no capability needed")
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

/// Waits until `pid` is stopped (`T`): SIGSTOP is delivered asynchronously, so the step
/// being reported done can precede the state change in /proc by a scheduling slice.
fn until_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while proc_state(pid) != Some('T') {
        assert!(
            Instant::now() < deadline,
            "process {pid} not stopped: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
    assert_eq!(ev["priority"], "normal");
    let board = p["board"].as_str().unwrap();
    assert!(["qemu-lm3s6965", "rp2040"].contains(&board), "{board}");
    if rig.missing(Capability::ReadMotorEnable).is_none() {
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
    let Some((_g, mut rig)) = rig_with(Image::Normal, &[Capability::ReadMotorEnable]) else {
        return;
    };
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
    if let Some(f) = off.faults {
        assert!(f.contains(Faults::HEARTBEAT_TIMEOUT), "{off:?}");
    }
    // A new agent finds the fault latched (on every rig: read through the link) and
    // power stays off.
    let mut agent = self::agent(&rig, &[]);
    agent
        .wait_state(
            "heartbeat_timeout latched",
            boot(&rig) + Duration::from_secs(2),
            |s| {
                s["faults"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "heartbeat_timeout"))
            },
        )
        .unwrap();
    let after = rig.watch_pins(Duration::from_millis(1000));
    assert!(
        after.iter().all(|p| !p.motor_enabled),
        "power came back by itself: {after:?}"
    );
}

/// The bench rig's start-of-test reset (a session that clears latched faults) against the
/// firmware: after it, a new agent auto-enables again, which a latched fault forbids.
#[test]
fn board_reset_session_clears_latched_faults_and_leaves_power_off() {
    let Some((_g, mut rig)) = rig_with(Image::Normal, &[Capability::ReadMotorEnable]) else {
        return;
    };
    let mut first = agent(&rig, &[]);
    until_armed(&mut rig, &mut first);
    first.kill();
    rig.wait_pins("motor disabled", Duration::from_secs(3), |p| {
        !p.motor_enabled
    })
    .unwrap();
    hil_tests::bench::clear_latched_faults(&rig.agent_port(), rig.file.serial.baud, boot(&rig))
        .unwrap();
    let held = rig.watch_pins(Duration::from_millis(300));
    assert!(held.iter().all(|p| !p.motor_enabled), "{held:?}");
    let mut second = agent(&rig, &[]);
    until_armed(&mut rig, &mut second);
}

#[test]
fn stalled_agent_event_loop_cuts_motor_power_and_recovery_does_not_resume_it() {
    let Some((_g, mut rig)) = rig_with(Image::Normal, &[Capability::ReadMotorEnable]) else {
        return;
    };
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
    if let Some(f) = off.faults {
        assert!(f.contains(Faults::HEARTBEAT_TIMEOUT), "{off:?}");
    }
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
    let Some((_g, mut rig)) = rig_with(
        Image::Normal,
        &[Capability::PressEstop, Capability::ReadMotorEnable],
    ) else {
        return;
    };
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
    until_stopped(nav.pid());
    until_stopped(planner.pid());

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
fn estop_input_on_the_agent_host_cuts_motor_power_through_the_mcu_and_pauses_processes() {
    let Some((_g, mut rig)) = rig_with(Image::Normal, &[Capability::ReadMotorEnable]) else {
        return;
    };
    let nav = Proc::sleep();
    let planner = Proc::sleep();
    let mut agent = agent(
        &rig,
        &[
            "--estop-input",
            "on",
            "--estop-action",
            "pause",
            "--process",
            &format!("nav={}", nav.pid()),
            "--process",
            &format!("planner={}", planner.pid()),
        ],
    );
    until_armed(&mut rig, &mut agent);

    // The board's e-stop input (simulated GPIO in hil-agent) is pressed: the agent has the
    // MCU cut motor power (Disarm) and applies the e-stop policy.
    let t0 = Instant::now();
    agent.command("input press").unwrap();
    let off = rig
        .wait_pins(
            "motor disabled by the e-stop input",
            Duration::from_secs(3),
            |p| !p.motor_enabled,
        )
        .unwrap();
    let took = off.at.saturating_duration_since(t0);
    assert!(
        took <= cut_limit(&rig),
        "motor power cut {took:?} after the input press, limit {:?}",
        cut_limit(&rig)
    );
    eprintln!("e-stop input -> motor power off: {took:?} (includes the 30 ms debounce)");
    if let Some(f) = off.faults {
        assert!(f.is_empty(), "disarm latches nothing on the mcu: {off:?}");
    }
    let ev = agent.wait_event("estop", Duration::from_secs(3)).unwrap();
    assert_eq!(ev["payload"]["source"], "input", "{ev}");
    assert_eq!(ev["priority"], "critical");
    let disarm = agent
        .wait_event("estop_mcu_disarm", Duration::from_secs(3))
        .unwrap();
    assert_eq!(disarm["payload"]["ok"], true, "{disarm}");
    for name in ["nav", "planner"] {
        agent
            .wait_record(
                &format!("pause step for {name}"),
                Duration::from_secs(3),
                |r| {
                    r["payload"]["kind"] == "estop_action"
                        && r["payload"]["process"] == name
                        && r["payload"]["action"] == "pause"
                        && r["payload"]["ok"] == true
                },
            )
            .unwrap();
    }
    until_stopped(nav.pid());
    until_stopped(planner.pid());

    if rig.missing(Capability::PressEstop).is_none() {
        // The MCU's own e-stop too; then the input is released: the MCU's latch keeps the
        // e-stop engaged, so nothing resumes.
        rig.set_estop(true).unwrap();
        rig.wait_pins("mcu e-stop pressed", Duration::from_secs(2), |p| {
            p.estop_pressed
        })
        .unwrap();
        agent.command("input release").unwrap();
        let src = agent
            .wait_record(
                "input released while the mcu holds",
                Duration::from_secs(3),
                |r| {
                    r["payload"]["kind"] == "estop_source"
                        && r["payload"]["source"] == "input"
                        && r["payload"]["active"] == false
                },
            )
            .unwrap();
        assert_eq!(
            src["payload"]["sources"],
            serde_json::json!(["mcu"]),
            "{src}"
        );
        rig.set_estop(false).unwrap();
        rig.wait_pins("mcu e-stop released", Duration::from_secs(2), |p| {
            !p.estop_pressed
        })
        .unwrap();
        let held = rig.watch_pins(Duration::from_millis(800));
        assert!(held.iter().all(|p| !p.motor_enabled), "{held:?}");
        assert_eq!(
            proc_state(nav.pid()),
            Some('T'),
            "resumed while the mcu latch holds"
        );
    } else {
        // Released: the processes resume, but motor power stays off until an operator
        // clears the e-stop.
        agent.command("input release").unwrap();
        agent
            .wait_record("resume after release", Duration::from_secs(3), |r| {
                r["payload"]["kind"] == "estop_action" && r["payload"]["action"] == "resume"
            })
            .unwrap();
        let held = rig.watch_pins(Duration::from_millis(1500));
        assert!(held.iter().all(|p| !p.motor_enabled), "{held:?}");
        assert!(!rig.last.is_some_and(|p| p.motor_enabled));
    }

    agent.command("clear").unwrap();
    assert_eq!(agent.wait_reply(Duration::from_secs(5)).unwrap(), None);
    agent
        .wait_event("estop_cleared", Duration::from_secs(3))
        .unwrap();
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
    let Some((_g, mut rig)) = rig_with(
        Image::Normal,
        &[Capability::InjectNoise, Capability::ReadMotorEnable],
    ) else {
        return;
    };
    let mut agent = agent(&rig, &[]);
    until_armed(&mut rig, &mut agent);
    for _ in 0..5 {
        rig.inject_noise(400).unwrap();
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
    let Some((_g, mut rig)) = rig_with(
        Image::Normal,
        &[Capability::Replug, Capability::ReadMotorEnable],
    ) else {
        return;
    };
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
    let Some((_g, mut rig)) = rig_with(
        Image::Mismatch,
        &[Capability::BootMismatchImage, Capability::ReadMotorEnable],
    ) else {
        return;
    };
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
    if rig.missing(Capability::ReadMotorEnable).is_none() {
        assert!(!rig.last.is_some_and(|p| p.motor_enabled));
        let pins = rig.watch_pins(Duration::from_millis(300));
        assert!(pins.iter().all(|p| !p.motor_enabled));
    }
}
