//! The engine: one task that owns the workload and routes commands, plus one actor task
//! per process that owns its child, checks, backoff and crash window.
//!
//! Ordering: an actor starts its process only when its dependencies' published status
//! satisfies the declared condition (it waits on the snapshot `watch`). Stops (shutdown,
//! `apply`) go level by level: processes nobody depends on first, then their
//! dependencies, so a process stops only after all its dependants have.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cgroup::Cgroups;
use super::env::WorkloadEnv;
use super::health::{self, CheckCtx, Which};
use super::logs::{self, Buffer, LogStream};
use super::orphans::{self, Record, RecordMsg};
use super::process::{self, Launch, Wrap};
use super::restart::{BackoffState, CrashWindow};
use super::{
    ms, CheckOutcome, CheckProvider, Command, Config, Error, ExitInfo, Hooks, LimitApplied,
    LimitsApplied, Op, PreStop, ProcessState, ProcessStatus, Snapshot,
};
use crate::runtime::Services;
use crate::status::{Metric, Reporter, SubsystemState};
use crate::telemetry::{now_ms, Priority, Sink};
use crate::workload::{Condition, ProcessSpec, RestartPolicy, Workload};

/// Messages to one actor.
enum ActorMsg {
    Op {
        op: Op,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    DependencyRestarted,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Actor → engine.
enum EngineEvent {
    /// The process is restarting and declared `restart_dependants`.
    Restarting(String),
}

/// What actors share.
struct Shared {
    telemetry: Sink,
    snap: watch::Sender<Snapshot>,
    logs: logs::Registry,
    provider: Option<Arc<dyn CheckProvider>>,
    pre_stop: Option<Arc<dyn PreStop>>,
    cgroups: Arc<Cgroups>,
    records: mpsc::Sender<RecordMsg>,
    events: mpsc::Sender<EngineEvent>,
    tracker: TaskTracker,
    kernel_boot_id: String,
}

struct ActorHandle {
    tx: mpsc::Sender<ActorMsg>,
    task: JoinHandle<()>,
}

/// Spawns the engine, the record persister and the status reporter on `svc.tracker`.
pub(super) fn spawn(
    svc: &Services,
    cfg: Config,
    hooks: Hooks,
    rx: mpsc::Receiver<Command>,
    snap: watch::Sender<Snapshot>,
    logs: logs::Registry,
    initial: Option<Workload>,
) {
    let reporter = svc.status.register("supervisor");
    let tree = svc.db.open_tree(orphans::TREE);
    let (rec_tx, rec_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let cancel = svc.cancel.child_token();
    svc.tracker.spawn(report_status(
        reporter.clone(),
        snap.subscribe(),
        cancel.clone(),
    ));
    if std::process::id() == 1 {
        svc.tracker.spawn(orphans::reap_zombies(cancel.clone()));
    }
    let tracker = svc.tracker.clone();
    let telemetry = svc.telemetry.clone();
    svc.tracker.spawn(async move {
        let tree = match tree {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the supervisor tree; leftovers of a crashed agent cannot be tracked");
                reporter.set_state(SubsystemState::Failed);
                reporter.set_detail(json!({ "error": format!("cannot open sled tree {}: {e}", orphans::TREE) }));
                return;
            }
        };
        let leftovers = orphans::clean_leftovers(tree.clone()).await;
        for l in &leftovers {
            tracing::warn!(process = %l.process, pgid = l.pgid, action = %l.action, "leftover process group of a previous agent");
            telemetry.emit("supervisor", Priority::Normal, json!({ "kind": "leftover", "process": l.process, "pgid": l.pgid, "action": l.action }));
        }
        let persister = tracker.spawn(orphans::persist(tree, rec_rx));
        let cgroups = tokio::task::spawn_blocking(move || Cgroups::detect(cfg.cgroups))
            .await
            .unwrap_or_else(|e| Cgroups::Unavailable(format!("detection failed: {e}")));
        if let Some(why) = cgroups.reason() {
            tracing::info!(reason = %why, "cgroup v2 limits unavailable; memory limits use rlimits");
        }
        let shared = Arc::new(Shared {
            telemetry,
            snap,
            logs,
            provider: hooks.checks,
            pre_stop: hooks.pre_stop,
            cgroups: Arc::new(cgroups),
            records: rec_tx,
            events: ev_tx,
            tracker: tracker.clone(),
            kernel_boot_id: orphans::kernel_boot_id(),
        });
        let mut engine = Engine {
            shared,
            actors: BTreeMap::new(),
            workload: None,
            cancel,
        };
        if let Some(w) = initial {
            engine.apply(w).await;
        }
        reporter.set_state(SubsystemState::Running);
        engine.run(rx, ev_rx).await;
        // Dropping the engine drops the last record sender; the persister drains and ends.
        drop(engine);
        let _ = persister.await;
    });
}

struct Engine {
    shared: Arc<Shared>,
    actors: BTreeMap<String, ActorHandle>,
    workload: Option<Arc<Workload>>,
    cancel: CancellationToken,
}

impl Engine {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<EngineEvent>,
    ) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    self.stop_all("agent shutdown").await;
                    return;
                }
                cmd = rx.recv() => match cmd {
                    None => {
                        self.stop_all("supervisor handle dropped").await;
                        return;
                    }
                    Some(Command::Shutdown { reply }) => {
                        self.stop_all("shutdown requested").await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Command::Apply { workload, reply }) => {
                        self.apply(*workload).await;
                        let _ = reply.send(Ok(()));
                    }
                    Some(Command::Op { op, name, reply }) => self.forward(op, name, reply),
                },
                Some(ev) = events.recv() => match ev {
                    EngineEvent::Restarting(name) => self.restart_dependants(&name),
                },
            }
        }
    }

    fn forward(&self, op: Op, name: String, reply: oneshot::Sender<Result<(), Error>>) {
        let Some(actor) = self.actors.get(&name) else {
            let _ = reply.send(Err(Error::UnknownProcess { name }));
            return;
        };
        let tx = actor.tx.clone();
        // Never block the engine on a busy actor (it may be in a 10 s stop ladder).
        self.shared.tracker.spawn(async move {
            if let Err(mpsc::error::SendError(ActorMsg::Op { reply, .. })) =
                tx.send(ActorMsg::Op { op, reply }).await
            {
                let _ = reply.send(Err(Error::Closed));
            }
        });
    }

    fn restart_dependants(&self, name: &str) {
        let Some(w) = &self.workload else { return };
        let mut todo = vec![name.to_owned()];
        let mut seen = BTreeSet::new();
        while let Some(n) = todo.pop() {
            for d in w.dependants(&n) {
                if seen.insert(d.clone()) {
                    todo.push(d);
                }
            }
        }
        for d in seen {
            if let Some(a) = self.actors.get(&d) {
                if a.tx.try_send(ActorMsg::DependencyRestarted).is_err() {
                    tracing::warn!(process = %d, "actor busy; dependency restart not delivered");
                }
            }
        }
    }

    /// Stops all processes, dependants before their dependencies, and ends the actors.
    async fn stop_all(&mut self, why: &str) {
        let Some(w) = self.workload.take() else {
            return;
        };
        tracing::info!(
            reason = why,
            processes = self.actors.len(),
            "stopping workload"
        );
        // level(p) = 0 when nobody depends on p, else 1 + max(level(dependant)).
        let mut level: BTreeMap<String, usize> = BTreeMap::new();
        for name in w.start_order().iter().rev() {
            let l = w
                .dependants(name)
                .iter()
                .filter_map(|d| level.get(d))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(name.clone(), l);
        }
        let max = level.values().copied().max().unwrap_or(0);
        for l in 0..=max {
            let mut waits = Vec::new();
            for (name, _) in level.iter().filter(|(_, v)| **v == l) {
                if let Some(a) = self.actors.get(name) {
                    let (tx, rx) = oneshot::channel();
                    if a.tx.send(ActorMsg::Shutdown { reply: tx }).await.is_ok() {
                        waits.push(rx);
                    }
                }
            }
            for rx in waits {
                let _ = rx.await;
            }
        }
        for (_, a) in std::mem::take(&mut self.actors) {
            drop(a.tx);
            let _ = a.task.await;
        }
    }

    async fn apply(&mut self, w: Workload) {
        self.stop_all("new workload").await;
        let w = Arc::new(w);
        let wc = w.clone();
        let env = tokio::task::spawn_blocking(move || WorkloadEnv::build(&wc))
            .await
            .unwrap_or_default();
        self.shared.snap.send_modify(|s| {
            s.generation += 1;
            s.processes = w
                .processes
                .keys()
                .map(|n| (n.clone(), ProcessStatus::new()))
                .collect();
        });
        for name in w.start_order() {
            let Some(spec) = w.processes.get(&name) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(16);
            let actor = Actor {
                name: name.clone(),
                spec: Arc::new(spec.clone()),
                env: Arc::new(env.for_process(spec)),
                cwd: spec
                    .working_dir
                    .as_deref()
                    .map_or_else(|| w.root.clone(), |d| w.resolve(d)),
                shared: self.shared.clone(),
                log: self.shared.logs.get_or_create(&name),
                rx,
                backoff: BackoffState::new(spec.backoff),
                crash: CrashWindow::new(spec.crash_loop),
            };
            let task = self.shared.tracker.spawn(actor.run());
            self.actors.insert(name, ActorHandle { tx, task });
        }
        self.shared.telemetry.emit(
            "supervisor",
            Priority::Normal,
            json!({ "kind": "workload_applied", "processes": w.start_order(), "root": w.root }),
        );
        self.workload = Some(w);
    }
}

