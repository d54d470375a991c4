//! The agent's r2r node on one dedicated thread.
//!
//! rcl is not async: `spin_once` blocks in `rcl_wait`. So the node lives on its own OS thread
//! (`ros2-spin`), never on a tokio worker. Async code reaches the node with
//! [`Ros2::with_node`], which sends a closure over a bounded channel; the thread runs it
//! between two spins and answers on a oneshot. Streams and futures r2r hands out
//! (subscriptions, service responses) are fed by `spin_once` and are polled from tokio tasks.
//!
//! Raw taps ([`Ros2::tap_raw`]): r2r hands every message of a raw subscription to a channel
//! whose reader is normally a tokio task, so each message wakes a worker. A tap's channel is
//! drained on the spin thread itself right after each spin (polled with a no-op waker, so
//! r2r's send wakes nobody); a filter runs there on every message and only the messages it
//! passes cross to async code. A 1 kHz topic throttled to 10 Hz then wakes a tokio worker 10
//! times a second, not 1000.
//!
//! Paced spinning: r2r takes one message per subscription per spin and every spin builds a
//! fresh rcl wait set, so a spin thread that wakes for each message of a 1 kHz topic spins a
//! thousand times a second. Instead, after a spin (and a burst of non-blocking spins that
//! empties what is queued, while taps keep getting messages) the thread waits out the rest of
//! the spin interval on its job queue (jobs still run at once). Meanwhile messages gather in
//! the DDS reader histories: a throttled bridge tap subscribes with depth 1 (it only wants the
//! latest), so a 1 kHz topic costs at most one take per interval; a tap that needs every
//! message (rate monitor, unthrottled bridge, diagnostics) subscribes with
//! [`LOSSLESS_DEPTH`], enough for `LOSSLESS_DEPTH / interval` messages per second.
//!
//! The interval adapts to the taps: each tap states the longest interval it tolerates (its
//! `pace`: half the throttle period for a throttled bridge, [`MAX_SPIN_INTERVAL`] for taps
//! whose depth covers any plausible rate), and the thread spins once per the shortest of
//! them, never more often than `min_spin_interval` and never less often than
//! [`MAX_SPIN_INTERVAL`]. Each interval is a thread wake-up, and wake-ups (not the spins of a
//! burst, a few µs each) are what paced spinning costs: 100/s at 10 ms measured ≈ 1 % of a
//! core on a loaded 2-core VM, 20/s at 50 ms ≈ 0.25 %. The price is up to one interval of
//! extra latency on service responses (lifecycle calls) and typed subscriptions (one message
//! per interval each).
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
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::oneshot;

use super::env::Ros2Env;
use super::Error;

/// Queue depth of a tap that must see every message, with paced spinning: 100 messages per
/// spin interval (10 kHz at the default `min_spin_interval` of 10 ms, 2 kHz at
/// [`MAX_SPIN_INTERVAL`]).
pub const LOSSLESS_DEPTH: usize = 100;
/// Longest spin interval: bounds the latency a paced spin adds to service responses
/// (lifecycle calls), and with [`LOSSLESS_DEPTH`] still takes 2 kHz per lossless tap.
pub const MAX_SPIN_INTERVAL: Duration = Duration::from_millis(50);
/// Most non-blocking spins in one burst: bounds the time jobs wait behind a flood.
pub const MAX_BURST_SPINS: u32 = 256;

/// Jobs waiting for the spin thread: a burst of subscriptions at start-up fits; a flood
/// gets back-pressure (`with_node` waits) instead of unbounded memory.
pub const JOB_QUEUE_DEPTH: usize = 64;

type Job = Box<dyn FnOnce(&mut r2r::Node, &mut Vec<Tap>) + Send>;

/// How a tap ([`Ros2::tap_raw`]) subscribes and is paced.
#[derive(Clone)]
pub struct TapOptions {
    /// QoS of the raw subscription (its depth is the DDS reader history kept between spins).
    pub qos: r2r::QosProfile,
    /// Capacity of the channel from the spin thread to async code.
    pub depth: usize,
    /// Longest spin interval the tap tolerates (see the module doc); zero: as often as
    /// `min_spin_interval` allows.
    pub pace: Duration,
}

