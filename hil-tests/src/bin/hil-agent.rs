//! The agent side under test: the real `fleetlet::serial` link in its own process, on a
//! single-threaded tokio runtime (so `stall <ms>` really stalls the agent's event loop).
//!
//! Usage: `hil-agent --port PATH [--baud N] [--heartbeat-period 100ms]
//!   [--telemetry-period 1s] [--estop-action pause|stop|none] [--process NAME=PID]...
//!   [--motion-critical NAME]... [--estop-input on]`
//!
//! With `--estop-input on` the agent also has a board e-stop input pin: `fleetlet::hal` on
//! the simulated backend, driven from stdin (`input press` / `input release`), feeding the
//! same e-stop engine as the MCU's e-stop.
//!
//! Prints one JSON line per telemetry record (`{"kind":"record","record":{...}}`) and per
//! interesting link-state change (`{"kind":"state","state":{...}}`). Reads commands on
//! stdin: `arm`, `clear`, `disarm`, `stall <ms>`, `input press|release`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleetlet::hal::sim::SimGpio;
use fleetlet::serial::{self, ActionFuture, Config, Deps, EstopAction, SerialPort, Workload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Workload processes given by pid; pause/resume are SIGSTOP/SIGCONT.
struct Pids(BTreeMap<String, u32>);

impl Pids {
    fn signal(&self, name: &str, sig: Signal) -> ActionFuture {
        let pid = self.0.get(name).copied();
        let name = name.to_owned();
        Box::pin(async move {
            let pid = pid.ok_or_else(|| format!("no process named {name}"))?;
            kill(Pid::from_raw(pid as i32), sig)
                .map_err(|e| format!("{sig} to {name} ({pid}): {e}"))
        })
    }
}

impl Workload for Pids {
    fn motion_ok(&self, names: &[String]) -> bool {
        names.iter().all(|n| {
            self.0
                .get(n)
                .and_then(|p| hil_tests::proc_state(*p))
                .is_some_and(|s| s != 'T' && s != 'Z')
        })
    }
    fn motion_ready(&self, names: &[String]) -> bool {
        self.motion_ok(names)
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
        Box::pin(async move { Err(format!("hil-agent cannot restart {name}")) })
    }
}

/// The simulated board e-stop input pin.
const ESTOP_PIN: u8 = 5;

struct Args {
    cfg: Config,
    procs: BTreeMap<String, u32>,
    estop_input: bool,
}

fn parse() -> Result<Args> {
    let mut cfg = Config {
        enabled: true,
        telemetry_period: Duration::from_secs(1),
        ..Config::default()
    };
    cfg.estop.action = EstopAction::None;
    let mut procs = BTreeMap::new();
    let mut estop_input = false;
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--port" => cfg.port = v.into(),
            "--baud" => cfg.baud = v.parse()?,
            "--heartbeat-period" => cfg.heartbeat_period = humantime::parse_duration(&v)?,
            "--telemetry-period" => cfg.telemetry_period = humantime::parse_duration(&v)?,
            "--estop-action" => {
                cfg.estop.action = match v.as_str() {
                    "pause" => EstopAction::Pause,
                    "stop" => EstopAction::Stop,
                    "none" => EstopAction::None,
                    _ => bail!("--estop-action {v}: expected pause, stop or none"),
                }
            }
            "--process" => {
                let (n, p) = v.split_once('=').context("--process wants NAME=PID")?;
                procs.insert(n.to_owned(), p.parse()?);
                cfg.estop.processes.push(n.to_owned());
            }
            "--motion-critical" => cfg.motion_critical.push(v),
            "--estop-input" => estop_input = v == "on",
            _ => bail!("unknown argument {k}"),
        }
    }
    cfg.enable_after_ready = cfg.motion_critical.clone();
    Ok(Args {
        cfg,
        procs,
        estop_input,
    })
}

fn print(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn run() -> Result<()> {
    let Args {
        cfg,
        procs,
        estop_input,
    } = parse()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (sink, mut records) = fleetlet::telemetry::Sink::channel(1024);
    let registry = fleetlet::status::Registry::new();
    let liveness = fleetlet::liveness::Liveness::new();
    tracker.spawn(liveness.clone().run(cancel.child_token()));
    let workload: Arc<dyn Workload> = Arc::new(Pids(procs));
    let estop = fleetlet::estop::spawn(
        cfg.estop.clone(),
        workload.clone(),
        sink.clone(),
        &tracker,
        cancel.child_token(),
    );
    let gpio = SimGpio::default();
    // Kept until exit: the GPIO driver thread stops when its last handle drops.
    let mut _hal = None;
    if estop_input {
        let hal_cfg = fleetlet::hal::Config {
            estop_input: Some(ESTOP_PIN),
            ..fleetlet::hal::Config::default()
        };
        let h = fleetlet::hal::Driver::new(Box::new(gpio.clone()), hal_cfg)?
            .spawn(cancel.child_token())?;
        fleetlet::hal::forward_estop(&h, estop.clone(), ESTOP_PIN, &tracker, cancel.child_token());
        _hal = Some(h);
    }
    let deps = Deps {
        telemetry: sink,
        status: registry.register("serial"),
        liveness,
        tracker: tracker.clone(),
        cancel: cancel.clone(),
        estop,
    };
    let port = Arc::new(SerialPort::new(cfg.port.clone(), cfg.baud));
    let handle = serial::spawn(deps, cfg, port, workload);

    tracker.spawn(async move {
        while let Some(r) = records.recv().await {
            print(json!({ "kind": "record", "record": r }));
        }
    });
    let mut states = handle.subscribe();
    let c = cancel.child_token();
    tracker.spawn(async move {
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = c.cancelled() => return,
                r = states.changed() => if r.is_err() { return },
            }
            let s = states.borrow_and_update().clone();
            let key = format!(
                "{}{}{}{:?}{}{}{}{}",
                s.connected,
                s.motor_enabled,
                s.estop_pressed,
                s.faults,
                s.sessions,
                s.rx_errors,
                s.estop_input_pressed,
                s.estop_input_uncleared
            );
            if key != last {
                last = key;
                print(json!({ "kind": "state", "state": s }));
            }
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            _ = term.recv() => break,
            l = stdin.next_line() => match l? { Some(l) => l, None => break },
        };
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("arm") => Some(handle.arm().await),
            Some("clear") => Some(handle.clear_estop().await),
            Some("disarm") => Some(handle.disarm().await),
            Some("input") => {
                gpio.set_input(ESTOP_PIN, words.next() == Some("press"));
                None
            }
            Some("stall") => {
                let ms: u64 = words.next().unwrap_or("1000").parse()?;
                // Deliberately block the only runtime thread: the agent's event loop stalls.
                std::thread::sleep(Duration::from_millis(ms));
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            print(
                json!({ "kind": "reply", "ok": r.is_ok(), "error": r.err().map(|e| e.to_string()) }),
            );
        }
    }
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    Ok(())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hil-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hil-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
