//! The supervisor's [`CheckProvider`] for the `ros2_*` check kinds of a workload manifest.
//!
//! `ros2_lifecycle` checks also manage the node (as Nav2's lifecycle manager does) when
//! `autostart` is on: a node found `unconfigured` — freshly started or respawned — is driven
//! configure → activate before the state is compared. The supervisor starts a process only
//! when its dependencies are ready, so activation follows the dependency order. A node that
//! is `inactive` (deactivated on purpose, or its activation failed) is left alone and fails
//! the check, which blocks readiness.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::checks::{Checker, Ros2Check};
use super::diagnostics::Level;
use super::lifecycle;
use crate::supervisor::{CheckOutcome, CheckProvider, CheckSpec};
use crate::workload::{CheckKind, DiagnosticLevel};

/// Evaluates ROS 2 checks for the supervisor.
#[derive(Debug, Clone)]
pub struct Provider {
    checker: Checker,
    autostart: bool,
}

impl Provider {
    /// A provider over `checker`; `autostart` drives unconfigured lifecycle nodes to active.
    pub fn new(checker: Checker, autostart: bool) -> Self {
        Self { checker, autostart }
    }

    /// As the trait object the supervisor takes.
    pub fn shared(self) -> Arc<dyn CheckProvider> {
        Arc::new(self)
    }
}

/// The workload check kind as a [`Ros2Check`] (None for non-ROS kinds).
pub fn to_ros2_check(kind: &CheckKind) -> Option<Ros2Check> {
    Some(match kind {
        CheckKind::Ros2TopicRate(t) => Ros2Check::TopicRate {
            topic: t.topic.clone(),
            min_hz: t.min_hz,
            window: t.window,
        },
        CheckKind::Ros2Lifecycle(l) => Ros2Check::Lifecycle {
            node: l.node.clone(),
            state: l.state.clone(),
        },
        CheckKind::Ros2Diagnostics(d) => Ros2Check::Diagnostics {
            name: d.name.clone(),
            hardware_id: d.hardware_id.clone(),
            max_level: match d.max_level {
                DiagnosticLevel::Ok => Level::Ok,
                DiagnosticLevel::Warn => Level::Warn,
                DiagnosticLevel::Error => Level::Error,
                DiagnosticLevel::Stale => Level::Stale,
            },
            stale_after: d.stale_after,
        },
        _ => return None,
    })
}

impl CheckProvider for Provider {
    fn check(&self, process: &str, check: &CheckSpec) -> BoxFuture<'static, CheckOutcome> {
        let me = self.clone();
        let process = process.to_owned();
        let kind = check.kind.clone();
        Box::pin(async move {
            let Some(c) = to_ros2_check(&kind) else {
                return CheckOutcome::Fail(format!("{} is not a ROS 2 check", kind.name()));
            };
            if let (true, Ros2Check::Lifecycle { node, state }) = (me.autostart, &c) {
                if state == "active" {
                    match me.checker.lifecycle.get_state(node).await {
                        Ok(s) if s.id == lifecycle::state::UNCONFIGURED => {
                            if let Err(e) = me.checker.lifecycle.ensure_active(node).await {
                                return CheckOutcome::Fail(format!("bring-up of {node}: {e}"));
                            }
                            tracing::info!(process = %process, node = %node, "lifecycle node driven to active");
                        }
                        Ok(_) => {}
                        Err(e) => return CheckOutcome::Fail(e.to_string()),
                    }
                }
            }
            match me.checker.evaluate(&c).await {
                Ok(_) => CheckOutcome::Pass,
                Err(why) => CheckOutcome::Fail(why),
            }
        })
    }
}
