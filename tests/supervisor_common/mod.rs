//! Shared helpers of the supervisor integration tests: a real `Services` (sled in a temp
//! dir), a started supervisor, and waiting on its snapshot with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetlet::runtime::Services;
use fleetlet::supervisor::{self, CheckProvider, Handle, ProcessState, Snapshot};
use fleetlet::telemetry::{Record, Sink};
use fleetlet::workload::Workload;
use tokio::sync::mpsc;

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub svc: Services,
    pub handle: Handle,
    pub telemetry: mpsc::Receiver<Record>,
}

impl Rig {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn services(dir: &Path) -> (Services, mpsc::Receiver<Record>) {
    let db = sled::Config::new()
        .path(dir.join("db"))
        .open()
        .expect("sled opens in a temp dir");
    let (telemetry, rx) = Sink::channel(100_000);
    let svc = Services {
        config: Arc::new(fleetlet::config::Config::default()),
        data: fleetlet::datadir::DataDir::new(dir.join("data")),
        db,
        cancel: tokio_util::sync::CancellationToken::new(),
        tracker: tokio_util::task::TaskTracker::new(),
        status: fleetlet::status::Registry::new(),
        telemetry,
        boot_id: "test".into(),
        liveness: fleetlet::liveness::Liveness::new(),
        ops: fleetlet::control::Ops::default(),
    };
    (svc, rx)
}

/// Starts a supervisor running `manifest` (with `{dir}` replaced by the temp dir).
pub async fn start(manifest: &str) -> Rig {
    start_with(manifest, supervisor::Config::default(), None).await
}

pub async fn start_with(
    manifest: &str,
    cfg: supervisor::Config,
    provider: Option<Arc<dyn CheckProvider>>,
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (svc, telemetry) = services(dir.path());
    let handle = supervisor::start(&svc, &cfg, provider).await.unwrap();
    let text = manifest.replace("{dir}", &dir.path().display().to_string());
    let w = Workload::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("test manifest invalid: {e}\n{text}"))
        .with_root(dir.path());
    handle.apply(w).await.unwrap();
    Rig {
        dir,
        svc,
        handle,
        telemetry,
    }
}

/// Waits until `pred` holds on the snapshot; panics with the snapshot after `secs`.
pub async fn wait_until(
    h: &Handle,
    secs: u64,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut rx = h.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        {
            let s = rx.borrow_and_update().clone();
            if pred(&s) {
                return s;
            }
        }
        tokio::select! {
            r = rx.changed() => r.expect("supervisor alive"),
            _ = tokio::time::sleep_until(deadline) => {
                panic!("timed out waiting for {what}; snapshot: {:#?}", h.snapshot());
            }
        }
    }
}

pub async fn wait_state(h: &Handle, name: &str, state: ProcessState, secs: u64) -> Snapshot {
    wait_until(h, secs, &format!("{name} to be {state}"), |s| {
        s.processes.get(name).is_some_and(|p| p.state == state)
    })
    .await
}

/// Lines of a file (empty when missing).
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `f` every 20 ms until it returns true; panics after `secs`.
pub async fn eventually(secs: u64, what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Pids of every process in group `pgid`.
pub fn group(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(2)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pgid)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// (pgrp, session) of a pid, from `/proc/<pid>/stat`.
pub fn pgrp_and_session(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The pid written in a file, once the file holds one.
pub fn pid_in(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}