/// Why a run ended.
enum RunEnd {
    /// The process exited on its own (or was killed for failing a check).
    Exited {
        info: Option<ExitInfo>,
        failure: bool,
        reason: String,
    },
    Stopped(oneshot::Sender<Result<(), Error>>),
    Restart(oneshot::Sender<Result<(), Error>>),
    DependencyRestarted,
    Shutdown(oneshot::Sender<()>),
}

/// What happened while waiting (for dependencies, a delay, an operator).
enum Wait {
    Done,
    Stop(oneshot::Sender<Result<(), Error>>),
    Restart(oneshot::Sender<Result<(), Error>>),
    Shutdown(oneshot::Sender<()>),
}

struct Actor {
    name: String,
    spec: Arc<ProcessSpec>,
    env: Arc<Vec<(String, OsString)>>,
    cwd: PathBuf,
    shared: Arc<Shared>,
    log: Arc<Buffer>,
    rx: mpsc::Receiver<ActorMsg>,
    backoff: BackoffState,
    crash: CrashWindow,
}

impl Actor {
    fn status(&self) -> ProcessStatus {
        self.shared
            .snap
            .borrow()
            .processes
            .get(&self.name)
            .cloned()
            .unwrap_or_else(ProcessStatus::new)
    }

    fn update(&self, f: impl FnOnce(&mut ProcessStatus)) {
        let suppressed = self.log.suppressed();
        self.shared.snap.send_modify(|s| {
            if let Some(p) = s.processes.get_mut(&self.name) {
                f(p);
                p.log_suppressed = suppressed;
            }
        });
    }

