//! Managed (lifecycle) nodes: state queries and transitions through the standard
//! `<node>/get_state` and `<node>/change_state` services (lifecycle_msgs).
//!
//! Bring-up drives each node unconfigured → inactive → active in the order given (the
//! workload's dependency order), as Nav2's lifecycle manager does; teardown goes in reverse
//! (active → inactive → unconfigured). [`Lifecycle::ensure_active`] is what the supervisor
//! calls after (re)starting a managed node: a respawned node comes back `unconfigured` and
//! only counts as ready once it is driven to `active` again.
//!
//! Teardown before stop: [`Teardown`] is the supervisor's [`PreStop`] hook. Before a managed
//! node's process gets the stop ladder's SIGINT, its lifecycle nodes (those named by its
//! `ros2_lifecycle` checks) are driven deactivate → cleanup. The supervisor stops processes
//! in reverse dependency order and runs the hook first for each, so nodes are torn down in
//! reverse bring-up order; it bounds the hook by [`Teardown`]'s timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2r::lifecycle_msgs::msg::Transition;
use r2r::lifecycle_msgs::srv::{ChangeState, GetState};

use super::spin::Ros2;
use super::Error;
use crate::supervisor::PreStop;
use crate::workload::{CheckKind, ProcessSpec};

/// How long to wait for a node's lifecycle services to appear (node still starting).
pub const DEFAULT_SERVICE_WAIT: Duration = Duration::from_secs(10);
/// One request's deadline (a configure that loads a map can take seconds).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A lifecycle state as reported by `get_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `lifecycle_msgs/State` id (1 unconfigured, 2 inactive, 3 active, 4 finalized, ...).
    pub id: u8,
    /// Label (`unconfigured`, `inactive`, `active`, `finalized`).
    pub label: String,
}

/// Primary state ids (lifecycle_msgs/msg/State).
pub mod state {
    /// `unconfigured`.
    pub const UNCONFIGURED: u8 = 1;
    /// `inactive`.
    pub const INACTIVE: u8 = 2;
    /// `active`.
    pub const ACTIVE: u8 = 3;
    /// `finalized`.
    pub const FINALIZED: u8 = 4;
}

/// Transition ids (lifecycle_msgs/msg/Transition).
pub mod transition {
    /// unconfigured → inactive.
    pub const CONFIGURE: u8 = 1;
    /// inactive → unconfigured.
    pub const CLEANUP: u8 = 2;
    /// inactive → active.
    pub const ACTIVATE: u8 = 3;
    /// active → inactive.
    pub const DEACTIVATE: u8 = 4;
}

struct Clients {
    get: r2r::Client<GetState::Service>,
    change: r2r::Client<ChangeState::Service>,
}

/// Lifecycle service clients, cached per node. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    ros: Ros2,
    clients: Arc<Mutex<HashMap<String, Arc<Clients>>>>,
    service_wait: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

/// `/nav` for `nav` or `/nav`.
pub fn fq_name(node: &str) -> String {
    if node.starts_with('/') {
        node.to_owned()
    } else {
        format!("/{node}")
    }
}

impl Lifecycle {
    /// Lifecycle clients on the agent's node.
    pub fn new(ros: Ros2) -> Self {
        Self {
            ros,
            clients: Arc::default(),
            service_wait: DEFAULT_SERVICE_WAIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Overrides the wait for services and the per-request timeout.
    #[must_use]
    pub fn with_timeouts(mut self, service_wait: Duration, request_timeout: Duration) -> Self {
        self.service_wait = service_wait;
        self.request_timeout = request_timeout;
        self
    }

    fn err(node: &str, message: impl Into<String>) -> Error {
        Error::Lifecycle {
            node: node.to_owned(),
            message: message.into(),
        }
    }

    async fn clients(&self, node: &str) -> Result<Arc<Clients>, Error> {
        let fq = fq_name(node);
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(&fq).cloned()) {
            return Ok(c);
        }
        let name = fq.clone();
        let c = self
            .ros
            .with_node(move |n| -> Result<Clients, Error> {
                let qos = r2r::QosProfile::services_default();
                let get = n
                    .create_client::<GetState::Service>(&format!("{name}/get_state"), qos.clone())
                    .map_err(|e| Error::rcl(format!("create client {name}/get_state"), e))?;
                let change = n
                    .create_client::<ChangeState::Service>(&format!("{name}/change_state"), qos)
                    .map_err(|e| Error::rcl(format!("create client {name}/change_state"), e))?;
                Ok(Clients { get, change })
            })
            .await??;
        let c = Arc::new(c);
        if let Ok(mut m) = self.clients.lock() {
            m.entry(fq).or_insert_with(|| c.clone());
        }
        Ok(c)
    }

    async fn wait_available<T>(&self, node: &str, client: &r2r::Client<T>) -> Result<(), Error>
    where
        T: r2r::WrappedServiceTypeSupport + Send + 'static,
    {
        let fut = r2r::Node::is_available(client)
            .map_err(|e| Error::rcl(format!("{node}: poll service"), e))?;
        match tokio::time::timeout(self.service_wait, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Self::err(node, format!("service check failed: {e}"))),
            Err(_) => Err(Self::err(
                node,
                format!(
                    "lifecycle services not available after {} (not a managed node, or not running)",
                    humantime::format_duration(self.service_wait)
                ),
            )),
        }
    }

