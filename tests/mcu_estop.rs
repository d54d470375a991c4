//! The board's e-stop input pin and the MCU's e-stop drive one policy engine.
//!
//! Real pieces: the `fleetlet::hal` driver thread on the simulated GPIO backend (the test
//! sets the input level), the e-stop engine, the MCU link task, real child processes
//! (`sleep` in their own process groups, SIGSTOP/SIGCONT checked in `/proc`), and the
//! firmware's own motor-power state machine (`fleetlet-safety-core`) as the MCU at the other
//! end of the byte stream, answering frames exactly as the firmware's main loop does.
//! (The same flows run against the QEMU firmware in `hil-tests`.)

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleetlet::estop::{self, Action, Policy};
use fleetlet::hal::{self, sim::SimGpio, Driver};
use fleetlet::serial::{self, proto, ActionFuture, Config, Deps, Io, Port, Workload};
use fleetlet_safety_core::{Board, Config as CoreConfig, HostMsg, McuMsg, SafetyCore, Version};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ESTOP_PIN: u8 = 5;
const WAIT: Duration = Duration::from_secs(5);

/// A real child process in its own process group (like a supervised one).
struct Proc(Child);

impl Proc {
    fn sleep() -> Self {
        use std::os::unix::process::CommandExt;
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
    /// Scheduler state letter from /proc (`T` = stopped).
    fn state(&self) -> char {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = s.rfind(')').unwrap();
        s[after + 1..].trim_start().chars().next().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workload over real pids: pause/resume are SIGSTOP/SIGCONT.
struct Pids(BTreeMap<String, u32>);

impl Pids {
    fn signal(&self, name: &str, sig: Signal) -> ActionFuture {
        let pid = self.0.get(name).copied();
        let name = name.to_owned();
        Box::pin(async move {
            let pid = pid.ok_or_else(|| format!("no process named {name}"))?;
            kill(Pid::from_raw(pid as i32), sig).map_err(|e| format!("{sig} to {name}: {e}"))
        })
    }
}

impl Workload for Pids {
    fn motion_ok(&self, _: &[String]) -> bool {
        true
    }
    fn motion_ready(&self, _: &[String]) -> bool {
        true
    }
    fn pause(&self, name: &str) -> ActionFuture {
        self.signal(name, Signal::SIGSTOP)
    }
    fn resume(&self, name: &str) -> ActionFuture {
        self.signal(name, Signal::SIGCONT)
    }
    fn stop(&self, name: &str) -> ActionFuture {
        self.signal(name, Signal::SIGTERM)
    }
    fn start(&self, name: &str) -> ActionFuture {
        let name = name.to_owned();
        Box::pin(async move { Err(format!("cannot restart {name} in this test")) })
    }
}

/// The MCU: the firmware's safety core behind an in-memory byte stream, served like the
/// firmware's main loop (reply per frame, status on change and every 250 ms).
#[derive(Clone)]
struct Mcu {
    core: Arc<Mutex<SafetyCore>>,
    start: Instant,
}

impl Mcu {
    fn new() -> Self {
        let mut core = SafetyCore::new(CoreConfig::new(Board::QemuLm3s6965, Version::new(0, 1, 0)));
        core.set_battery_mv(24_000);
        Self {
            core: Arc::new(Mutex::new(core)),
            start: Instant::now(),
        }
    }
    fn now(&self) -> u32 {
        self.start.elapsed().as_millis() as u32
    }
    fn lock(&self) -> MutexGuard<'_, SafetyCore> {
        self.core.lock().unwrap()
    }
    fn motor_enabled(&self) -> bool {
        let now = self.now();
        self.lock().tick(now)
    }
    fn set_estop(&self, pressed: bool) {
        let now = self.now();
        self.lock().set_estop(now, pressed);
    }
    fn faults(&self) -> proto::Faults {
        self.lock().faults()
    }

    async fn serve(self, io: tokio::io::DuplexStream) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut dec = proto::Decoder::<HostMsg>::new();
        let mut buf = [0u8; 256];
        let mut seq = 0u32;
        let mut last = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let mut out = Vec::new();
            let mut push = |m: &McuMsg, out: &mut Vec<u8>| {
                let mut f = [0u8; proto::MAX_FRAME];
                let n = proto::encode(seq, m, &mut f).unwrap();
                seq = seq.wrapping_add(1);
                out.extend_from_slice(&f[..n]);
            };
            tokio::select! {
                r = rd.read(&mut buf) => {
                    let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                    for b in &buf[..n] {
                        if let Some(Ok(f)) = dec.push(*b) {
                            let now = self.now();
                            let reply = self.lock().handle(now, f.seq, f.msg);
                            push(&reply, &mut out);
                        }
                    }
                }
                _ = tick.tick() => { last = None; }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let now = self.now();
            let status = {
                let mut c = self.lock();
                c.tick(now);
                c.status()
            };
            let key = (status.motor_enabled, status.estop_pressed, status.faults);
            if last != Some(key) {
                last = Some(key);
                push(&McuMsg::Status(status), &mut out);
            }
            if !out.is_empty() && wr.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// Each open hands a fresh in-memory stream to the MCU (a new "cable").
struct McuPort(Mcu);

impl Port for McuPort {
    fn name(&self) -> String {
        "mcu-sim".into()
    }
    fn open(&self) -> std::io::Result<Box<dyn Io>> {
        let (agent, mcu) = tokio::io::duplex(4096);
        tokio::spawn(self.0.clone().serve(mcu));
        Ok(Box::new(agent))
    }
}

struct Rig {
    gpio: SimGpio,
    /// Keeps the GPIO driver thread running (it stops when the last handle drops).
    _hal: hal::Handle,
    mcu: Option<Mcu>,
    link: Option<serial::Handle>,
    estop: estop::Handle,
    records: Arc<Mutex<Vec<fleetlet::telemetry::Record>>>,
    nav: Proc,
    planner: Proc,
    cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn rig(with_mcu: bool) -> Rig {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (sink, mut rx) = fleetlet::telemetry::Sink::channel(4096);
    let records = Arc::new(Mutex::new(Vec::new()));
    let r2 = records.clone();
    tracker.spawn(async move {
        while let Some(r) = rx.recv().await {
            r2.lock().unwrap().push(r);
        }
    });
    let (nav, planner) = (Proc::sleep(), Proc::sleep());
    let workload: Arc<dyn Workload> = Arc::new(Pids(BTreeMap::from([
        ("nav".to_owned(), nav.pid()),
        ("planner".to_owned(), planner.pid()),
    ])));
    let estop = estop::spawn(
        Policy {
            action: Action::Pause,
            processes: vec!["nav".into(), "planner".into()],
        },
        workload.clone(),
        sink.clone(),
        &tracker,
        cancel.child_token(),
    );

    let gpio = SimGpio::default();
    let cfg = hal::Config {
        estop_input: Some(ESTOP_PIN),
        estop_debounce: Duration::from_millis(20),
        ..hal::Config::default()
    };
    let h = Driver::new(Box::new(gpio.clone()), cfg)
        .unwrap()
        .spawn(cancel.child_token())
        .unwrap();
    hal::forward_estop(&h, estop.clone(), ESTOP_PIN, &tracker, cancel.child_token());

    let (mcu, link) = if with_mcu {
        let mcu = Mcu::new();
        let registry = fleetlet::status::Registry::new();
        let liveness = fleetlet::liveness::Liveness::new();
        tracker.spawn(liveness.clone().run(cancel.child_token()));
        let deps = Deps {
            telemetry: sink,
            status: registry.register("serial"),
            liveness,
            tracker: tracker.clone(),
            cancel: cancel.clone(),
            estop: estop.clone(),
        };
        let cfg = Config {
            enabled: true,
            telemetry_period: Duration::from_secs(60),
            estop: estop.policy().clone(),
            ..Config::default()
        };
        let link = serial::spawn(deps, cfg, Arc::new(McuPort(mcu.clone())), workload);
        (Some(mcu), Some(link))
    } else {
        (None, None)
    };
    Rig {
        gpio,
        _hal: h,
        mcu,
        link,
        estop,
        records,
        nav,
        planner,
        cancel,
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Rig {
    fn mcu(&self) -> &Mcu {
        self.mcu.as_ref().unwrap()
    }
    fn link(&self) -> &serial::Handle {
        self.link.as_ref().unwrap()
    }
    fn events(&self, kind: &str) -> Vec<Value> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.stream == "events" && r.payload["kind"] == kind)
            .map(|r| {
                assert_eq!(
                    serde_json::to_value(r.priority).unwrap(),
                    "critical",
                    "{kind}"
                );
                r.payload.clone()
            })
            .collect()
    }
    async fn until_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut hit = None;
        until(&format!("event {kind}"), || {
            hit = self.events(kind).into_iter().find(|e| pred(e));
            hit.is_some()
        })
        .await;
        hit.unwrap()
    }
    async fn until_steps(&self, action: &str, n: usize) {
        until(&format!("{n} `{action}` steps"), || {
            let steps = self.events("estop_action");
            let done: Vec<_> = steps.iter().filter(|e| e["action"] == action).collect();
            assert!(done.iter().all(|e| e["ok"] == true), "{done:?}");
            done.len() >= n
        })
        .await;
    }
    async fn until_paused(&self, paused: bool) {
        until(if paused { "paused" } else { "resumed" }, || {
            [&self.nav, &self.planner]
                .iter()
                .all(|p| (p.state() == 'T') == paused)
        })
        .await;
    }
    async fn until_motor(&self, on: bool) {
        until(if on { "motor on" } else { "motor off" }, || {
            self.mcu().motor_enabled() == on
        })
        .await;
    }
    /// Checks for `d` that the motors stay off and the processes stay as they are.
    async fn hold(&self, d: Duration, paused: bool) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.mcu.is_some() {
                assert!(!self.mcu().motor_enabled(), "motor power came back");
            }
            assert_eq!(self.nav.state() == 'T', paused, "nav changed state");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_input_pauses_processes_and_has_the_mcu_cut_motor_power() {
    let rig = rig(true).await;
    rig.until_motor(true).await;

    rig.gpio.set_input(ESTOP_PIN, true);
    rig.until_motor(false).await;
    rig.until_paused(true).await;
    rig.until_steps("pause", 2).await;
    let ev = rig.until_event("estop", |_| true).await;
    assert_eq!(ev["source"], "input");
    assert_eq!(ev["sources"], serde_json::json!(["input"]));
    assert_eq!(ev["action"], "pause");
    let disarm = rig.until_event("estop_mcu_disarm", |_| true).await;
    assert_eq!(disarm["ok"], true, "{disarm}");
    assert_eq!(disarm["motor_was_enabled"], true, "{disarm}");
    // The MCU cut power on Disarm: nothing latched there, the agent holds enable back.
    assert!(rig.mcu().faults().is_empty(), "{:?}", rig.mcu().faults());
    until("link state shows the input", || {
        let s = rig.link().state();
        s.estop_input_pressed && s.estop_input_uncleared && !s.motor_enabled
    })
    .await;

    // Released: the input source clears, so the processes resume; motor power stays off
    // until an operator clears the e-stop (releasing never restarts motion by itself).
    rig.gpio.set_input(ESTOP_PIN, false);
    rig.until_event("estop_cleared", |e| e["source"] == "input")
        .await;
    rig.until_steps("resume", 2).await;
    rig.until_paused(false).await;
    rig.hold(Duration::from_millis(1500), false).await;
    let s = rig.link().state();
    assert!(!s.estop_input_pressed && s.estop_input_uncleared, "{s:?}");

    rig.link().clear_estop().await.unwrap();
    rig.until_motor(true).await;
    assert!(!rig.link().state().estop_input_uncleared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_released_while_the_mcu_estop_is_latched_keeps_processes_paused() {
    let rig = rig(true).await;
    rig.until_motor(true).await;

    rig.gpio.set_input(ESTOP_PIN, true);
    rig.until_paused(true).await;
    rig.until_steps("pause", 2).await;
    // The MCU's own e-stop is pressed too: a second source while engaged.
    rig.mcu().set_estop(true);
    rig.until_event("estop_source", |e| {
        e["source"] == "mcu" && e["active"] == true
    })
    .await;
    // The pin is released, but the MCU still has its e-stop (pressed, then latched).
    rig.gpio.set_input(ESTOP_PIN, false);
    let ev = rig
        .until_event("estop_source", |e| {
            e["source"] == "input" && e["active"] == false
        })
        .await;
    assert_eq!(ev["sources"], serde_json::json!(["mcu"]));
    rig.mcu().set_estop(false);
    rig.hold(Duration::from_millis(1000), true).await;
    assert!(rig.events("estop_cleared").is_empty());
    assert_eq!(
        rig.events("estop_action").len(),
        2,
        "only the two pause steps"
    );
    assert_eq!(rig.estop.state().active(), vec!["mcu"]);

    // The operator clears the MCU latch: every source is clear, the processes resume.
    rig.link().clear_estop().await.unwrap();
    let cleared = rig.until_event("estop_cleared", |_| true).await;
    assert_eq!(cleared["source"], "mcu");
    rig.until_steps("resume", 2).await;
    rig.until_paused(false).await;
    rig.until_motor(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_and_clear_are_refused_while_the_estop_input_is_pressed() {
    let rig = rig(true).await;
    rig.until_motor(true).await;
    rig.gpio.set_input(ESTOP_PIN, true);
    rig.until_motor(false).await;
    until("link sees the input", || {
        rig.link().state().estop_input_pressed
    })
    .await;
    for r in [rig.link().arm().await, rig.link().clear_estop().await] {
        let err = r.unwrap_err();
        assert!(matches!(err, serial::Error::EstopInputPressed), "{err:?}");
        assert!(err.to_string().contains("hal.estop_input"), "{err}");
    }
    rig.hold(Duration::from_millis(500), true).await;
    // Disarm is still allowed.
    rig.link().disarm().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_input_applies_the_policy_without_an_mcu_link() {
    let rig = rig(false).await;
    rig.gpio.set_input(ESTOP_PIN, true);
    rig.until_paused(true).await;
    rig.until_steps("pause", 2).await;
    rig.gpio.set_input(ESTOP_PIN, false);
    rig.until_paused(false).await;
    rig.until_steps("resume", 2).await;
    rig.until_event("estop_cleared", |e| e["source"] == "input")
        .await;
    assert_eq!(rig.estop.state().input_presses, 1);
}
