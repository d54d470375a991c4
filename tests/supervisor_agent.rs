//! The supervisor inside the real agent binary: an agent killed with SIGKILL leaves its
//! process sessions behind (one with a grandchild in a group of its own); the next agent finds them (sled records verified via /proc),
//! stops them, and runs exactly one copy of each process.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_common;
use agent_common::{free_port, BIN};

/// Pids of live (non-zombie) processes whose command line is exactly `sleep <arg>`.
fn sleepers(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.len() == 2 && args[0].ends_with("sleep") && args[1].starts_with(marker) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("Z");
            if state != "Z" && state != "X" {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn spawn_agent(config: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Reap(Vec<Child>, String);
impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in sleepers(&self.1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn agent_kill_9_then_restart_runs_exactly_one_copy_of_each_process() {
    let dir = tempfile::tempdir().unwrap();
    // A marker unique to this test run, so parallel runs cannot confuse the count.
    let marker = format!("9{:07}", rand::random::<u32>() % 10_000_000);
    let mut workload = String::new();
    for i in 0..5 {
        workload.push_str(&format!(
            "[process.p{i}]\ncommand = \"sleep\"\nargs = [\"{marker}{i}\"]\nrestart = \"always\"\nstop = [{{ signal = \"SIGTERM\", timeout = \"2s\" }}]\n"
        ));
    }
    // p5's sleeper is a grandchild that moved to a process group of its own: only the
    // session of p5's leader still ties it to p5.
    workload.push_str(&format!(
        "[process.p5]\ncommand = \"sh\"\nargs = [\"-c\", '''python3 -c 'import os; os.setpgid(0, 0); os.execvp(\"sleep\", [\"sleep\", \"{marker}5\"])' & wait''']\nrestart = \"always\"\nstop = [{{ signal = \"SIGTERM\", timeout = \"2s\" }}]\n"
    ));
    std::fs::write(dir.path().join("workload.toml"), workload).unwrap();
    let config = dir.path().join("fleetlet.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"t\"\n[agent]\ndata_dir = \"{}\"\nshutdown_timeout = \"10s\"\n[api]\nlisten = \"127.0.0.1:{}\"\n[supervisor]\nallow_unsigned_workloads = true\nworkload = \"{}\"\n",
            dir.path().join("data").display(),
            free_port(),
            dir.path().join("workload.toml").display()
        ),
    )
    .unwrap();
    let mut guard = Reap(Vec::new(), marker.clone());

    let mut first = spawn_agent(&config);
    wait_for("6 processes under the first agent", 20, || {
        sleepers(&marker).len() == 6
    });
    let old = sleepers(&marker);
    // Give the record persister time to flush (it flushes right after each spawn).
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap(); // SIGKILL: no shutdown, no stop ladder.
    first.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sleepers(&marker),
        old,
        "the crash scenario needs the old processes still running"
    );

    guard.0.push(spawn_agent(&config));
    wait_for("old processes gone and 6 new ones", 20, || {
        let now = sleepers(&marker);
        now.len() == 6 && now.iter().all(|p| !old.contains(p))
    });
    // Stable: no late duplicate appears.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = sleepers(&marker);
        assert_eq!(
            now.len(),
            6,
            "expected exactly 6 copies, found {now:?} (old {old:?})"
        );
        for i in 0..6 {
            let wanted = format!("{marker}{i}");
            let n = now
                .iter()
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&wanted))
                        .unwrap_or(false)
                })
                .count();
            assert_eq!(n, 1, "process p{i} has {n} copies");
        }
    }

    // A clean agent stop leaves nothing behind.
    let agent = guard.0.pop().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not stop");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        sleepers(&marker).is_empty(),
        "processes survived a clean agent stop: {:?}",
        sleepers(&marker)
    );
}
