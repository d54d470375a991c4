//! Output capture: every line of a child's stdout/stderr goes to `tracing` (field
//! `process`), to a per-process ring buffer (`fleetlet logs`) and to followers
//! (`--follow`), through a per-process token bucket.
//!
//! Invariants:
//! - Pipes are drained continuously; a line over the rate is dropped and counted, never
//!   queued, so a log storm costs the agent a bounded amount of work per line and the
//!   child is never blocked on a full pipe.
//! - A line longer than `max_line_bytes` is cut into pieces; memory per process is bounded
//!   by `log_lines × max_line_bytes`.
//! - After a suppressed stretch, the next kept line is preceded by a marker line saying
//!   how many lines were dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

use super::{Config, FOLLOW_CAPACITY};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A line written by the supervisor itself (suppression markers, lifecycle notes).
    Supervisor,
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Wall clock, ms since the epoch.
    pub ts_ms: u64,
    /// Source pipe.
    pub stream: LogStream,
    /// The text, without the newline (invalid UTF-8 replaced).
    pub text: String,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    pending_suppressed: u64,
}

/// Ring, followers and rate limit of one process.
pub(crate) struct Buffer {
    name: String,
    capacity: usize,
    rate: f64,
    burst: f64,
    ring: Mutex<VecDeque<LogLine>>,
    bucket: Mutex<Bucket>,
    follow: broadcast::Sender<LogLine>,
    suppressed: AtomicU64,
}

impl Buffer {
    fn new(name: &str, cfg: &Config) -> Self {
        let (follow, _) = broadcast::channel(FOLLOW_CAPACITY);
        Self {
            name: name.to_owned(),
            capacity: cfg.log_lines.max(1),
            rate: f64::from(cfg.log_rate.max(1)),
            burst: f64::from(cfg.log_burst.max(1)),
            ring: Mutex::new(VecDeque::new()),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(cfg.log_burst.max(1)),
                last: Instant::now(),
                pending_suppressed: 0,
            }),
            follow,
            suppressed: AtomicU64::new(0),
        }
    }

    /// Total lines dropped by the rate limit.
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Offers one line; returns false when the rate limit dropped it.
    pub(crate) fn offer(&self, stream: LogStream, text: String) -> bool {
        let marker = {
            let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.rate;
            b.tokens = (b.tokens + refill).min(self.burst);
            b.last = now;
            if b.tokens < 1.0 {
                b.pending_suppressed += 1;
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.pending_suppressed)
        };
        if marker > 0 {
            let note = format!("[fleetlet] {marker} line(s) suppressed by the log rate limit");
            tracing::warn!(target: "fleetlet::process", process = %self.name, suppressed = marker, "{note}");
            self.push(LogLine {
                ts_ms: crate::telemetry::now_ms(),
                stream: LogStream::Supervisor,
                text: note,
            });
        }
        match stream {
            LogStream::Stderr => {
                tracing::warn!(target: "fleetlet::process", process = %self.name, stream = "stderr", "{text}");
            }
            _ => {
                tracing::info!(target: "fleetlet::process", process = %self.name, stream = "stdout", "{text}");
            }
        }
        self.push(LogLine {
            ts_ms: crate::telemetry::now_ms(),
            stream,
            text,
        });
        true
    }

    /// Appends a supervisor note (not rate limited: the supervisor writes few).
    pub(crate) fn note(&self, text: String) {
        self.push(LogLine {
            ts_ms: crate::telemetry::now_ms(),
            stream: LogStream::Supervisor,
            text,
        });
    }

    fn push(&self, line: LogLine) {
        // No receiver is fine: nobody follows.
        let _ = self.follow.send(line.clone());
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    fn tail(&self, lines: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = ring.len().saturating_sub(lines);
        ring.iter().skip(skip).cloned().collect()
    }
}

/// All buffers, by process name. Buffers outlive workload changes (same name, same
/// buffer), so `fleetlet logs` still shows why a replaced process died.
#[derive(Clone)]
pub(crate) struct Registry {
    cfg: Arc<Config>,
    inner: Arc<Mutex<BTreeMap<String, Arc<Buffer>>>>,
}

impl Registry {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            cfg: Arc::new(cfg.clone()),
            inner: Arc::default(),
        }
    }

    pub(crate) fn get_or_create(&self, name: &str) -> Arc<Buffer> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Buffer::new(name, &self.cfg)))
            .clone()
    }

    fn get(&self, name: &str) -> Option<Arc<Buffer>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn tail(&self, name: &str, lines: usize) -> Option<Vec<LogLine>> {
        self.get(name).map(|b| b.tail(lines))
    }

    pub(crate) fn follow(&self, name: &str) -> Option<broadcast::Receiver<LogLine>> {
        self.get(name).map(|b| b.follow.subscribe())
    }

    pub(crate) fn max_line_bytes(&self) -> usize {
        self.cfg.max_line_bytes
    }
}

/// Reads `pipe` line by line into `buf` until EOF or a read error.
///
/// # Cancel safety
/// Dropping the future loses at most the partial line in the reader's buffer.
pub(crate) async fn capture<R: AsyncRead + Unpin>(
    pipe: R,
    stream: LogStream,
    buf: Arc<Buffer>,
    max_line: usize,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    while let Ok(chunk) = reader.fill_buf().await {
        if chunk.is_empty() {
            break;
        }
        let room = max_line.saturating_sub(line.len());
        let (take, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) if i <= room => (i + 1, true),
            _ if chunk.len() >= room => (room, true),
            _ => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if complete {
            emit(&buf, stream, &mut line);
        }
    }
    if !line.is_empty() {
        emit(&buf, stream, &mut line);
    }
}

fn emit(buf: &Buffer, stream: LogStream, line: &mut Vec<u8>) {
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    buf.offer(stream, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u32, burst: u32, lines: usize) -> Config {
        Config {
            log_rate: rate,
            log_burst: burst,
            log_lines: lines,
            ..Config::default()
        }
    }

    #[test]
    fn bucket_keeps_burst_then_drops_and_marks() {
        let b = Buffer::new("p", &cfg(1, 3, 100));
        let kept = (0..10)
            .filter(|i| b.offer(LogStream::Stdout, format!("l{i}")))
            .count();
        assert_eq!(kept, 3);
        assert_eq!(b.suppressed(), 7);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(b.offer(LogStream::Stdout, "after".into()));
        let tail = b.tail(10);
        assert_eq!(tail[3].stream, LogStream::Supervisor);
        assert!(
            tail[3].text.contains("7 line(s) suppressed"),
            "{:?}",
            tail[3]
        );
        assert_eq!(tail[4].text, "after");
    }

    #[test]
    fn ring_keeps_the_newest_lines() {
        let b = Buffer::new("p", &cfg(1000, 1000, 3));
        for i in 0..5 {
            b.offer(LogStream::Stdout, format!("{i}"));
        }
        let t: Vec<String> = b.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(t, vec!["2", "3", "4"]);
        assert_eq!(b.tail(1)[0].text, "4");
    }

    #[tokio::test]
    async fn capture_splits_lines_and_cuts_long_ones() {
        let b = Arc::new(Buffer::new("p", &cfg(1000, 1000, 100)));
        let input: &[u8] = b"one\ntwo\r\nABCDEFGHIJ\nlast-no-newline";
        capture(input, LogStream::Stderr, b.clone(), 4).await;
        let t: Vec<String> = b.tail(100).into_iter().map(|l| l.text).collect();
        assert_eq!(
            t,
            vec!["one", "two", "ABCD", "EFGH", "IJ", "last", "-no-", "newl", "ine"]
        );
    }
}