/// Decides on the spin thread whether a raw message crosses to async code.
pub type TapFilter = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// A raw subscription drained on the spin thread (see the module doc).
pub(crate) struct Tap {
    stream: Box<dyn Stream<Item = Vec<u8>> + Unpin>,
    filter: TapFilter,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    overflow: Arc<AtomicU64>,
    /// Longest spin interval this tap tolerates (see the module doc).
    pace: Duration,
}

impl Tap {
    /// Takes every message r2r has queued, adding their count to `got`; `false` once the
    /// tap is finished (its reader is gone), and dropping it then ends the subscription.
    fn drain(&mut self, cx: &mut Context<'_>, got: &mut usize) -> bool {
        loop {
            match self.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(bytes)) => {
                    *got += 1;
                    if !(self.filter)(&bytes) {
                        continue;
                    }
                    match self.out.try_send(bytes) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            self.overflow.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
                    }
                }
                Poll::Ready(None) => return false,
                Poll::Pending => return !self.out.is_closed(),
            }
        }
    }
}

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
    min_spin_interval: Duration,
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
    pub fn start(
        node_name: &str,
        env: Ros2Env,
        spin_timeout: Duration,
        min_spin_interval: Duration,
    ) -> Result<Self, Error> {
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
                // `fleetlet run` applied it in main, single-threaded; others get it here,
                // before the context (and with it every DDS thread) exists.
                if !thread_env.matches_own_process() {
                    thread_env.apply_to_own_process();
                }
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
                let pacing = Pacing {
                    spin_timeout,
                    min_spin_interval,
                };
                spin_loop(&mut node, &rx, &thread_stop, &thread_spins, pacing);
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
                min_spin_interval,
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

    /// The paced spin interval (see the module doc).
    pub fn min_spin_interval(&self) -> Duration {
        self.inner.min_spin_interval
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
        self.submit(Box::new(move |node: &mut r2r::Node, _: &mut Vec<Tap>| {
            let _ = tx.send(f(node));
        }))
        .await?;
        rx.await.map_err(|_| Error::NotRunning)
    }

    /// Subscribes to `topic` (type `msg_type`, QoS `opts.qos`) without deserializing and
    /// drains it on the spin thread: `filter` sees every message there, and only those it
    /// passes are sent to the returned receiver (capacity `opts.depth`; when it is full the
    /// message is dropped and counted in `overflow`). The thread spins at least every
    /// `opts.pace` while the tap exists. Dropping the receiver ends the subscription.
    ///
    /// # Errors
    /// [`Error::UnknownType`] for a type without type support in this build, [`Error::Rcl`]
    /// when subscribing fails, [`Error::NotRunning`].
    pub async fn tap_raw(
        &self,
        topic: &str,
        msg_type: &str,
        opts: TapOptions,
        filter: TapFilter,
        overflow: Arc<AtomicU64>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Error> {
        let TapOptions { qos, depth, pace } = opts;
        let (out, rx) = tokio::sync::mpsc::channel(depth.max(1));
        let (topic, ty) = (topic.to_owned(), msg_type.to_owned());
        let (tx, done) = oneshot::channel();
        self.submit(Box::new(
            move |node: &mut r2r::Node, taps: &mut Vec<Tap>| {
                let r = subscribe_raw(node, &topic, &ty, qos).map(|stream| {
                    taps.push(Tap {
                        stream,
                        filter,
                        out,
                        overflow,
                        pace,
                    });
                });
                let _ = tx.send(r);
            },
        ))
        .await?;
        done.await.map_err(|_| Error::NotRunning)??;
        Ok(rx)
    }

    /// Queues `job` for the spin thread (waits, off the workers, while the queue is full).
    async fn submit(&self, mut job: Job) -> Result<(), Error> {
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
        Ok(())
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

/// A raw subscription after checking that the type is compiled in (r2r's own error for a
/// missing type is obscure).
fn subscribe_raw(
    node: &mut r2r::Node,
    topic: &str,
    ty: &str,
    qos: r2r::QosProfile,
) -> Result<Box<dyn Stream<Item = Vec<u8>> + Unpin>, Error> {
    if let Err(e) = r2r::WrappedNativeMsgUntyped::new_from(ty) {
        return Err(Error::UnknownType {
            topic: topic.to_owned(),
            msg_type: ty.to_owned(),
            reason: e.to_string(),
        });
    }
    let s = node
        .subscribe_raw(topic, ty, qos)
        .map_err(|e| Error::rcl(format!("subscribe {topic} ({ty})"), e))?;
    Ok(Box::new(s))
}

#[derive(Debug, Clone, Copy)]
struct Pacing {
    spin_timeout: Duration,
    min_spin_interval: Duration,
}

impl Pacing {
    /// The spin interval for the current taps (see the module doc); zero when pacing is off.
    fn interval(&self, taps: &[Tap]) -> Duration {
        paced_interval(self.min_spin_interval, taps.iter().map(|t| t.pace))
    }
}

/// The shortest of the taps' `paces`, within `min_spin_interval..=`[`MAX_SPIN_INTERVAL`]
/// (or `min_spin_interval` when it is longer); zero when `min_spin_interval` is (no pacing).
pub fn paced_interval(
    min_spin_interval: Duration,
    paces: impl IntoIterator<Item = Duration>,
) -> Duration {
    if min_spin_interval.is_zero() {
        return Duration::ZERO;
    }
    paces
        .into_iter()
        .fold(MAX_SPIN_INTERVAL, Duration::min)
        .max(min_spin_interval)
}

fn spin_loop(
    node: &mut r2r::Node,
    jobs: &mpsc::Receiver<Job>,
    stop: &AtomicBool,
    spins: &AtomicU64,
    pacing: Pacing,
) {
    let mut taps: Vec<Tap> = Vec::new();
    // Taps are polled with a waker that does nothing: r2r's send into their channel then
    // wakes no task; the spin thread drains them itself after every spin.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let mut drain = |taps: &mut Vec<Tap>| {
        let mut got = 0;
        taps.retain_mut(|t| t.drain(&mut cx, &mut got));
        got
    };
    // Nothing to wait on yet: rcl_wait would return immediately (busy spin), so sleep on the
    // job channel until the first job creates an entity.
    let mut has_entities = false;
    while !stop.load(Ordering::Acquire) {
        if !has_entities {
            match jobs.recv_timeout(pacing.spin_timeout) {
                Ok(job) => {
                    job(node, &mut taps);
                    has_entities = true;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let started = std::time::Instant::now();
        let interval = pacing.interval(&taps);
        node.spin_once(pacing.spin_timeout);
        spins.fetch_add(1, Ordering::Relaxed);
        // One message per subscription per spin: spin again without blocking while taps
        // still get messages, so what gathered during the pause is taken now.
        // (Without pacing the next blocking spin follows at once: no burst needed.)
        let mut burst = 0;
        let limit = if interval.is_zero() {
            0
        } else {
            MAX_BURST_SPINS
        };
        while drain(&mut taps) > 0 && burst < limit {
            node.spin_once(Duration::ZERO);
            spins.fetch_add(1, Ordering::Relaxed);
            burst += 1;
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => job(node, &mut taps),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        // Pause for the rest of the interval, running jobs as they come.
        while let Some(rest) = interval
            .checked_sub(started.elapsed())
            .filter(|r| !r.is_zero())
        {
            match jobs.recv_timeout(rest) {
                Ok(job) => job(node, &mut taps),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// A QoS for watching and bridging topics: best effort matches both reliable and
/// best-effort publishers; `depth` messages kept between two takes (1: only the latest;
/// [`LOSSLESS_DEPTH`]: every message survives a paced spin interval).
pub fn watch_qos(depth: usize) -> r2r::QosProfile {
    r2r::QosProfile::sensor_data().keep_last(depth.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_interval_is_the_shortest_pace_within_the_bounds() {
        let ms = Duration::from_millis;
        // no taps, or only relaxed ones: the longest interval
        assert_eq!(paced_interval(ms(10), []), MAX_SPIN_INTERVAL);
        assert_eq!(paced_interval(ms(10), [ms(500)]), MAX_SPIN_INTERVAL);
        // a 10 Hz throttle (50 ms) and a 20 Hz one (25 ms): the shorter
        assert_eq!(paced_interval(ms(10), [ms(50), ms(25)]), ms(25));
        // an unthrottled tap (zero) or a fast throttle: never below min_spin_interval
        assert_eq!(paced_interval(ms(10), [ms(50), Duration::ZERO]), ms(10));
        assert_eq!(paced_interval(ms(10), [ms(5)]), ms(10));
        // a configured minimum above the longest interval wins
        assert_eq!(paced_interval(ms(80), [ms(50)]), ms(80));
        // pacing off
        assert_eq!(paced_interval(Duration::ZERO, [ms(50)]), Duration::ZERO);
    }
}
