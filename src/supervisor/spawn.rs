//! Starting a process as the leader of a new session with `posix_spawn`, and waiting for it.
//!
//! Why not `std`/tokio `Command`: a new session needs `setsid()` in the child, which `Command`
//! can only do from a `pre_exec` closure, and any `pre_exec` makes it `fork()` the agent
//! (copying its page tables, about a millisecond on the restart path with a loaded tokio
//! runtime) instead of glibc's `posix_spawn` (`clone(CLONE_VM | CLONE_VFORK)`, the child runs
//! on the parent's memory until it execs). `POSIX_SPAWN_SETSID` (glibc ≥ 2.26) makes the
//! session in the spawn itself, so pid = pgid = sid from the first instruction of the
//! workload, and a restart costs what runit's costs.
//!
//! What `Command` did and this keeps: the environment is the agent's plus the overrides; a
//! program name without `/` is looked up on the *child's* `PATH` (the bundle prepends its
//! install space there); stdin is `/dev/null`; stdout/stderr are pipes or `/dev/null`;
//! SIGPIPE is back to its default in the child (Rust ignores it in the agent); the signal
//! mask is empty; the working directory is set with `posix_spawn_file_actions_addchdir_np`
//! (glibc ≥ 2.29). An exec failure (not found, not executable, bad directory) is the error
//! of `spawn` itself: glibc reports the child's errno through the vfork.
//!
//! Waiting: a pidfd (Linux ≥ 5.3) in tokio's reactor becomes readable when the process
//! exits, then `waitpid(WNOHANG)` reaps it; on older kernels SIGCHLD wakes the waiter. A
//! [`Child`] dropped before it was reaped is reaped by a task (and killed first if it was
//! spawned with `kill_on_drop`), so no zombie is left behind.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::fcntl::OFlag;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use rustix::process::{PidfdFlags, WaitOptions};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::signal::unix::{signal, SignalKind};

/// `PATH` when neither the child's environment nor the agent's has one (glibc's `execvp`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// What to start.
pub(crate) struct Spec<'a> {
    /// Program and arguments (`argv[0]` is looked up on `PATH` when it has no `/`).
    pub argv: &'a [OsString],
    /// Set on top of the agent's environment.
    pub env: &'a [(String, OsString)],
    /// Working directory of the child.
    pub cwd: &'a Path,
    /// stdout and stderr as pipes ([`Child::stdout`], [`Child::stderr`]), else `/dev/null`.
    pub capture: bool,
    /// SIGKILL the process if its [`Child`] is dropped before it exited.
    pub kill_on_drop: bool,
}

/// How the exit of the child is noticed.
enum Watch {
    /// Readable once the process exited.
    PidFd(AsyncFd<OwnedFd>),
    /// Kernels without pidfds: every SIGCHLD of the agent, then a `waitpid` to see if it was ours.
    Sigchld(tokio::signal::unix::Signal),
}

/// A process started by [`spawn`]: pid = pgid = sid.
pub(crate) struct Child {
    pid: rustix::process::Pid,
    /// The read end of its stdout, when captured.
    pub stdout: Option<pipe::Receiver>,
    /// The read end of its stderr, when captured.
    pub stderr: Option<pipe::Receiver>,
    watch: Option<Watch>,
    exit: Option<ExitStatus>,
    kill_on_drop: bool,
    /// Held by the reaper task of a dropped handle: dropping it (the runtime shuts down
    /// before the process ends) must not start yet another reaper.
    orphan: bool,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid.as_raw_nonzero())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

