//! No orphans after an agent crash: every owned session is recorded in sled (tree
//! `supervisor`, key = the leader's pid, which is its pgid and sid) right after spawn and
//! flushed; the record is removed once the session's tree is gone. On start, each leftover
//! record is verified through `/proc` and its tree (session, group and descendants, see
//! [`process`](super::process)) is stopped before anything new starts.
//!
//! A record is trusted only when the kernel boot id matches (pids restart after a reboot)
//! and either the leader still runs with the recorded start time, or the leader is gone but
//! its session or group still has members, all started no earlier than the leader (an id
//! cannot be reused while a session or group of that id exists: Linux does not hand out a
//! pid that is a live sid or pgid). Records written before processes got sessions of their
//! own name a group that is not a session; the same check finds it by its group.
//!
//! When the agent is PID 1 (a container), it also reaps zombies: orphans reparented to it
//! that stayed zombies across two scans (tokio reaps its own children within milliseconds
//! of SIGCHLD, so a zombie that outlives a scan interval belongs to nobody).

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::process::{self, proc_stat};

/// sled tree of owned process groups.
pub(crate) const TREE: &str = "supervisor";
/// How often the PID-1 reaper scans for zombies.
const REAP_INTERVAL: Duration = Duration::from_secs(2);

/// One owned process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub process: String,
    /// The leader's pid = pgid = sid (the field keeps its name for old records).
    pub pgid: i32,
    pub starttime: u64,
    pub kernel_boot_id: String,
    pub command: String,
    /// Stop ladder as (signal number, timeout ms).
    pub stop: Vec<(i32, u64)>,
}

/// Changes to the records, applied in order by the persister.
#[derive(Debug)]
pub(crate) enum RecordMsg {
    Add(Record),
    Remove(i32),
}

/// The kernel's boot id.
pub(crate) fn kernel_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn key(pgid: i32) -> [u8; 4] {
    pgid.to_be_bytes()
}

/// Applies record changes in order: insert/remove, then one flush per batch (all changes
/// queued by then), off the async workers. A fast restart loop costs one fsync per batch,
/// not two per restart.
pub(crate) async fn persist(tree: sled::Tree, mut rx: mpsc::Receiver<RecordMsg>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let tree = tree.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            for msg in &batch {
                match msg {
                    RecordMsg::Add(r) => {
                        let v = serde_json::to_vec(r).map_err(|e| e.to_string())?;
                        tree.insert(key(r.pgid), v).map_err(|e| e.to_string())?;
                    }
                    RecordMsg::Remove(pgid) => {
                        tree.remove(key(*pgid)).map_err(|e| e.to_string())?;
                    }
                }
            }
            tree.flush().map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot persist owned process groups"),
            Err(e) => tracing::error!(error = %e, "record persister task failed"),
        }
    }
}

/// Whether a record still describes a live group of ours.
pub(crate) fn verify(r: &Record, boot_id: &str) -> Result<(), String> {
    if r.kernel_boot_id != boot_id {
        return Err("recorded before the last reboot".into());
    }
    match proc_stat(r.pgid) {
        Some(s) if s.starttime == r.starttime && (s.session == r.pgid || s.pgrp == r.pgid) => {
            return Ok(())
        }
        Some(s) if s.session == r.pgid || s.pgrp == r.pgid => {
            return Err(format!(
                "pid {} now belongs to a process started at tick {} (recorded {})",
                r.pgid, s.starttime, r.starttime
            ))
        }
        _ => {}
    }
    // Only the session and group proper: descendants that left them are not evidence.
    let members: Vec<_> = process::session_members(r.pgid)
        .into_iter()
        .filter(|m| m.session == r.pgid || m.pgrp == r.pgid)
        .collect();
    if members.is_empty() {
        return Err("session and group are gone".into());
    }
    if members.iter().all(|m| m.starttime >= r.starttime) {
        Ok(())
    } else {
        Err("group members predate the recorded leader".into())
    }
}

/// What happened to one leftover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Leftover {
    pub process: String,
    pub pgid: i32,
    pub action: String,
}

/// Stops every verified leftover group (concurrently, each with its recorded ladder) and
/// clears all records.
pub(crate) async fn clean_leftovers(tree: sled::Tree) -> Vec<Leftover> {
    let t = tree.clone();
    let records: Vec<Record> = tokio::task::spawn_blocking(move || {
        t.iter()
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| serde_json::from_slice::<Record>(&v).ok())
            .collect()
    })
    .await
    .unwrap_or_default();
    let boot = kernel_boot_id();
    let mut jobs = tokio::task::JoinSet::new();
    for r in records {
        let boot = boot.clone();
        jobs.spawn(async move {
            let action = match verify(&r, &boot) {
                Err(why) => format!("ignored: {why}"),
                Ok(()) => {
                    let mut sent = Vec::new();
                    let mut gone = false;
                    let mut ladder = r.stop.clone();
                    ladder.push((
                        Signal::SIGKILL as i32,
                        process::KILL_WAIT.as_millis() as u64,
                    ));
                    let mut tree = process::Tree::new(r.pgid);
                    for (sig, ms) in ladder {
                        let Ok(sig) = Signal::try_from(sig) else {
                            continue;
                        };
                        let _ = tree.signal(sig);
                        sent.push(sig.as_str());
                        if tree.wait_gone(Duration::from_millis(ms)).await {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        format!("stopped with {}", sent.join(", "))
                    } else {
                        "survived SIGKILL".to_owned()
                    }
                }
            };
            Leftover {
                process: r.process,
                pgid: r.pgid,
                action,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(res) = jobs.join_next().await {
        if let Ok(l) = res {
            out.push(l);
        }
    }
    let t = tree.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = t.clear();
        t.flush()
    })
    .await;
    out
}

/// Reaps zombies reparented to the agent when it runs as PID 1.
pub(crate) async fn reap_zombies(cancel: CancellationToken) {
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(REAP_INTERVAL) => {}
        }
        let me = i32::try_from(std::process::id()).unwrap_or(1);
        let zombies: BTreeSet<i32> = tokio::task::spawn_blocking(move || {
            let Ok(rd) = std::fs::read_dir("/proc") else {
                return BTreeSet::new();
            };
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(proc_stat)
                .filter(|s| s.ppid == me && s.state == 'Z')
                .map(|s| s.pid)
                .collect()
        })
        .await
        .unwrap_or_default();
        for pid in zombies.intersection(&seen) {
            if waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)).is_ok() {
                tracing::debug!(pid, "reaped orphaned zombie");
            }
        }
        seen = zombies;
    }
}
