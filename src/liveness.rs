//! Event-loop liveness: a task on the tokio runtime ticks a shared timestamp; anything that
//! must only act while the agent is really alive (systemd watchdog pings, `/healthz`, MCU
//! heartbeats) checks that the tick is fresh. A wedged runtime stops ticking, so those stop
//! too — which is the point.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the runtime ticks.
pub const TICK: Duration = Duration::from_millis(100);
/// A tick older than this means the event loop is stalled. Ten ticks of slack absorb a
/// loaded 2-core board without hiding a real stall for long.
pub const STALE_AFTER: Duration = Duration::from_millis(1000);

/// Shared liveness state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Liveness {
    origin: Instant,
    last_tick_ms: Arc<AtomicU64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    /// A fresh liveness state, counted as live right now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_tick_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Records a tick (called by [`Liveness::run`]).
    pub fn tick(&self) {
        self.last_tick_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub fn since_last_tick(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_tick_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether the event loop ticked recently.
    pub fn is_live(&self) -> bool {
        self.since_last_tick() < STALE_AFTER
    }

    /// Ticks until cancelled. Spawn this on the runtime being watched.
    ///
    /// # Cancel safety
    /// Cancel-safe; it holds no state.
    pub async fn run(self, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => self.tick(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_stale_without_ticks() {
        let l = Liveness::new();
        l.tick();
        assert!(l.is_live());
        std::thread::sleep(STALE_AFTER + Duration::from_millis(50));
        assert!(!l.is_live());
        l.tick();
        assert!(l.is_live());
    }
}