/// Starts `spec` as the leader of a new session.
///
/// Must be called inside a tokio runtime (the pipes and the pidfd join its reactor).
///
/// # Errors
/// The program is not found on `PATH` or not executable, the working directory does not
/// exist, an argument or variable holds a NUL byte, or the system is out of processes,
/// pipes or memory.
pub(crate) fn spawn(spec: &Spec<'_>) -> io::Result<Child> {
    let env = merged_env(spec.env);
    let program = spec
        .argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
    let path = resolve_program(program, env.get(OsStr::new("PATH")), spec.cwd)?;
    let argv = spec
        .argv
        .iter()
        .map(|a| c_string(a.as_bytes(), "an argument"))
        .collect::<io::Result<Vec<_>>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(&kv, "an environment variable")
        })
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = c_string(spec.cwd.as_os_str().as_bytes(), "the working directory")?;

    let mut actions = PosixSpawnFileActions::init().map_err(io::Error::from)?;
    actions
        .add_open(0, "/dev/null", OFlag::O_RDONLY, Mode::empty())
        .map_err(io::Error::from)?;
    let (out, err) = if spec.capture {
        let out = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let err = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        actions
            .add_dup2(out.1.as_raw_fd(), 1)
            .map_err(io::Error::from)?;
        actions
            .add_dup2(err.1.as_raw_fd(), 2)
            .map_err(io::Error::from)?;
        (Some(out), Some(err))
    } else {
        for fd in [1, 2] {
            actions
                .add_open(fd, "/dev/null", OFlag::O_WRONLY, Mode::empty())
                .map_err(io::Error::from)?;
        }
        (None, None)
    };
    add_chdir(&mut actions, &cwd)?;

    let mut attr = PosixSpawnAttr::init().map_err(io::Error::from)?;
    let setsid = PosixSpawnFlags::from_bits_retain(libc::c_int::from(libc::POSIX_SPAWN_SETSID));
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | setsid,
    )
    .map_err(io::Error::from)?;
    let mut sigdef = SigSet::empty();
    sigdef.add(Signal::SIGPIPE);
    attr.set_sigdefault(&sigdef).map_err(io::Error::from)?;
    attr.set_sigmask(&SigSet::empty())
        .map_err(io::Error::from)?;

    let pid = nix::spawn::posix_spawn(path.as_c_str(), &actions, &attr, &argv, &envp)
        .map_err(io::Error::from)?;
    let pid = rustix::process::Pid::from_raw(pid.as_raw())
        .ok_or_else(|| io::Error::other("posix_spawn returned pid 0"))?;
    // The write ends belong to the child now; ours close here or the readers never see EOF.
    let out = out.map(|(r, _w)| r);
    let err = err.map(|(r, _w)| r);
    adopt(pid, out, err, spec.kill_on_drop).inspect_err(|_| {
        // Unwatched, it would run unsupervised and end as a zombie: end it now.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
    })
}

/// The [`Child`] for a started `pid`: its pipes and its exit watch in tokio's reactor.
fn adopt(
    pid: rustix::process::Pid,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    kill_on_drop: bool,
) -> io::Result<Child> {
    let stdout = out.map(pipe::Receiver::from_owned_fd).transpose()?;
    let stderr = err.map(pipe::Receiver::from_owned_fd).transpose()?;
    let watch = watch(pid)?;
    Ok(Child {
        pid,
        stdout,
        stderr,
        watch: Some(watch),
        exit: None,
        kill_on_drop,
        orphan: false,
    })
}

/// `fd` in tokio's reactor, for readability.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: tokio requires that the fd stays open while registered. The `AsyncFd` owns
    // the `OwnedFd` and nothing else can reach it; its `Drop` deregisters before it drops
    // (closes) the fd.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// nix has no wrapper for `posix_spawn_file_actions_addchdir_np`.
#[allow(unsafe_code)]
fn add_chdir(actions: &mut PosixSpawnFileActions, dir: &CString) -> io::Result<()> {
    let raw: *mut libc::posix_spawn_file_actions_t = std::ptr::from_mut(actions).cast();
    // SAFETY: `PosixSpawnFileActions` is `#[repr(transparent)]` over an initialised
    // `posix_spawn_file_actions_t` (nix's `init`), so the cast pointer is valid and unique
    // for this call; glibc copies `dir` into the actions, so the `CString` may die after it.
    let rc = unsafe { libc::posix_spawn_file_actions_addchdir_np(raw, dir.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} holds a NUL byte: {:?}",
                String::from_utf8_lossy(bytes)
            ),
        )
    })
}