    /// Current state of `node`.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when the services are missing or the request times out.
    pub async fn get_state(&self, node: &str) -> Result<State, Error> {
        let c = self.clients(node).await?;
        self.wait_available(node, &c.get).await?;
        let fut = c
            .get
            .request(&GetState::Request {})
            .map_err(|e| Error::rcl(format!("{node}: get_state request"), e))?;
        let resp = tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| Self::err(node, "get_state timed out"))?
            .map_err(|e| Self::err(node, format!("get_state failed: {e}")))?;
        Ok(State {
            id: resp.current_state.id,
            label: resp.current_state.label,
        })
    }

    /// Requests one transition.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when the node rejects it or does not answer.
    pub async fn change_state(&self, node: &str, transition: u8) -> Result<(), Error> {
        let c = self.clients(node).await?;
        self.wait_available(node, &c.change).await?;
        let req = ChangeState::Request {
            transition: Transition {
                id: transition,
                label: String::new(),
            },
        };
        let fut = c
            .change
            .request(&req)
            .map_err(|e| Error::rcl(format!("{node}: change_state request"), e))?;
        let resp = tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| {
                Self::err(
                    node,
                    format!("transition {} timed out", transition_name(transition)),
                )
            })?
            .map_err(|e| Self::err(node, format!("change_state failed: {e}")))?;
        if resp.success {
            Ok(())
        } else {
            Err(Self::err(
                node,
                format!(
                    "transition {} rejected by the node",
                    transition_name(transition)
                ),
            ))
        }
    }

    /// Drives `node` to `active` from wherever it is (unconfigured → configure → activate).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] naming the failed transition, or a finalized node.
    pub async fn ensure_active(&self, node: &str) -> Result<(), Error> {
        for _ in 0..3 {
            let s = self.get_state(node).await?;
            match s.id {
                state::ACTIVE => return Ok(()),
                state::UNCONFIGURED => self.change_state(node, transition::CONFIGURE).await?,
                state::INACTIVE => self.change_state(node, transition::ACTIVATE).await?,
                _ => {
                    return Err(Self::err(
                        node,
                        format!("is {} ({}); cannot be activated", s.label, s.id),
                    ));
                }
            }
        }
        let s = self.get_state(node).await?;
        if s.id == state::ACTIVE {
            Ok(())
        } else {
            Err(Self::err(
                node,
                format!("still {} after configure and activate", s.label),
            ))
        }
    }

    /// Drives `node` down to `unconfigured` (deactivate, cleanup as needed).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] naming the failed transition.
    pub async fn ensure_unconfigured(&self, node: &str) -> Result<(), Error> {
        for _ in 0..3 {
            let s = self.get_state(node).await?;
            match s.id {
                state::ACTIVE => self.change_state(node, transition::DEACTIVATE).await?,
                state::INACTIVE => self.change_state(node, transition::CLEANUP).await?,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Bring-up: every node to `active`, one after the other in the given (dependency)
    /// order; stops at the first failure.
    ///
    /// # Errors
    /// The first node that could not be activated.
    pub async fn bring_up(&self, nodes: &[String]) -> Result<(), Error> {
        for n in nodes {
            self.ensure_active(n).await?;
            tracing::info!(node = %n, "lifecycle node active");
        }
        Ok(())
    }

    /// Teardown: nodes in reverse order to `unconfigured`. Tries every node; returns the
    /// first error.
    ///
    /// # Errors
    /// The first node that could not be brought down.
    pub async fn teardown(&self, nodes: &[String]) -> Result<(), Error> {
        let mut first = None;
        for n in nodes.iter().rev() {
            if let Err(e) = self.ensure_unconfigured(n).await {
                tracing::warn!(node = %n, error = %e, "lifecycle teardown failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The lifecycle nodes a process declares through its `ros2_lifecycle` checks (readiness
/// first, no duplicates, as fully qualified names).
pub fn managed_nodes(spec: &ProcessSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in [&spec.readiness, &spec.liveness].into_iter().flatten() {
        if let CheckKind::Ros2Lifecycle(l) = &c.kind {
            let n = fq_name(&l.node);
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// The supervisor's pre-stop hook: a process's lifecycle nodes are driven to `unconfigured`
/// (deactivate → cleanup, in reverse of their declaration order) before it gets SIGINT.
#[derive(Debug, Clone)]
pub struct Teardown {
    lifecycle: Lifecycle,
    timeout: Duration,
}

impl Teardown {
    /// Tears down through `lifecycle`; the supervisor waits at most `timeout` per process.
    pub fn new(lifecycle: Lifecycle, timeout: Duration) -> Self {
        Self { lifecycle, timeout }
    }
}

impl PreStop for Teardown {
    fn pre_stop(
        &self,
        process: &str,
        spec: &ProcessSpec,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), String>>> {
        let nodes = managed_nodes(spec);
        if nodes.is_empty() {
            return None;
        }
        let lc = self.lifecycle.clone();
        let process = process.to_owned();
        Some(Box::pin(async move {
            lc.teardown(&nodes).await.map_err(|e| e.to_string())?;
            tracing::info!(process = %process, nodes = ?nodes, "lifecycle nodes deactivated and cleaned up before stop");
            Ok(())
        }))
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn transition_name(id: u8) -> &'static str {
    match id {
        transition::CONFIGURE => "configure",
        transition::CLEANUP => "cleanup",
        transition::ACTIVATE => "activate",
        transition::DEACTIVATE => "deactivate",
        _ => "other",
    }
}
