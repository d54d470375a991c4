//! The agent as a real subprocess: readiness, signals, the data-directory lock, crash
//! recovery and the `status` client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod agent_common;
use agent_common::{free_port, BIN};

struct Agent {
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("fleetlet.toml");
    std::fs::write(
        &path,
        format!("[device]\nid = \"test-robot\"\n[agent]\ndata_dir = \"{}\"\nshutdown_timeout = \"5s\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n{extra}", dir.join("data").display()),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, port: u16) -> Agent {
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Agent { child, port }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = fleetlet::api::client::get(([127, 0, 0, 1], port).into(), path, Duration::from_secs(2))
        .ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

fn wait_ready(agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(agent.port, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("agent never became ready");
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn run_reaches_ready_and_sigterm_exits_zero_within_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let mut agent = spawn(&cfg, port);
    wait_ready(&agent);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for needle in [
        "fleetlet_uptime_seconds ",
        "fleetlet_resident_memory_bytes ",
        "fleetlet_subsystem_state{subsystem=\"api\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let (code, status) = http_get(port, "/v1/status").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["device_id"], "test-robot");
    assert_eq!(v["subsystems"]["agent"]["state"], "running");

    signal(&agent.child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut agent.child, Duration::from_secs(5))
        .expect("agent did not exit within its 5 s deadline");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let mut agent = spawn(&cfg, port);
    wait_ready(&agent);
    signal(&agent.child, nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        wait_exit(&mut agent.child, Duration::from_secs(5)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn second_agent_on_same_data_dir_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let agent = spawn(&cfg, port);
    wait_ready(&agent);

    // Same data dir, another port: the lock, not the port, must refuse it.
    let port2 = free_port();
    let cfg2_dir = tempfile::tempdir().unwrap();
    let cfg2 = cfg2_dir.path().join("second.toml");
    std::fs::write(
        &cfg2,
        format!(
            "[agent]\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port2}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg2)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("pid {}", agent.child.id())),
        "{stderr}"
    );
}

#[test]
fn lock_is_released_after_kill_9_so_a_restart_works() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let mut agent = spawn(&cfg, port);
    wait_ready(&agent);
    signal(&agent.child, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut agent.child, Duration::from_secs(5)).unwrap();

    let restarted = spawn(&cfg, port);
    wait_ready(&restarted);
}

fn fleetlet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn status_shows_a_running_agent_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let agent = spawn(&cfg, port);
    wait_ready(&agent);
    let addr = format!("127.0.0.1:{port}");
    let out = fleetlet(&["status", "--addr", &addr]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("test-robot")
            && text.contains("SUBSYSTEM")
            && text
                .lines()
                .any(|l| l.starts_with("agent") && l.contains("running")),
        "{text}"
    );

    let out = fleetlet(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ready"], true);
}

#[test]
fn status_without_agent_says_not_running() {
    let port = free_port();
    let out = fleetlet(&["status", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("agent not running at 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn config_check_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let good = write_config(dir.path(), port, "");
    let out = fleetlet(&["config", "check", "--config", good.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-robot"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[api]\nlisten = 12\n[agent]\nsurprise = true\n").unwrap();
    let out = fleetlet(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: key `api.listen`")
            && err.contains("bad.toml: key `agent.surprise`"),
        "{err}"
    );

    let out = fleetlet(&["config", "check", "--config", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));

    let out = Command::new(BIN)
        .args(["config", "check", "--config", good.to_str().unwrap()])
        .env("FLEETLET_API__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("environment variable FLEETLET_API__LISTEN: key `api.listen`"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let out = fleetlet(&["config", "check", "--config", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 3, "expected dev, staging and prod configs");
}

#[test]
fn systemd_gets_ready_then_watchdog_pings_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        seen.push(recv());
    }
    assert!(
        seen[0].contains("READY=1"),
        "first message must be READY: {seen:?}"
    );
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    loop {
        if recv().contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn control_socket_is_private_and_answers_ctl() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, "");
    let _agent = spawn(&cfg, port);
    // wait_ready below needs the agent; the socket is bound before readiness is reported.
    wait_ready(&_agent);
    let sock = dir.path().join("data/run/fleetlet.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "control socket must be 0660");
    let out = fleetlet(&["ctl", "ops.list", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleetlet(&["ctl", "no.such.op", "--socket", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown operation `no.such.op`"));
}

#[test]
fn config_check_redacts_the_mqtt_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        free_port(),
        "[mqtt]\nhost = \"broker.example\"\nusername = \"robot\"\npassword = \"hunter2-secret\"\n",
    );
    let out = fleetlet(&["config", "check", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("hunter2-secret"),
        "password printed in clear:\n{text}"
    );
    assert!(
        text.contains("<redacted>") && text.contains("broker.example"),
        "{text}"
    );
}