/// The agent's environment with `overrides` on top (later entries win).
fn merged_env(overrides: &[(String, OsString)]) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in overrides {
        env.insert(OsString::from(k), v.clone());
    }
    env
}

/// The path to exec: `program` itself when it holds a `/` (relative to `cwd`, where the
/// child resolves it after its chdir), else the first executable file named `program` in a
/// directory of `path_var` (relative directories taken from `cwd`).
fn resolve_program(
    program: &OsStr,
    path_var: Option<&OsString>,
    cwd: &Path,
) -> io::Result<CString> {
    if program.as_bytes().contains(&b'/') {
        return c_string(program.as_bytes(), "the program name");
    }
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    let default = OsString::from(DEFAULT_PATH);
    let dirs = path_var.unwrap_or(&default);
    let mut not_executable: Option<PathBuf> = None;
    for dir in std::env::split_paths(dirs) {
        let dir = if dir.as_os_str().is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(program);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                return c_string(candidate.as_os_str().as_bytes(), "the program path");
            }
            Ok(m) if m.is_file() => {
                not_executable.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    Err(match not_executable {
        Some(p) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not executable", p.display()),
        ),
        None => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{:?} not found on PATH {:?}", program, dirs),
        ),
    })
}

/// A pidfd for `pid` in the reactor, or the SIGCHLD stream where pidfds do not exist.
fn watch(pid: rustix::process::Pid) -> io::Result<Watch> {
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => Ok(Watch::PidFd(register(fd)?)),
        Err(rustix::io::Errno::NOSYS) => Ok(Watch::Sigchld(signal(SignalKind::child())?)),
        Err(e) => Err(e.into()),
    }
}

