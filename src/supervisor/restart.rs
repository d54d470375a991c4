//! Restart arithmetic: exponential backoff with jitter and reset after a stable run, and
//! the crash-loop window. Pure logic over `Instant`s so it is tested without real time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::workload::{Backoff, CrashLoop};

/// Backoff of one process across its runs.
#[derive(Debug, Clone)]
pub struct BackoffState {
    cfg: Backoff,
    failures: u32,
}

impl BackoffState {
    /// Fresh state (next delay = `initial`).
    pub fn new(cfg: Backoff) -> Self {
        Self { cfg, failures: 0 }
    }

    /// Consecutive failures since the last stable run.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records the end of a run that lasted `ran` and returns the delay before the next
    /// start. A run of at least `reset_after` resets the sequence first. `unit` is a
    /// uniform random number in `[0, 1)` used for jitter.
    pub fn next_delay(&mut self, ran: Duration, unit: f64) -> Duration {
        if ran >= self.cfg.reset_after {
            self.failures = 0;
        }
        let exp = i32::try_from(self.failures).unwrap_or(i32::MAX);
        self.failures = self.failures.saturating_add(1);
        let base = self.cfg.initial.as_secs_f64() * self.cfg.multiplier.powi(exp);
        let capped = base.min(self.cfg.max.as_secs_f64());
        // Jitter in [-j, +j) of the capped delay, never above max, never negative.
        let factor = 1.0 + self.cfg.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let secs = (capped * factor).clamp(0.0, self.cfg.max.as_secs_f64());
        if secs.is_finite() {
            Duration::from_secs_f64(secs)
        } else {
            self.cfg.max
        }
    }

    /// Forgets past failures (operator restart, new workload).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sliding window of recent failures.
#[derive(Debug, Clone)]
pub struct CrashWindow {
    cfg: CrashLoop,
    failures: VecDeque<Instant>,
}

impl CrashWindow {
    /// Empty window.
    pub fn new(cfg: CrashLoop) -> Self {
        Self {
            cfg,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; true when that makes a crash loop
    /// (`max_failures` failures within `window`; never when `max_failures` is 0).
    pub fn record(&mut self, now: Instant) -> bool {
        if self.cfg.max_failures == 0 {
            return false;
        }
        while let Some(&first) = self.failures.front() {
            if now.saturating_duration_since(first) >= self.cfg.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        self.failures.push_back(now);
        let max = usize::try_from(self.cfg.max_failures).unwrap_or(usize::MAX);
        while self.failures.len() > max {
            self.failures.pop_front();
        }
        self.failures.len() >= max
    }

    /// Failures currently in the window.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// No failures in the window.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// Forgets all failures.
    pub fn clear(&mut self) {
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(initial_ms: u64, max_ms: u64, mult: f64, jitter: f64, reset_s: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            multiplier: mult,
            jitter,
            reset_after: Duration::from_secs(reset_s),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = BackoffState::new(cfg(100, 1000, 2.0, 0.0, 60));
        let short = Duration::from_millis(10);
        let d: Vec<u64> = (0..6)
            .map(|_| b.next_delay(short, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn stable_run_resets_backoff() {
        let mut b = BackoffState::new(cfg(100, 10_000, 2.0, 0.0, 5));
        b.next_delay(Duration::ZERO, 0.5);
        b.next_delay(Duration::ZERO, 0.5);
        assert_eq!(
            b.next_delay(Duration::ZERO, 0.5),
            Duration::from_millis(400)
        );
        assert_eq!(
            b.next_delay(Duration::from_secs(5), 0.5),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_under_max() {
        let mut lo = BackoffState::new(cfg(1000, 1000, 2.0, 0.2, 60));
        let mut hi = lo.clone();
        assert_eq!(
            lo.next_delay(Duration::ZERO, 0.0),
            Duration::from_millis(800)
        );
        // +20% would exceed max: capped at max.
        assert_eq!(
            hi.next_delay(Duration::ZERO, 0.999),
            Duration::from_millis(1000)
        );
        let mut mid = BackoffState::new(cfg(100, 10_000, 2.0, 0.5, 60));
        for _ in 0..50 {
            let u: f64 = rand::random();
            let d = mid.next_delay(Duration::from_secs(100), u);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
    }

    #[test]
    fn zero_initial_means_no_delay_at_all() {
        let mut b = BackoffState::new(cfg(0, 0, 2.0, 0.3, 60));
        for _ in 0..10 {
            assert_eq!(b.next_delay(Duration::ZERO, 0.9), Duration::ZERO);
        }
    }

    #[test]
    fn crash_loop_needs_n_failures_inside_the_window() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(CrashLoop {
            max_failures: 3,
            window: Duration::from_secs(10),
        });
        assert!(!w.record(t0));
        assert!(!w.record(t0 + Duration::from_secs(4)));
        // The first failure slid out of the window: only 2 inside.
        assert!(!w.record(t0 + Duration::from_secs(11)));
        assert_eq!(w.len(), 2);
        assert!(w.record(t0 + Duration::from_secs(12)));
    }

    #[test]
    fn crash_loop_limit_zero_disables_detection() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(CrashLoop {
            max_failures: 0,
            window: Duration::from_secs(10),
        });
        for i in 0..100 {
            assert!(!w.record(t0 + Duration::from_millis(i)));
        }
    }
}