    /// Enters `state` (publishing the transition as an event when the state changes).
    fn set_state(&self, state: ProcessState, reason: Option<String>) {
        let before = self.status();
        let ready = matches!(state, ProcessState::Running | ProcessState::Ready)
            || (state == ProcessState::Paused && before.ready);
        self.update(|p| {
            p.state = state;
            p.ready = ready;
            p.reason = reason.clone();
            p.since_ms = now_ms();
            if !state.is_alive() {
                p.pid = None;
                p.healthy = true;
            }
            if state != ProcessState::Backoff {
                p.backoff_ms = None;
            }
        });
        if before.state != state {
            let after = self.status();
            tracing::info!(process = %self.name, from = %before.state, to = %state, pid = ?after.pid, reason = reason.as_deref().unwrap_or(""), "process state");
            self.shared.telemetry.emit(
                "supervisor",
                Priority::Normal,
                json!({ "kind": "process_state", "process": self.name, "from": before.state, "to": state,
                        "pid": after.pid, "restarts": after.restarts, "reason": reason }),
            );
            if state == ProcessState::Failed {
                self.shared.telemetry.event(
                    Priority::Critical,
                    "process_failed",
                    json!({ "process": self.name, "reason": reason, "restarts": after.restarts }),
                );
            }
        }
    }

