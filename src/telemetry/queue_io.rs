//! One dedicated thread for every blocking call on the telemetry queue.
//!
//! The writer (append, flush), the uploader (read, remove, expire) and the status reporter
//! (stats) hand their sled calls to this thread instead of tokio's blocking pool.
//!
//! Why one thread: sled allocates its page cache, rewritten nodes and log buffers on the
//! calling thread, and glibc's malloc gives each thread that allocates its own arena, which
//! keeps the memory freed in it. Spread over the blocking pool's threads, draining a large
//! backlog left several MB of freed but still resident memory in each of those arenas
//! (benches/telemetry.sh: agent RSS 21.5 MB with the pool, 17.8 MB with one thread, same
//! upload window; see docs/telemetry.md). One thread also keeps sled's caches warm on one
//! core.
//!
//! Invariants:
//! - Jobs run one at a time, in the order they were submitted.
//! - The submission channel is bounded ([`DEPTH`]); a caller waits (asynchronously) while it
//!   is full.
//! - The thread ends when the last [`QueueIo`] handle is dropped, after the jobs already
//!   submitted.

use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for the thread at most; callers beyond that wait for room.
pub const DEPTH: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The queue thread stopped (a job panicked) before it answered.
#[derive(Debug, thiserror::Error)]
#[error("telemetry queue thread has stopped")]
pub struct Stopped;

/// Cloneable handle on the queue thread.
#[derive(Clone, Debug)]
pub struct QueueIo {
    jobs: mpsc::Sender<Job>,
}

impl QueueIo {
    /// Starts the thread (named `fleetlet-queue`).
    ///
    /// # Errors
    /// The OS error when the thread cannot be created.
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::channel::<Job>(DEPTH);
        std::thread::Builder::new()
            .name("fleetlet-queue".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the queue thread and returns its result.
    ///
    /// # Errors
    /// [`Stopped`] when the thread is gone.
    ///
    /// # Cancel safety
    /// Dropping the future after the job was submitted does not stop the job; its result is
    /// dropped (as with `spawn_blocking`).
    pub async fn run<T, F>(&self, f: F) -> Result<T, Stopped>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_named_thread_in_submission_order() {
        let io = QueueIo::spawn().unwrap();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runs = (0..50).map(|i| {
            let order = order.clone();
            io.run(move || {
                order.lock().unwrap().push(i);
                std::thread::current().name().map(str::to_owned)
            })
        });
        let names = futures::future::join_all(runs).await;
        assert!(names
            .iter()
            .all(|n| n.as_ref().unwrap().as_deref() == Some("fleetlet-queue")));
        assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_panicking_job_stops_the_thread_and_later_calls_say_so() {
        let io = QueueIo::spawn().unwrap();
        assert!(matches!(io.run(|| panic!("boom")).await, Err(Stopped)));
        // The thread is gone once its receiver is dropped; a later call cannot hang.
        let later = tokio::time::timeout(std::time::Duration::from_secs(5), io.run(|| 1)).await;
        assert!(matches!(later, Ok(Err(Stopped))));
    }
}