impl Child {
    /// Its pid (= its process group id = its session id).
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Waits for the process to exit and reaps it; after that, returns the same status.
    ///
    /// # Errors
    /// Someone else reaped it (`ECHILD`), or the pidfd failed.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is reaped until the status is returned.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            match &mut self.watch {
                Some(Watch::PidFd(fd)) => fd.readable().await?.clear_ready(),
                Some(Watch::Sigchld(sig)) => {
                    sig.recv().await;
                }
                None => return Err(io::Error::other("child has no exit watcher")),
            }
        }
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    ///
    /// # Errors
    /// Someone else reaped it (`ECHILD`).
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.exit {
            return Ok(Some(s));
        }
        match rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG)? {
            Some((_, status)) => {
                let s = ExitStatus::from_raw(status.as_raw());
                self.exit = Some(s);
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_some() || matches!(self.try_wait(), Ok(Some(_)) | Err(_)) || self.orphan {
            return;
        }
        if self.kill_on_drop {
            let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        }
        // Reap it when it ends, as tokio does with its orphans.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let orphan = Child {
            pid: self.pid,
            stdout: None,
            stderr: None,
            watch: self.watch.take(),
            exit: None,
            kill_on_drop: false,
            orphan: true,
        };
        rt.spawn(async move {
            let mut orphan = orphan;
            let _ = orphan.wait().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(
        script: &str,
        env: &[(String, OsString)],
        cwd: &Path,
        capture: bool,
    ) -> io::Result<Child> {
        let argv: Vec<OsString> = ["sh", "-c", script].map(OsString::from).to_vec();
        spawn(&Spec {
            argv: &argv,
            env,
            cwd,
            capture,
            kill_on_drop: true,
        })
    }

    async fn read_all(mut r: pipe::Receiver) -> String {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn child_leads_its_own_session_in_the_given_directory_with_the_given_env() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("FLEETLET_SPAWN_TEST".to_owned(), OsString::from("yes"))];
        let mut c = sh(
            "read -r pid comm state ppid pgrp sid rest < /proc/$$/stat; echo $pid $sid $pgrp; pwd; echo $FLEETLET_SPAWN_TEST; echo err >&2; exit 3",
            &env,
            dir.path(),
            true,
        )
        .unwrap();
        let (out, err) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
        let status = c.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        let out = read_all(out).await;
        let lines: Vec<&str> = out.lines().collect();
        let ids: Vec<i32> = lines[0]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(ids, vec![c.pid(); 3], "pid = sid = pgid");
        assert_eq!(Path::new(lines[1]), dir.path().canonicalize().unwrap());
        assert_eq!(lines[2], "yes");
        assert_eq!(read_all(err).await, "err\n");
        // Reaped once; the status stays.
        assert_eq!(c.wait().await.unwrap().code(), Some(3));
    }

    #[tokio::test]
    async fn program_is_looked_up_on_the_childs_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("fleetlet-spawn-test-tool");
        std::fs::write(&tool, "#!/bin/sh\nexit 7\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = [(
            "PATH".to_owned(),
            OsString::from(format!("{}:/usr/bin:/bin", bin.display())),
        )];
        let argv = [OsString::from("fleetlet-spawn-test-tool")];
        let spec = Spec {
            argv: &argv,
            env: &env,
            cwd: dir.path(),
            capture: false,
            kill_on_drop: true,
        };
        assert_eq!(spawn(&spec).unwrap().wait().await.unwrap().code(), Some(7));
        // Not on the agent's PATH.
        let spec = Spec { env: &[], ..spec };
        let e = spawn(&spec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("fleetlet-spawn-test-tool"), "{e}");
    }

    #[tokio::test]
    async fn exec_failures_and_bad_directories_are_spawn_errors() {
        let dir = tempfile::tempdir().unwrap();
        let argv = [OsString::from("/nonexistent/binary")];
        let spec = Spec {
            argv: &argv,
            env: &[],
            cwd: dir.path(),
            capture: true,
            kill_on_drop: true,
        };
        assert_eq!(spawn(&spec).unwrap_err().kind(), io::ErrorKind::NotFound);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        let argv = [plain.into_os_string()];
        let spec = Spec {
            argv: &argv,
            ..spec
        };
        assert_eq!(
            spawn(&spec).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let e = sh("true", &[], &dir.path().join("missing"), false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let bad = [("X".to_owned(), OsString::from("a\0b"))];
        let e = sh("true", &bad, dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[tokio::test]
    async fn sigpipe_is_default_in_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sh("grep SigIgn /proc/self/status", &[], dir.path(), true).unwrap();
        let out = c.stdout.take().unwrap();
        c.wait().await.unwrap();
        let line = read_all(out).await;
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(
            mask & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE ignored: {line}"
        );
    }

    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let c = sh("exec sleep 30", &[], dir.path(), false).unwrap();
        let pid = c.pid();
        drop(c);
        for _ in 0..200 {
            if crate::supervisor::process::proc_stat(pid).is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("dropped child {pid} still exists (killed but not reaped?)");
    }

    #[test]
    fn a_reaper_dropped_with_its_runtime_does_not_start_another() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let argv = ["sleep", "30"].map(OsString::from);
        let pid = rt.block_on(async {
            let c = spawn(&Spec {
                argv: &argv,
                env: &[],
                cwd: dir.path(),
                capture: false,
                kill_on_drop: false,
            })
            .unwrap();
            let pid = c.pid();
            drop(c); // still running: a reaper task takes it over
            pid
        });
        // The reaper task dies with the runtime while `sleep` still runs; its handle must not
        // hand the process to yet another reaper (that recursed until the stack overflowed).
        drop(rt);
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        rustix::process::waitpid(Some(pid), WaitOptions::empty()).unwrap();
    }
}