    async fn run(mut self) {
        // `Some(state)`: parked until an operator starts it again.
        let mut parked: Option<ProcessState> = None;
        loop {
            if parked.is_some() {
                match self.rx.recv().await {
                    None => return,
                    Some(ActorMsg::Shutdown { reply }) => {
                        let _ = reply.send(());
                        return;
                    }
                    Some(ActorMsg::DependencyRestarted) => continue,
                    Some(ActorMsg::Op { op, reply }) => match op {
                        Op::Start | Op::Restart => {
                            self.backoff.reset();
                            self.crash.clear();
                            if op == Op::Restart {
                                self.update(|p| p.restarts += 1);
                            }
                            parked = None;
                            let _ = reply.send(Ok(()));
                        }
                        Op::Stop => {
                            if parked == Some(ProcessState::Exited)
                                || parked == Some(ProcessState::Failed)
                            {
                                parked = Some(ProcessState::Stopped);
                                self.set_state(
                                    ProcessState::Stopped,
                                    Some("stopped by operator".into()),
                                );
                            }
                            let _ = reply.send(Ok(()));
                        }
                        Op::Pause | Op::Resume => {
                            let _ = reply.send(Err(self.invalid(op)));
                        }
                    },
                }
                continue;
            }
            self.set_state(ProcessState::Pending, None);
            match self.wait_deps().await {
                Wait::Done => {}
                other => {
                    if let Some(p) = self.handle_wait(other) {
                        if p == ProcessState::Pending {
                            return;
                        }
                        parked = Some(p);
                    }
                    continue;
                }
            }
            match self.run_once().await {
                RunEnd::Stopped(reply) => {
                    self.set_state(ProcessState::Stopped, Some("stopped by operator".into()));
                    let _ = reply.send(Ok(()));
                    parked = Some(ProcessState::Stopped);
                }
                RunEnd::Restart(reply) => {
                    self.backoff.reset();
                    self.crash.clear();
                    self.update(|p| p.restarts += 1);
                    self.notify_restart();
                    let _ = reply.send(Ok(()));
                }
                RunEnd::DependencyRestarted => {
                    self.update(|p| p.restarts += 1);
                }
                RunEnd::Shutdown(reply) => {
                    self.set_state(ProcessState::Stopped, Some("supervisor shutdown".into()));
                    let _ = reply.send(());
                    return;
                }
                RunEnd::Exited {
                    info,
                    failure,
                    reason,
                } => {
                    let ran = info
                        .as_ref()
                        .map_or(Duration::ZERO, |i| Duration::from_millis(i.ran_ms));
                    let restart = match self.spec.restart {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => failure,
                        RestartPolicy::Never => false,
                    };
                    if !restart {
                        let state = if failure {
                            ProcessState::Failed
                        } else {
                            ProcessState::Exited
                        };
                        self.set_state(state, Some(reason));
                        parked = Some(state);
                        continue;
                    }
                    if ran >= self.spec.backoff.reset_after {
                        self.crash.clear();
                    }
                    if self.crash.record(Instant::now()) {
                        let why = format!(
                            "crash loop: {} restarts within {} (last: {reason})",
                            self.spec.crash_loop.max_failures,
                            humantime::format_duration(self.spec.crash_loop.window)
                        );
                        self.log.note(format!("[fleetlet] {why}; not restarting until an operator or a new bundle acts"));
                        self.set_state(ProcessState::Failed, Some(why));
                        parked = Some(ProcessState::Failed);
                        continue;
                    }
                    let delay = self.backoff.next_delay(ran, rand::random::<f64>());
                    let failures = self.backoff.failures();
                    self.update(|p| {
                        p.restarts += 1;
                        p.consecutive_failures = failures;
                    });
                    self.notify_restart();
                    if delay.is_zero() {
                        continue;
                    }
                    self.set_state(ProcessState::Backoff, Some(reason));
                    self.update(|p| p.backoff_ms = Some(ms(delay)));
                    let w = self.wait_for(Some(delay)).await;
                    if let Some(p) = self.handle_wait(w) {
                        if p == ProcessState::Pending {
                            return;
                        }
                        parked = Some(p);
                    }
                }
            }
        }
    }

    /// Applies what interrupted a wait: `Some(Stopped)` to park, `Some(Pending)` to end
    /// the actor (shutdown), `None` to go on (start now).
    fn handle_wait(&mut self, w: Wait) -> Option<ProcessState> {
        match w {
            Wait::Done => None,
            Wait::Restart(reply) => {
                self.backoff.reset();
                self.crash.clear();
                let _ = reply.send(Ok(()));
                None
            }
            Wait::Stop(reply) => {
                self.set_state(ProcessState::Stopped, Some("stopped by operator".into()));
                let _ = reply.send(Ok(()));
                Some(ProcessState::Stopped)
            }
            Wait::Shutdown(reply) => {
                self.set_state(ProcessState::Stopped, Some("supervisor shutdown".into()));
                let _ = reply.send(());
                Some(ProcessState::Pending)
            }
        }
    }

    fn invalid(&self, op: Op) -> Error {
        Error::InvalidState {
            name: self.name.clone(),
            op: op.as_str(),
            state: self.status().state,
        }
    }

    fn notify_restart(&self) {
        if self.spec.restart_dependants
            && self
                .shared
                .events
                .try_send(EngineEvent::Restarting(self.name.clone()))
                .is_err()
        {
            tracing::warn!(process = %self.name, "engine busy; dependants not restarted");
        }
    }

