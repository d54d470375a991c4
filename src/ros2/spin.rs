//! The agent's r2r node on one dedicated thread.
//!
//! rcl is not async: `spin_once` blocks in `rcl_wait`. So the node lives on its own OS thread
//! (`ros2-spin`), never on a tokio worker. Async code reaches the node with
//! [`Ros2::with_node`], which sends a closure over a bounded channel; the thread runs it
//! between two spins and answers on a oneshot. Streams and futures r2r hands out
//! (subscriptions, service responses) are fed by `spin_once` and are polled from tokio tasks.
//!
//! An r2r node with no subscriptions/clients/timers makes `rcl_wait` return at once, so
//! spinning it would busy-loop (r2r issue #93). Until the first job has created something,
//! the thread therefore sleeps on its job channel instead of spinning.
//!
//! Shutdown: [`Ros2::shutdown`] sets the stop flag; the thread finishes the current spin
//! (at most `spin_timeout`), drops the node (its DDS participant is deleted with it), and
//! exits; shutdown joins it off the async workers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::env::Ros2Env;
use super::Error;

/// Jobs waiting for the spin thread: a burst of subscriptions at start-up fits; a flood
/// gets back-pressure (`with_node` waits) instead of unbounded memory.
pub const JOB_QUEUE_DEPTH: usize = 64;

type Job = Box<dyn FnOnce(&mut r2r::Node) + Send>;

/// Handle to the agent's ROS 2 node. Cheap to clone.
#[derive(Clone)]
pub struct Ros2 {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: SyncSender<Job>,
    stop: Arc<AtomicBool>,
    spins: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    env: Ros2Env,
    node_name: String,
}

impl std::fmt::Debug for Ros2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ros2")
            .field("node", &self.inner.node_name)
            .field("env", &self.inner.env)
            .finish_non_exhaustive()
    }
}

impl Ros2 {
    /// Applies `env` to the agent's process, creates the r2r context and the node
    /// `node_name`, and starts the spin thread. Blocks until the node exists (call it from
    /// `spawn_blocking` or before the runtime is busy; it takes milliseconds).
    ///
    /// The r2r context is process-wide and reads the environment once: the first call fixes
    /// the graph for the lifetime of the process.
    ///
    /// # Errors
    /// [`Error::Rcl`] when the context or node cannot be created, [`Error::Thread`].
    pub fn start(node_name: &str, env: Ros2Env, spin_timeout: Duration) -> Result<Self, Error> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(JOB_QUEUE_DEPTH);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Error>>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let thread_stop = stop.clone();
        let thread_spins = spins.clone();
        let name = node_name.to_owned();
        let thread_env = env.clone();
        let spin_timeout = spin_timeout.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("ros2-spin".into())
            .spawn(move || {
                thread_env.apply_to_own_process();
                let node = r2r::Context::create()
                    .map_err(|e| Error::rcl("create context", e))
                    .and_then(|ctx| {
                        r2r::Node::create(ctx, &name, "")
                            .map_err(|e| Error::rcl(format!("create node {name}"), e))
                    });
                let mut node = match node {
                    Ok(n) => {
                        let _ = ready_tx.send(Ok(()));
                        n
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                spin_loop(&mut node, &rx, &thread_stop, &thread_spins, spin_timeout);
                drop(node);
            })
            .map_err(Error::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::NotRunning);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                jobs,
                stop,
                spins,
                thread: Mutex::new(Some(thread)),
                env,
                node_name: node_name.to_owned(),
            }),
        })
    }

    /// The environment the agent's context uses (hand [`Ros2Env::child_vars`] to children).
    pub fn env(&self) -> &Ros2Env {
        &self.inner.env
    }

    /// The agent's node name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// How many times the node has been spun (a busy-spin shows as a huge number).
    pub fn spin_count(&self) -> u64 {
        self.inner.spins.load(Ordering::Relaxed)
    }

    /// Runs `f` with the node on the spin thread and returns its result.
    ///
    /// # Errors
    /// [`Error::NotRunning`] when the thread has stopped.
    pub async fn with_node<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut r2r::Node) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let mut job: Job = Box::new(move |node: &mut r2r::Node| {
            let _ = tx.send(f(node));
        });
        // Bounded queue: wait (without blocking a worker) while it is full.
        loop {
            if self.inner.stop.load(Ordering::Acquire) {
                return Err(Error::NotRunning);
            }
            match self.inner.jobs.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(Error::NotRunning),
            }
        }
        rx.await.map_err(|_| Error::NotRunning)
    }

    /// Whether the spin thread is still running.
    pub fn is_running(&self) -> bool {
        self.inner
            .thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// Stops the spin thread and waits for it (the node and its DDS participant are
    /// destroyed). Idempotent. Blocks for at most one spin timeout: call it from
    /// `spawn_blocking` in async code ([`Ros2::shutdown_async`]).
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("ros2 spin thread panicked");
            }
        }
    }

    /// [`Ros2::shutdown`] off the async workers.
    pub async fn shutdown_async(&self) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.shutdown()).await;
    }
}

fn spin_loop(
    node: &mut r2r::Node,
    jobs: &mpsc::Receiver<Job>,
    stop: &AtomicBool,
    spins: &AtomicU64,
    spin_timeout: Duration,
) {
    // Nothing to wait on yet: rcl_wait would return immediately (busy spin), so sleep on the
    // job channel until the first job creates an entity.
    let mut has_entities = false;
    while !stop.load(Ordering::Acquire) {
        if !has_entities {
            match jobs.recv_timeout(spin_timeout) {
                Ok(job) => {
                    job(node);
                    has_entities = true;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        node.spin_once(spin_timeout);
        spins.fetch_add(1, Ordering::Relaxed);
        loop {
            match jobs.try_recv() {
                Ok(job) => job(node),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// A QoS for watching and bridging topics: best effort matches both reliable and
/// best-effort publishers; depth 10 as ROS 2 sensor-data profiles do.
pub fn watch_qos() -> r2r::QosProfile {
    r2r::QosProfile::sensor_data()
}
