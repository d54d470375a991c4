//! Spawning a process in its own process group, and reaching that whole group: signals,
//! "is anything left", and the stop ladder.
//!
//! Why a process group and not a new session: `setsid()` in the child needs `pre_exec`
//! (unsafe, forbidden in this crate) or an extra exec of `setsid(1)`. A group is enough for
//! supervision: every ladder signal goes to `-pgid`, and since the group is never the
//! terminal's foreground group, a Ctrl-C in the agent's terminal does not reach children
//! (stdin is /dev/null, so they never read the terminal either).
//!
//! Limits are applied without `pre_exec` too: through a cgroup v2 directory the child
//! joins itself before exec (`sh -c 'echo $$ > .../cgroup.procs; exec "$@"'`, race-free:
//! nothing of the workload runs before it is in the cgroup), or else through
//! `prlimit --data=N:N -- cmd ...` (util-linux, which sets RLIMIT_DATA and execs). Both keep
//! the pid, so pid = pgid = the workload's own process after exec.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::workload::StopStep;

/// After the final SIGKILL, wait this long for the group to vanish before reporting it as
/// unkillable (a member in uninterruptible sleep, e.g. stuck on a dead USB device).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// How the child is wrapped to apply limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wrap {
    /// Join this cgroup v2 directory before exec.
    pub cgroup: Option<PathBuf>,
    /// RLIMIT_DATA in bytes (through `prlimit`).
    pub rlimit_data: Option<u64>,
}

/// What to run.
pub(crate) struct Launch<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, OsString)],
    pub cwd: &'a Path,
    pub wrap: &'a Wrap,
    pub capture: bool,
}

/// Builds and spawns the command in a new process group.
///
/// # Errors
/// The spawn error (program not found, bad working directory, ...).
pub(crate) fn spawn(l: &Launch<'_>) -> std::io::Result<Child> {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(cg) = &l.wrap.cgroup {
        argv.extend(
            [
                "sh",
                "-c",
                "echo $$ > \"$1/cgroup.procs\" || exit 126; shift; exec \"$@\"",
                "fleetlet-cgroup",
            ]
            .map(OsString::from),
        );
        argv.push(cg.clone().into_os_string());
    }
    if let Some(bytes) = l.wrap.rlimit_data {
        argv.push("prlimit".into());
        argv.push(format!("--data={bytes}:{bytes}").into());
        argv.push("--".into());
    }
    argv.push(l.command.into());
    argv.extend(l.args.iter().map(OsString::from));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(l.cwd)
        .stdin(Stdio::null())
        .process_group(0)
        // Supervised processes outlive a dropped handle on purpose (the stop ladder owns
        // their end); check commands die with their attempt.
        .kill_on_drop(!l.capture);
    if l.capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd.spawn()
}

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks after boot.
    pub starttime: u64,
}

/// Reads `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    // comm may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// Every process whose group is `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|s| s.pgrp == pgid)
        .collect()
}

/// Sends `sig` to the whole group. A group that is already gone is not an error.
pub(crate) fn signal_group(pgid: i32, sig: Signal) -> nix::Result<()> {
    match killpg(Pid::from_raw(pgid), sig) {
        Err(Errno::ESRCH) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether any live (non-zombie) member of the group is left. Zombie members that are our
/// own children and not `leader` (tokio reaps the leader) are reaped here: they are
/// grandchildren reparented to the agent (PID 1 in a container, or a subreaper).
pub(crate) fn group_alive(pgid: i32, leader: Option<i32>) -> bool {
    if let Err(Errno::ESRCH) = killpg(Pid::from_raw(pgid), None) {
        return false;
    }
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut alive = false;
    for m in group_members(pgid) {
        if m.state != 'Z' && m.state != 'X' {
            alive = true;
        } else if m.ppid == me && Some(m.pid) != leader {
            let _ = waitpid(Pid::from_raw(m.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
    alive
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StopReport {
    /// Signals sent, in order.
    pub sent: Vec<Signal>,
    /// The group vanished (false: members survived SIGKILL + [`KILL_WAIT`]).
    pub gone: bool,
    /// How long the stop took.
    pub took: Duration,
}

/// Runs the stop ladder on `pgid`: each step's signal to the whole group, then wait up
/// to its timeout for the group to be gone; SIGKILL ends the ladder. `child` (the leader)
/// is reaped along the way and its status stored in `exit`. `resume` sends SIGCONT after
/// each signal (for a paused group).
///
/// # Cancel safety
/// Not cancel safe: dropping it mid-ladder leaves the group partly signalled.
pub(crate) async fn stop_group(
    pgid: i32,
    child: &mut Child,
    exit: &mut Option<ExitStatus>,
    steps: &[StopStep],
    resume: bool,
) -> StopReport {
    let started = Instant::now();
    let mut sent = Vec::new();
    let kill_step = StopStep {
        signal: crate::workload::StopSignal(Signal::SIGKILL),
        timeout: KILL_WAIT,
    };
    let mut ladder: Vec<StopStep> = steps.to_vec();
    if ladder.last().map(|s| s.signal.0) != Some(Signal::SIGKILL) {
        ladder.push(kill_step);
    }
    for step in &ladder {
        if exit.is_some() && !group_alive(pgid, None) {
            break;
        }
        if let Err(e) = signal_group(pgid, step.signal.0) {
            tracing::warn!(pgid, signal = %step.signal.0, error = %e, "cannot signal process group");
        }
        if resume {
            let _ = signal_group(pgid, Signal::SIGCONT);
        }
        sent.push(step.signal.0);
        if wait_gone(pgid, child, exit, step.timeout).await {
            return StopReport {
                sent,
                gone: true,
                took: started.elapsed(),
            };
        }
    }
    let gone = exit.is_some() && !group_alive(pgid, None);
    StopReport {
        sent,
        gone,
        took: started.elapsed(),
    }
}

/// Waits until the leader is reaped and no live member is left, up to `timeout`.
pub(crate) async fn wait_gone(
    pgid: i32,
    child: &mut Child,
    exit: &mut Option<ExitStatus>,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = Duration::from_millis(2);
    loop {
        if exit.is_none() {
            tokio::select! {
                r = child.wait() => {
                    // An error means someone else reaped it: it is gone either way.
                    *exit = Some(r.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                }
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
        if !group_alive(pgid, None) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll.min(deadline - tokio::time::Instant::now())).await;
        poll = (poll * 2).min(Duration::from_millis(50));
    }
}

/// Waits, without a child handle, until the group is gone (leftovers of another agent).
pub(crate) async fn wait_group_gone(pgid: i32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut poll = Duration::from_millis(5);
    loop {
        if !group_alive(pgid, None) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(100));
    }
}

/// Exit code and signal name of a status.
pub(crate) fn describe(status: &ExitStatus) -> (Option<i32>, Option<String>) {
    (
        status.code(),
        status.signal().map(|s| {
            Signal::try_from(s).map_or_else(|_| format!("signal {s}"), |s| s.as_str().to_owned())
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.starttime),
            ('S', 1, 4242, 4242, 987654)
        );
    }

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id() as i32;
        let s = proc_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.starttime > 0);
    }
}
