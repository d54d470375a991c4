//! Spawning a process as the leader of its own session, and reaching everything it started:
//! signals, "is anything left", and the stop ladder.
//!
//! Each supervised process is started by `posix_spawn` with `POSIX_SPAWN_SETSID` (see
//! [`super::spawn`]), so pid = pgid = sid of the workload's process from its first
//! instruction on, with no window in which it shares the agent's group. It has no controlling terminal, so a Ctrl-C or a
//! hang-up of the agent's terminal never reaches it (stdin is /dev/null too).
//!
//! "Everything it started", the *tree* of session `sid`, is found by one scan of
//! `/proc/*/stat`: every process whose session or group is `sid`, plus every descendant of
//! those by parent pid. That reaches a grandchild that moved to a group of its own
//! (`setpgid`) and one that left the session (`setsid`) while its parent still lives. Each
//! signal goes to the group `sid` with one `killpg` (race-free against forks inside the
//! group) and to every other group the tree's members are in. Not reached: a descendant
//! that left the session *and* whose parent chain back to the session already died
//! (the daemon double fork); only a cgroup holds those.
//!
//! Limits are applied without code of ours between fork and exec: through a cgroup v2 directory the child
//! joins itself before exec (`sh -c 'echo $$ > .../cgroup.procs; exec "$@"'`, race-free:
//! nothing of the workload runs before it is in the cgroup), or else through
//! `prlimit --data=N:N -- cmd ...` (util-linux, which sets RLIMIT_DATA and execs). Both keep
//! the pid, so pid = pgid = sid = the workload's own process after exec.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::spawn::{self, Child};

use crate::workload::StopStep;

/// After the final SIGKILL, wait this long for the tree to vanish before reporting it as
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

/// Builds the command line (with the limit wrappers) and spawns it as the leader of a new
/// session (and of a new process group): pid = pgid = sid. Check commands
/// (`capture == false`) are killed if their handle is dropped; supervised processes outlive
/// it on purpose (the stop ladder owns their end).
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
    spawn::spawn(&spawn::Spec {
        argv: &argv,
        env: l.env,
        cwd: l.cwd,
        capture: l.capture,
        kill_on_drop: !l.capture,
    })
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

/// Every process on the machine (one scan of `/proc`).
fn all_processes() -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// The tree of session `sid` among `all`: members of the session or of the group `sid`,
/// plus their descendants by parent pid (also those that left with `setsid`/`setpgid`).
/// Never the agent itself.
fn tree_of(sid: i32, all: &[ProcStat]) -> Vec<ProcStat> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut children: BTreeMap<i32, Vec<&ProcStat>> = BTreeMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    let mut todo: Vec<&ProcStat> = all
        .iter()
        .filter(|p| p.session == sid || p.pgrp == sid)
        .collect();
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        if p.pid == me || !seen.insert(p.pid) {
            continue;
        }
        out.push(*p);
        if let Some(c) = children.get(&p.pid) {
            todo.extend(c.iter().copied());
        }
    }
    out
}

/// Every process of the tree of session `sid` (see the module doc), zombies included.
pub(crate) fn session_members(sid: i32) -> Vec<ProcStat> {
    tree_of(sid, &all_processes())
}

fn is_live(p: &ProcStat) -> bool {
    p.state != 'Z' && p.state != 'X'
}

/// Sends `sig` to the whole tree of session `sid` once (see [`Tree::signal`]). A tree that
/// is already gone is not an error.
///
/// # Errors
/// The first error other than "no such process" (EPERM: a member changed its credentials).
pub(crate) fn signal_session(sid: i32, sig: Signal) -> nix::Result<()> {
    Tree::new(sid).signal(sig)
}

/// The tree of session `sid` through a stop: remembers every member it signalled (pid and
/// start time), so one that drops out of the tree mid-stop — a `setsid` grandchild whose
/// parent died of the first signal is reparented away — is still signalled and waited for.
#[derive(Debug)]
pub(crate) struct Tree {
    sid: i32,
    seen: BTreeMap<i32, u64>,
}

impl Tree {
    pub(crate) fn new(sid: i32) -> Self {
        Self {
            sid,
            seen: BTreeMap::new(),
        }
    }

