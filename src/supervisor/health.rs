//! Readiness and liveness checks: `exec` and `tcp` run here; the ROS 2 kinds go to the
//! [`CheckProvider`] (the ROS 2 bridge), or fail with a clear reason when there is none.
//!
//! One check loop per check per run of a process; it sends every outcome to the process
//! actor (bounded channel; the loop waits when the actor is busy, which only delays the
//! next attempt) and stops when the run's cancellation token fires.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::process::{self, Launch, Wrap};
use super::{CheckOutcome, CheckProvider};
use crate::workload::{Check, CheckKind};

/// Readiness or liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Readiness,
    Liveness,
}

/// What a check needs from its process.
#[derive(Clone)]
pub(crate) struct CheckCtx {
    pub process: String,
    pub env: Arc<Vec<(String, OsString)>>,
    pub cwd: PathBuf,
    pub provider: Option<Arc<dyn CheckProvider>>,
}

/// Runs one attempt, bounded by `check.timeout`.
pub(crate) async fn attempt(check: &Check, ctx: &CheckCtx) -> CheckOutcome {
    match &check.kind {
        CheckKind::Exec(e) => {
            let wrap = Wrap::default();
            let launch = Launch {
                command: &e.command,
                args: &e.args,
                env: &ctx.env,
                cwd: &ctx.cwd,
                wrap: &wrap,
                capture: false,
            };
            let mut child = match process::spawn(&launch) {
                Ok(c) => c,
                Err(err) => return CheckOutcome::Fail(format!("cannot run {:?}: {err}", e.command)),
            };
            match tokio::time::timeout(check.timeout, child.wait()).await {
                Ok(Ok(s)) if s.success() => CheckOutcome::Pass,
                Ok(Ok(s)) => CheckOutcome::Fail(format!("{:?} exited with {s}", e.command)),
                Ok(Err(err)) => CheckOutcome::Fail(format!("waiting for {:?}: {err}", e.command)),
                Err(_) => {
                    let _ = process::signal_session(child.pid(), nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait().await;
                    CheckOutcome::Fail(format!(
                        "{:?} did not finish within {}",
                        e.command,
                        humantime::format_duration(check.timeout)
                    ))
                }
            }
        }
        CheckKind::Tcp(t) => {
            let addr = t.target();
            match tokio::time::timeout(check.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => CheckOutcome::Pass,
                Ok(Err(e)) => CheckOutcome::Fail(format!("tcp connect {addr}: {e}")),
                Err(_) => CheckOutcome::Fail(format!(
                    "tcp connect {addr}: no answer within {}",
                    humantime::format_duration(check.timeout)
                )),
            }
        }
        kind => match &ctx.provider {
            None => CheckOutcome::Fail(format!(
                "check kind {} needs the ROS 2 check provider: fleetlet was built without the ros2 feature (or the ROS 2 bridge is not running)",
                kind.name()
            )),
            Some(p) => match tokio::time::timeout(check.timeout, p.check(&ctx.process, check)).await {
                Ok(o) => o,
                Err(_) => CheckOutcome::Fail(format!(
                    "{} check gave no answer within {}",
                    kind.name(),
                    humantime::format_duration(check.timeout)
                )),
            },
        },
    }
}

/// Paces attempts until `cancel` fires, sending each outcome to `tx`.
pub(crate) async fn run_loop(
    which: Which,
    check: Check,
    ctx: CheckCtx,
    tx: mpsc::Sender<(Which, CheckOutcome)>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(check.initial_delay) => {}
    }
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = attempt(&check, &ctx) => o,
        };
        if tx.send((which, outcome)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}