    /// Waits for `delay` (or forever when `None`), serving operator messages meanwhile.
    async fn wait_for(&mut self, delay: Option<Duration>) -> Wait {
        let sleep = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Wait::Done,
                msg = self.rx.recv() => match msg {
                    None => return Wait::Shutdown(oneshot::channel().0),
                    Some(ActorMsg::Shutdown { reply }) => return Wait::Shutdown(reply),
                    Some(ActorMsg::DependencyRestarted) => {}
                    Some(ActorMsg::Op { op, reply }) => match op {
                        Op::Stop => return Wait::Stop(reply),
                        Op::Restart => return Wait::Restart(reply),
                        Op::Start => { let _ = reply.send(Ok(())); }
                        Op::Pause | Op::Resume => { let _ = reply.send(Err(self.invalid(op))); }
                    },
                },
            }
        }
    }

    fn deps_satisfied(&self, snap: &Snapshot) -> bool {
        self.spec.depends_on.0.iter().all(|(dep, cond)| {
            let Some(s) = snap.processes.get(dep) else {
                return false;
            };
            let done = s.state == ProcessState::Exited
                && s.last_exit.as_ref().is_some_and(ExitInfo::success);
            done || match cond {
                Condition::Started => matches!(
                    s.state,
                    ProcessState::Starting
                        | ProcessState::Running
                        | ProcessState::Ready
                        | ProcessState::Paused
                ),
                Condition::Ready => s.ready,
            }
        })
    }

    async fn wait_deps(&mut self) -> Wait {
        let mut rx = self.shared.snap.subscribe();
        loop {
            if self.deps_satisfied(&rx.borrow_and_update()) {
                break;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Wait::Shutdown(oneshot::channel().0) },
                msg = self.rx.recv() => match msg {
                    None => return Wait::Shutdown(oneshot::channel().0),
                    Some(ActorMsg::Shutdown { reply }) => return Wait::Shutdown(reply),
                    Some(ActorMsg::DependencyRestarted) => {}
                    Some(ActorMsg::Op { op, reply }) => match op {
                        Op::Stop => return Wait::Stop(reply),
                        Op::Restart | Op::Start => { let _ = reply.send(Ok(())); }
                        Op::Pause | Op::Resume => { let _ = reply.send(Err(self.invalid(op))); }
                    },
                },
            }
        }
        if let Some(d) = self.spec.start_delay.filter(|d| !d.is_zero()) {
            return self.wait_for(Some(d)).await;
        }
        Wait::Done
    }

    /// Decides how limits apply to this process.
    fn plan_limits(&self) -> (Wrap, LimitsApplied) {
        let limits = &self.spec.limits;
        let mut wrap = Wrap::default();
        let mut applied = LimitsApplied::default();
        if limits.memory.is_none() && limits.cpu.is_none() {
            return (wrap, applied);
        }
        let cg_reason = match self.shared.cgroups.prepare(&self.name, limits) {
            Ok((dir, mem, cpu)) => {
                let shown = dir.display().to_string();
                if mem {
                    applied.memory = LimitApplied::Cgroup(format!("{shown}/memory.max"));
                }
                if cpu {
                    applied.cpu = LimitApplied::Cgroup(format!("{shown}/cpu.max"));
                }
                wrap.cgroup = Some(dir);
                None
            }
            Err(e) => Some(self.shared.cgroups.reason().map_or(e, str::to_owned)),
        };
        if let Some(reason) = cg_reason {
            if let Some(m) = limits.memory {
                wrap.rlimit_data = Some(m.0);
                applied.memory = LimitApplied::Rlimit(format!(
                    "RLIMIT_DATA={} bytes via prlimit (no cgroup: {reason})",
                    m.0
                ));
            }
            if limits.cpu.is_some() {
                applied.cpu = LimitApplied::NotApplied(format!(
                    "a CPU quota needs a delegated cgroup v2: {reason}"
                ));
            }
        } else if limits.cpu.is_some() && !matches!(applied.cpu, LimitApplied::Cgroup(_)) {
            applied.cpu =
                LimitApplied::NotApplied("the delegated cgroup has no cpu controller".into());
        }
        (wrap, applied)
    }

    async fn run_once(&mut self) -> RunEnd {
        let (wrap, applied) = self.plan_limits();
        let launch = Launch {
            command: &self.spec.command,
            args: &self.spec.args,
            env: &self.env,
            cwd: &self.cwd,
            wrap: &wrap,
            capture: true,
        };
        let started = Instant::now();
        let mut child = match process::spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot start {:?} in {}: {e}",
                    self.spec.command,
                    self.cwd.display()
                );
                self.log.note(format!("[fleetlet] {reason}"));
                tracing::error!(process = %self.name, error = %e, "spawn failed");
                return RunEnd::Exited {
                    info: None,
                    failure: true,
                    reason,
                };
            }
        };
        let pgid = child.pid();
        let pid = pgid.unsigned_abs();
        let tracker = &self.shared.tracker;
        let max_line = self.shared.logs.max_line_bytes();
        if let Some(out) = child.stdout.take() {
            tracker.spawn(logs::capture(
                out,
                LogStream::Stdout,
                self.log.clone(),
                max_line,
            ));
        }
        if let Some(err) = child.stderr.take() {
            tracker.spawn(logs::capture(
                err,
                LogStream::Stderr,
                self.log.clone(),
                max_line,
            ));
        }
        let has_readiness = self.spec.readiness.is_some();
        self.update(|p| {
            p.pid = Some(pid);
            p.limits = applied;
            p.healthy = true;
        });
        self.set_state(
            if has_readiness {
                ProcessState::Starting
            } else {
                ProcessState::Running
            },
            None,
        );
        self.record(pgid);

        let (check_tx, mut check_rx) = mpsc::channel::<(Which, CheckOutcome)>(8);
        let ctx = CheckCtx {
            process: self.name.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            provider: self.shared.provider.clone(),
        };
        let mut checks = CancellationToken::new();
        let start_checks = |which: Which, token: &CancellationToken| {
            let check = match which {
                Which::Readiness => self.spec.readiness.clone(),
                Which::Liveness => self.spec.liveness.clone(),
            };
            if let Some(c) = check {
                tracker.spawn(health::run_loop(
                    which,
                    c,
                    ctx.clone(),
                    check_tx.clone(),
                    token.clone(),
                ));
            }
        };
        let mut ready = !has_readiness;
        start_checks(
            if ready {
                Which::Liveness
            } else {
                Which::Readiness
            },
            &checks,
        );
        let deadline = self
            .spec
            .readiness
            .as_ref()
            .and_then(|r| r.deadline)
            .map(|d| tokio::time::Instant::now() + d);
        let mut live_failures = 0u32;
        let mut paused = false;
        let mut exit: Option<ExitStatus> = None;

        let end = loop {
            let deadline_fut = async {
                match deadline {
                    Some(d) if !ready && !paused => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                r = child.wait() => {
                    exit = Some(r.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0)));
                    checks.cancel();
                    // The leader is gone; anything left in its session goes too before a restart.
                    let mut rest = None;
                    if process::session_alive(pgid, None) {
                        self.set_state(ProcessState::Stopping, Some("leader exited; stopping the rest of its session".into()));
                        rest = Some(process::stop_session(pgid, &mut child, &mut exit, &self.spec.stop, paused).await);
                    }
                    let info = self.exit_info(exit.as_ref(), started);
                    let failure = !info.success();
                    let mut reason = describe_exit(&info);
                    if let Some(r) = rest {
                        reason.push_str(&format!("; leftover group members stopped with {}", signals(&r.sent)));
                    }
                    break RunEnd::Exited { info: Some(info), failure, reason };
                }
                Some((which, outcome)) = check_rx.recv() => match (which, outcome) {
                    (Which::Readiness, CheckOutcome::Pass) if !ready => {
                        ready = true;
                        checks.cancel();
                        checks = CancellationToken::new();
                        start_checks(Which::Liveness, &checks);
                        self.set_state(ProcessState::Ready, None);
                    }
                    (Which::Readiness, CheckOutcome::Fail(why)) => {
                        self.update(|p| p.reason = Some(format!("not ready: {why}")));
                    }
                    (Which::Liveness, CheckOutcome::Pass) if live_failures > 0 || !self.status().healthy => {
                        live_failures = 0;
                        self.update(|p| { p.healthy = true; p.reason = None; });
                    }
                    (Which::Liveness, CheckOutcome::Fail(why)) => {
                        live_failures += 1;
                        let threshold = self.spec.liveness.as_ref().map_or(1, |l| l.failure_threshold);
                        self.update(|p| { p.healthy = false; p.reason = Some(format!("liveness failed ({live_failures}/{threshold}): {why}")); });
                        if live_failures >= threshold {
                            let reason = format!("liveness failed {live_failures} times: {why}");
                            self.log.note(format!("[fleetlet] {reason}; restarting per policy"));
                            checks.cancel();
                            self.stop(pgid, &mut child, &mut exit, paused, &reason, false).await;
                            let info = self.exit_info(exit.as_ref(), started);
                            break RunEnd::Exited { info: Some(info), failure: true, reason };
                        }
                    }
                    _ => {}
                },
                _ = deadline_fut => {
                    let reason = format!(
                        "not ready within {}",
                        humantime::format_duration(self.spec.readiness.as_ref().and_then(|r| r.deadline).unwrap_or_default())
                    );
                    checks.cancel();
                    self.stop(pgid, &mut child, &mut exit, paused, &reason, false).await;
                    let info = self.exit_info(exit.as_ref(), started);
                    break RunEnd::Exited { info: Some(info), failure: true, reason };
                }
                msg = self.rx.recv() => match msg {
                    None => {
                        checks.cancel();
                        self.stop(pgid, &mut child, &mut exit, paused, "supervisor gone", true).await;
                        break RunEnd::Shutdown(oneshot::channel().0);
                    }
                    Some(ActorMsg::Shutdown { reply }) => {
                        checks.cancel();
                        self.stop(pgid, &mut child, &mut exit, paused, "supervisor shutdown", true).await;
                        break RunEnd::Shutdown(reply);
                    }
                    Some(ActorMsg::DependencyRestarted) => {
                        checks.cancel();
                        self.stop(pgid, &mut child, &mut exit, paused, "a dependency restarted", true).await;
                        break RunEnd::DependencyRestarted;
                    }
                    Some(ActorMsg::Op { op, reply }) => match op {
                        Op::Start => { let _ = reply.send(Ok(())); }
                        Op::Stop => {
                            checks.cancel();
                            self.stop(pgid, &mut child, &mut exit, paused, "stopped by operator", true).await;
                            break RunEnd::Stopped(reply);
                        }
                        Op::Restart => {
                            checks.cancel();
                            self.stop(pgid, &mut child, &mut exit, paused, "restarted by operator", true).await;
                            break RunEnd::Restart(reply);
                        }
                        Op::Pause if !paused => {
                            match process::signal_session(pgid, nix::sys::signal::Signal::SIGSTOP) {
                                Ok(()) => {
                                    paused = true;
                                    checks.cancel();
                                    self.set_state(ProcessState::Paused, Some("paused by operator".into()));
                                    let _ = reply.send(Ok(()));
                                }
                                Err(source) => { let _ = reply.send(Err(Error::Signal { name: self.name.clone(), pgid, source })); }
                            }
                        }
                        Op::Resume if paused => {
                            match process::signal_session(pgid, nix::sys::signal::Signal::SIGCONT) {
                                Ok(()) => {
                                    paused = false;
                                    checks = CancellationToken::new();
                                    live_failures = 0;
                                    start_checks(if ready { Which::Liveness } else { Which::Readiness }, &checks);
                                    let state = if !ready { ProcessState::Starting } else if has_readiness { ProcessState::Ready } else { ProcessState::Running };
                                    self.set_state(state, None);
                                    let _ = reply.send(Ok(()));
                                }
                                Err(source) => { let _ = reply.send(Err(Error::Signal { name: self.name.clone(), pgid, source })); }
                            }
                        }
                        Op::Pause | Op::Resume => { let _ = reply.send(Err(self.invalid(op))); }
                    },
                },
            }
        };
        checks.cancel();
        if let RunEnd::Exited {
            info: Some(info), ..
        } = &end
        {
            let info = info.clone();
            self.update(|p| p.last_exit = Some(info));
        } else if exit.is_some() {
            let info = self.exit_info(exit.as_ref(), started);
            self.update(|p| p.last_exit = Some(info));
        }
        self.unrecord(pgid);
        if wrap.cgroup.is_some() {
            let cg = self.shared.cgroups.clone();
            let name = self.name.clone();
            // Best effort, off the async workers.
            let _ = tokio::task::spawn_blocking(move || cg.remove(&name)).await;
        }
        end
    }

    /// Stops the group with the stop ladder; `on_purpose` (not for a failed check) runs the
    /// [`PreStop`] hook first when the process can still cooperate.
    async fn stop(
        &self,
        pgid: i32,
        child: &mut super::spawn::Child,
        exit: &mut Option<ExitStatus>,
        paused: bool,
        why: &str,
        on_purpose: bool,
    ) {
        self.set_state(ProcessState::Stopping, Some(why.to_owned()));
        if on_purpose && !paused && exit.is_none() {
            self.run_pre_stop(child, exit).await;
        }
        let report = process::stop_session(pgid, child, exit, &self.spec.stop, paused).await;
        let note = format!(
            "[fleetlet] stop ({why}): sent {} in {} ms{}",
            signals(&report.sent),
            report.took.as_millis(),
            if report.gone {
                ""
            } else {
                "; members survived SIGKILL (uninterruptible?)"
            }
        );
        self.log.note(note);
        tracing::info!(process = %self.name, pgid, signals = %signals(&report.sent), took_ms = report.took.as_millis() as u64, gone = report.gone, "process group stopped");
        if !report.gone {
            self.shared.telemetry.event(
                Priority::Critical,
                "process_unkillable",
                json!({ "process": self.name, "pgid": pgid }),
            );
        }
    }

    /// Runs the pre-stop hook (if any applies to this process) for at most its timeout, or
    /// until the process exits by itself.
    async fn run_pre_stop(&self, child: &mut super::spawn::Child, exit: &mut Option<ExitStatus>) {
        let Some(hook) = &self.shared.pre_stop else {
            return;
        };
        let Some(work) = hook.pre_stop(&self.name, &self.spec) else {
            return;
        };
        let limit = hook.timeout();
        let started = Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(limit, work) => match r {
                Ok(Ok(())) => "done".to_owned(),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(_) => format!("timed out after {}", humantime::format_duration(limit)),
            },
            r = child.wait() => {
                *exit = Some(r.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0)));
                "cut short: the process exited".to_owned()
            }
        };
        let took_ms = started.elapsed().as_millis() as u64;
        self.log
            .note(format!("[fleetlet] pre-stop hook {outcome} ({took_ms} ms)"));
        tracing::info!(process = %self.name, took_ms, outcome = %outcome, "pre-stop hook");
    }

    fn exit_info(&self, status: Option<&ExitStatus>, started: Instant) -> ExitInfo {
        let (code, signal) = status.map_or((None, None), process::describe);
        ExitInfo {
            code,
            signal,
            at_ms: now_ms(),
            ran_ms: ms(started.elapsed()),
        }
    }

    fn record(&self, pgid: i32) {
        let starttime = process::proc_stat(pgid).map_or(0, |s| s.starttime);
        let rec = Record {
            process: self.name.clone(),
            pgid,
            starttime,
            kernel_boot_id: self.shared.kernel_boot_id.clone(),
            command: self.spec.command.clone(),
            stop: self
                .spec
                .stop
                .iter()
                .map(|s| (s.signal.0 as i32, ms(s.timeout)))
                .collect(),
        };
        if self.shared.records.try_send(RecordMsg::Add(rec)).is_err() {
            tracing::error!(process = %self.name, pgid, "record queue full; this group would survive an agent crash");
        }
    }

    fn unrecord(&self, pgid: i32) {
        let _ = self.shared.records.try_send(RecordMsg::Remove(pgid));
    }
}