    /// Remembered members that are still the same live process.
    fn seen_alive(&self) -> impl Iterator<Item = i32> + '_ {
        self.seen.iter().filter_map(|(pid, start)| {
            proc_stat(*pid)
                .filter(|s| s.starttime == *start && is_live(s))
                .map(|_| *pid)
        })
    }

    /// Sends `sig` to the group `sid` with one `killpg`, to every other group a live member
    /// of the tree is in, and to remembered members that left the tree.
    ///
    /// # Errors
    /// The first error other than "no such process".
    pub(crate) fn signal(&mut self, sig: Signal) -> nix::Result<()> {
        let mut first_err = None;
        let mut note = |r: nix::Result<()>| match r {
            Err(Errno::ESRCH) | Ok(()) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        };
        // Scan before any signal: a member killed first would orphan its children, and a
        // `setsid` grandchild reparented away is no longer found by parent pid.
        let members = session_members(self.sid);
        note(killpg(Pid::from_raw(self.sid), sig));
        let own_group = nix::unistd::getpgrp().as_raw();
        let mut groups = BTreeSet::new();
        for m in members.iter().filter(|m| is_live(m)) {
            self.seen.insert(m.pid, m.starttime);
            if m.pgrp != self.sid && m.pgrp != own_group && m.pgrp > 1 {
                groups.insert(m.pgrp);
            } else if m.pgrp == own_group {
                // Cannot happen (a group belongs to one session, and ours is not `sid`);
                // never signal the agent's own group, reach the member alone.
                note(kill(Pid::from_raw(m.pid), sig));
            }
        }
        for g in groups {
            note(killpg(Pid::from_raw(g), sig));
        }
        let strays: Vec<i32> = self
            .seen_alive()
            .filter(|pid| !members.iter().any(|m| m.pid == *pid))
            .collect();
        for pid in strays {
            note(kill(Pid::from_raw(pid), sig));
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether any live member of the tree, or a remembered member, is left.
    pub(crate) fn alive(&self) -> bool {
        session_alive(self.sid, None) || self.seen_alive().next().is_some()
    }

    /// Waits, without a child handle, until the tree is gone (leftovers of another agent).
    pub(crate) async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = Duration::from_millis(5);
        loop {
            if !self.alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }
}

/// Whether the tree of session `sid` may have members, cheaply: one `killpg(sid, 0)` probe
/// and one `getsid()` per pid, no `/proc/<pid>/stat` read (about 20 times cheaper than
/// [`session_members`]; this runs after every exit, on the restart path). `false` is exact:
/// with no member in the session or the group `sid`, the tree (those plus their
/// descendants) is empty.
fn tree_may_exist(sid: i32) -> bool {
    if killpg(Pid::from_raw(sid), None) != Err(Errno::ESRCH) {
        return true;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return true;
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| nix::unistd::getsid(Some(Pid::from_raw(pid))).map(Pid::as_raw) == Ok(sid))
}

/// Whether any live (non-zombie) member of the tree of session `sid` is left. Zombie
/// members that are our own children and not `leader` (tokio reaps the leader) are reaped
/// here: they are grandchildren reparented to the agent (PID 1 in a container, or a
/// subreaper).
pub(crate) fn session_alive(sid: i32, leader: Option<i32>) -> bool {
    if !tree_may_exist(sid) {
        return false;
    }
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut alive = false;
    for m in session_members(sid) {
        if is_live(&m) {
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
    /// The tree vanished (false: members survived SIGKILL + [`KILL_WAIT`]).
    pub gone: bool,
    /// How long the stop took.
    pub took: Duration,
}

/// Runs the stop ladder on the tree of session `sid`: each step's signal to every member,
/// then wait up to its timeout for the tree to be gone; SIGKILL ends the ladder. `child`
/// (the leader) is reaped along the way and its status stored in `exit`. `resume` sends
/// SIGCONT after each signal (for a paused tree).
///
/// # Cancel safety
/// Not cancel safe: dropping it mid-ladder leaves the tree partly signalled.
pub(crate) async fn stop_session(
    sid: i32,
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
    let mut tree = Tree::new(sid);
    for step in &ladder {
        if exit.is_some() && !tree.alive() {
            break;
        }
        if let Err(e) = tree.signal(step.signal.0) {
            tracing::warn!(sid, signal = %step.signal.0, error = %e, "cannot signal every process of the session");
        }
        if resume {
            let _ = tree.signal(Signal::SIGCONT);
        }
        sent.push(step.signal.0);
        if wait_gone(&tree, child, exit, step.timeout).await {
            return StopReport {
                sent,
                gone: true,
                took: started.elapsed(),
            };
        }
    }
    let gone = exit.is_some() && !tree.alive();
    StopReport {
        sent,
        gone,
        took: started.elapsed(),
    }
}

/// Waits until the leader is reaped and no live member of the tree is left, up to `timeout`.
async fn wait_gone(
    tree: &Tree,
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
        if !tree.alive() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll.min(deadline - tokio::time::Instant::now())).await;
        poll = (poll * 2).min(Duration::from_millis(50));
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

    fn p(pid: i32, ppid: i32, pgrp: i32, session: i32) -> ProcStat {
        ProcStat {
            pid,
            state: 'S',
            ppid,
            pgrp,
            session,
            starttime: 1,
        }
    }

    #[test]
    fn tree_holds_session_group_and_descendants_that_moved_out() {
        let all = [
            p(100, 1, 100, 100),   // the leader (pid = pgid = sid)
            p(101, 100, 101, 100), // setpgid(0, 0): own group, same session
            p(102, 101, 102, 102), // setsid() under 101: own session, parent in the tree
            p(103, 102, 103, 102), // its child, further out
            p(104, 1, 104, 100),   // orphaned session member (parent died)
            p(200, 1, 200, 200),   // unrelated
            p(201, 200, 200, 200), // unrelated child
        ];
        let mut pids: Vec<i32> = tree_of(100, &all).iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![100, 101, 102, 103, 104]);
        assert!(tree_of(300, &all).is_empty());
    }

    #[test]
    fn tree_never_holds_the_agent() {
        let me = std::process::id() as i32;
        let all = [p(100, 1, 100, 100), p(me, 100, 100, 100)];
        let pids: Vec<i32> = tree_of(100, &all).iter().map(|s| s.pid).collect();
        assert_eq!(pids, vec![100]);
    }

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id() as i32;
        let s = proc_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.starttime > 0);
    }
}
