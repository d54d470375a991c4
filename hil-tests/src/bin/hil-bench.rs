//! Benchmark of the MCU link over the rig (default: the QEMU rig's pty): heartbeat→ack
//! round trip (median, p99) and the agent-side CPU cost of the link at a 50 Hz heartbeat.
//!
//! `cargo run --release -p hil-tests --bin hil-bench -- [seconds]` (see `benches/serial.sh`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hil_tests::{Agent, Image, Rig, RigFile};

fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = s.rfind(')').context("stat format")?;
    let f: Vec<&str> = s[after + 2..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let (file, path) = RigFile::from_env()?;
    file.build(path.parent().context("rig dir")?)?;
    let mut rig = Rig::start(file, &path, Image::Normal)?;
    let agent_bin = std::env::current_exe()?.with_file_name("hil-agent");
    if !agent_bin.exists() {
        bail!(
            "{} missing: build with `cargo build --release -p hil-tests --bins`",
            agent_bin.display()
        );
    }
    let args: Vec<String> = [
        "--port",
        &rig.agent_port().display().to_string(),
        "--heartbeat-period",
        "20ms",
        "--telemetry-period",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Agent::start(&agent_bin.display().to_string(), &args)?;
    agent.wait_event("mcu_connected", Duration::from_secs(10))?;
    if rig
        .missing(hil_tests::Capability::ReadMotorEnable)
        .is_none()
    {
        rig.wait_pins("motor enabled", Duration::from_secs(5), |p| p.motor_enabled)?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(agent.pid())?);
    std::thread::sleep(Duration::from_secs(secs));
    let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu_ticks(agent.pid())? - c0);
    let cpu_pct = dc as f64 / hz / dt * 100.0;
    // The first `mcu` record covering the whole window (RTT over its last 512 samples).
    let rec = agent.wait_record("mcu record with rtt", Duration::from_secs(secs + 10), |r| {
        r["stream"] == "mcu" && r["payload"]["heartbeats_sent"].as_u64().unwrap_or(0) >= 50 * secs
    })?;
    let p = &rec["payload"];
    let ms = |v: &serde_json::Value| v.as_f64().map(|us| us / 1000.0).unwrap_or(f64::NAN);
    let (p50, p99) = (ms(&p["rtt_p50_us"]), ms(&p["rtt_p99_us"]));
    println!(
        "rig: {} ({}s at 50 Hz heartbeat, {} heartbeats sent, rx errors {})",
        rig.file.name, secs, p["heartbeats_sent"], p["rx_errors"]
    );
    println!(
        "heartbeat->ack RTT median: {p50:.2} ms   (target < 5 ms)    {}",
        verdict(p50 < 5.0)
    );
    println!(
        "heartbeat->ack RTT p99:    {p99:.2} ms   (target < 20 ms)   {}",
        verdict(p99 < 20.0)
    );
    println!(
        "agent CPU (link only):     {cpu_pct:.3} % of one core (target < 1 %)  {}",
        verdict(cpu_pct < 1.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "MISSED"
    }
}