fn describe_exit(info: &ExitInfo) -> String {
    match (&info.code, &info.signal) {
        (Some(c), _) => format!("exited with code {c} after {} ms", info.ran_ms),
        (None, Some(s)) => format!("killed by {s} after {} ms", info.ran_ms),
        (None, None) => format!("ended after {} ms", info.ran_ms),
    }
}

fn signals(s: &[nix::sys::signal::Signal]) -> String {
    s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" → ")
}

/// Publishes the snapshot into the status registry (`/v1/status`, `/metrics`).
async fn report_status(
    reporter: Reporter,
    mut rx: watch::Receiver<Snapshot>,
    cancel: CancellationToken,
) {
    loop {
        let snap = rx.borrow_and_update().clone();
        let failed = snap.failed();
        if reporter.state() != SubsystemState::Starting
            && reporter.state() != SubsystemState::Failed
        {
            reporter.set_state(if failed.is_empty() {
                SubsystemState::Running
            } else {
                SubsystemState::Degraded
            });
        }
        reporter.set_detail(json!({
            "generation": snap.generation,
            "all_ready": snap.all_ready(),
            "failed": failed,
            "processes": snap.processes,
        }));
        let mut metrics = Vec::with_capacity(snap.processes.len() * 4);
        for (name, p) in &snap.processes {
            metrics.push(
                Metric::counter(
                    "fleetlet_process_restarts_total",
                    "Restarts of a supervised process.",
                    p.restarts as f64,
                )
                .label("process", name),
            );
            metrics.push(
                Metric::gauge(
                    "fleetlet_process_state",
                    "State of a supervised process: 0 pending, 1 starting, 2 running, 3 ready, 4 backoff, 5 stopping, 6 stopped, 7 exited, 8 failed, 9 paused.",
                    p.state.as_gauge(),
                )
                .label("process", name),
            );
            metrics.push(
                Metric::gauge(
                    "fleetlet_process_ready",
                    "1 when a supervised process is ready.",
                    if p.ready { 1.0 } else { 0.0 },
                )
                .label("process", name),
            );
            metrics.push(
                Metric::counter(
                    "fleetlet_process_log_suppressed_total",
                    "Output lines of a supervised process dropped by the log rate limit.",
                    p.log_suppressed as f64,
                )
                .label("process", name),
            );
        }
        reporter.set_metrics(metrics);
        tokio::select! {
            _ = cancel.cancelled() => {
                // One last report after the ordered stop ran (the engine stops on the same token).
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
