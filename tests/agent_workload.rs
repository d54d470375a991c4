//! `fleetlet run` supervising a workload from its config: status, logs, control-socket
//! operations and shutdown, through the real binary and real child processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_common;
use agent_common::{free_port, BIN};

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = fleetlet::api::client::get(([127, 0, 0, 1], port).into(), path, Duration::from_secs(2))
        .ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn status(port: u16) -> serde_json::Value {
    agent_common::status(port).expect("the agent answers /v1/status with JSON")
}

fn setup(dir: &Path, port: u16, allow: bool) -> std::path::PathBuf {
    std::fs::write(
        dir.join("workload.toml"),
        r#"
[process.talker]
command = "sh"
args = ["-c", "echo talker up; exec sleep 1000"]

[process.listener]
command = "sh"
args = ["-c", "echo listener up; exec sleep 1000"]
depends_on = { talker = "started" }
"#,
    )
    .unwrap();
    let cfg = dir.join("fleetlet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ndata_dir = \"{}\"\nshutdown_timeout = \"20s\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[supervisor]\nallow_unsigned_workloads = {allow}\nworkload = \"workload.toml\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn config_workload_is_supervised_and_operable_through_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = setup(dir.path(), port, true);
    let mut agent = Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("both processes running", || {
        get(port, "/v1/status").is_some_and(|_| {
            let s = status(port);
            let p = &s["subsystems"]["supervisor"]["detail"]["processes"];
            p["talker"]["pid"].is_u64() && p["listener"]["pid"].is_u64()
        })
    });
    wait_for("readyz", || {
        get(port, "/readyz").is_some_and(|r| r.0 == 200)
    });
    let first_pid = status(port)["subsystems"]["supervisor"]["detail"]["processes"]["talker"]
        ["pid"]
        .as_u64()
        .unwrap();

    // Logs through the HTTP API and the CLI.
    wait_for("talker output captured", || {
        get(port, "/v1/logs/talker").is_some_and(|r| r.1.contains("talker up"))
    });
    let out = Command::new(BIN)
        .args(["logs", "talker", "--lines", "5", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stdout talker up"));
    let out = Command::new(BIN)
        .args(["logs", "nosuch", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no process named \"nosuch\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Metrics per process.
    let metrics = get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("fleetlet_process_restarts_total{process=\"talker\"} 0"),
        "{metrics}"
    );

    // Restart through the control socket.
    let out = Command::new(BIN)
        .args(["ctl", "process.restart", r#"{"name":"talker"}"#, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("talker restarted with a new pid", || {
        status(port)["subsystems"]["supervisor"]["detail"]["processes"]["talker"]["pid"]
            .as_u64()
            .is_some_and(|p| p != first_pid)
    });
    let out = Command::new(BIN)
        .args(["ctl", "process.restart", r#"{"name":"ghost"}"#, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // The status table lists the processes.
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("talker") && table.contains("listener"),
        "{table}"
    );

    // SIGTERM: children are stopped before the agent exits 0.
    let pids: Vec<i32> = ["talker", "listener"]
        .iter()
        .map(|n| {
            status(port)["subsystems"]["supervisor"]["detail"]["processes"][n]["pid"]
                .as_i64()
                .unwrap() as i32
        })
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    for pid in pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "child {pid} survived the agent's shutdown"
        );
    }
}

#[test]
fn unsigned_workload_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), free_port(), false);
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("supervisor.allow_unsigned_workloads"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mcu_link_without_its_port_degrades_but_the_agent_runs_and_refuses_arm_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("fleetlet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[serial]\nenabled = true\nport = \"{}\"\nestop = {{ action = \"none\" }}\n",
            dir.path().join("data").display(),
            dir.path().join("no-such-tty").display()
        ),
    )
    .unwrap();
    let _agent = Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("serial degraded", || {
        get(port, "/v1/status")
            .is_some_and(|_| status(port)["subsystems"]["serial"]["state"] == "degraded")
    });
    assert_eq!(status(port)["subsystems"]["hal"]["state"], "running");
    let out = Command::new(BIN)
        .args(["ctl", "mcu.arm", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mcu.arm"), "{err}");
}
