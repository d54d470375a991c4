//! Configuration, startup, the queue writer task and the status reporter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{self, Queue};
use super::queue_io::{QueueIo, Stopped as QueueStopped};
use super::uploader::{self, Uploader};
use super::{now_ms, Priority, Record, Sink};
use crate::config::Problem;
use crate::status::{Metric, Reporter, SubsystemState};

/// Default disk budget: a week of normal agent telemetry fits many times over, and it stays
/// small next to a robot's eMMC.
pub const DEFAULT_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
/// Default records per durable append: big enough to amortise the fsync.
pub const DEFAULT_WRITE_BATCH_MAX: usize = 4096;
/// Default records per MQTT message: the cap for small records; at 256-byte records
/// [`DEFAULT_BATCH_BYTES`] closes a message first (about 210 records).
pub const DEFAULT_BATCH_RECORDS: usize = 500;
/// Default maximum payload of one MQTT message. With [`DEFAULT_INFLIGHT`] it bounds the
/// payload held in memory until PUBACK to 512 KiB, for the agent's RSS target while
/// draining a backlog (15 MB): the bench's drain peaked at 24.6-26.3 MB with 256 KiB x 16
/// and at 17.8-18.5 MB with 64 KiB x 8, both draining far above 100 000 rec/s on a local
/// broker (benches/telemetry.sh, docs/telemetry.md).
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;
/// Default wait for a fuller batch: a little latency buys far fewer messages.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(200);
/// Default number of unacknowledged MQTT messages: 8 x 64 KiB in flight is about 5 MB/s on
/// a 100 ms RTT link, more than a cellular uplink carries; also bounds duplicates after a
/// crash to `inflight * batch_records` records.
pub const DEFAULT_INFLIGHT: u16 = 8;
/// Default agent metrics period.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
/// Default period of drop reports (only sent when something was dropped).
pub const DEFAULT_DROP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// When appended records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FlushPolicy {
    /// fsync after every appended batch (`"batch"`): nothing accepted is lost.
    #[default]
    EveryBatch,
    /// fsync at most this often (`"100ms"`): a crash loses up to this much of the newest data.
    Every(Duration),
}

impl TryFrom<String> for FlushPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "batch" {
            return Ok(Self::EveryBatch);
        }
        humantime::parse_duration(&s)
            .map(Self::Every)
            .map_err(|e| format!("{s:?} is neither \"batch\" nor a duration like \"100ms\": {e}"))
    }
}

impl From<FlushPolicy> for String {
    fn from(p: FlushPolicy) -> String {
        match p {
            FlushPolicy::EveryBatch => "batch".into(),
            FlushPolicy::Every(d) => humantime::format_duration(d).to_string(),
        }
    }
}

/// Per-stream overrides (`[telemetry.streams."<name>"]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Priority used instead of the producer's.
    pub priority: Option<Priority>,
    /// Records older than this are dropped (counted as `expired`) instead of sent.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Disk budget of the queue in bytes (records; sled's own overhead comes on top).
    pub budget_bytes: u64,
    /// `"batch"` (fsync per appended batch) or a period such as `"100ms"`.
    pub flush: FlushPolicy,
    /// Largest number of records appended (and made durable) together.
    pub write_batch_max: usize,
    /// Records per MQTT message (at most).
    pub batch_records: usize,
    /// Payload bytes per MQTT message (about, at most; one record always fits).
    pub batch_bytes: usize,
    /// How long to wait for a full batch before sending a partial one.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// MQTT messages in flight (unacknowledged) at most.
    pub inflight: u16,
    /// Agent metrics period; `0s` turns agent metrics off.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// How often drop counts are reported (when non-zero).
    #[serde(with = "humantime_serde")]
    pub drop_report_interval: Duration,
    /// Per-stream overrides.
    pub streams: BTreeMap<String, StreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            budget_bytes: DEFAULT_BUDGET_BYTES,
            flush: FlushPolicy::EveryBatch,
            write_batch_max: DEFAULT_WRITE_BATCH_MAX,
            batch_records: DEFAULT_BATCH_RECORDS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            batch_linger: DEFAULT_BATCH_LINGER,
            inflight: DEFAULT_INFLIGHT,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            drop_report_interval: DEFAULT_DROP_REPORT_INTERVAL,
            streams: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Pushes every problem with full dotted keys.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        let mut p = |k: &str, m: String| problems.push(Problem::new(format!("telemetry.{k}"), m));
        if self.budget_bytes < 64 * 1024 {
            p(
                "budget_bytes",
                format!("{} is below the minimum of 65536", self.budget_bytes),
            );
        }
        if let FlushPolicy::Every(d) = self.flush {
            if d.is_zero() || d > Duration::from_secs(60) {
                p(
                    "flush",
                    format!(
                        "{} is out of range (1ms..=60s); use \"batch\" to flush every batch",
                        humantime::format_duration(d)
                    ),
                );
            }
        }
        if !(1..=100_000).contains(&self.write_batch_max) {
            p(
                "write_batch_max",
                format!("{} is out of range (1..=100000)", self.write_batch_max),
            );
        }
        if !(1..=100_000).contains(&self.batch_records) {
            p(
                "batch_records",
                format!("{} is out of range (1..=100000)", self.batch_records),
            );
        }
        if !(1024..=(8 << 20)).contains(&self.batch_bytes) {
            p(
                "batch_bytes",
                format!("{} is out of range (1024..=8388608)", self.batch_bytes),
            );
        }
        if self.batch_linger > Duration::from_secs(60) {
            p(
                "batch_linger",
                format!(
                    "{} is above 60s",
                    humantime::format_duration(self.batch_linger)
                ),
            );
        }
        if self.inflight == 0 || self.inflight >= crate::mqtt::link::MAX_INFLIGHT {
            p(
                "inflight",
                format!(
                    "{} is out of range (1..={})",
                    self.inflight,
                    crate::mqtt::link::MAX_INFLIGHT - 1
                ),
            );
        }
        if !self.metrics_interval.is_zero() && self.metrics_interval < Duration::from_millis(100) {
            p(
                "metrics_interval",
                "must be 0s (off) or at least 100ms".into(),
            );
        }
        if self.drop_report_interval < Duration::from_millis(100) {
            p("drop_report_interval", "must be at least 100ms".into());
        }
        for (name, s) in &self.streams {
            if !crate::mqtt::topics::is_valid_segment(name.split('/').next().unwrap_or(""))
                || name.contains(['+', '#', '\0'])
                || name.ends_with('/')
            {
                p(
                    &format!("streams.{name}"),
                    format!("stream name {name:?} is not a valid topic suffix"),
                );
            }
            if s.max_age.is_some_and(|d| d.is_zero()) {
                p(
                    &format!("streams.{name}.max_age"),
                    "must be positive".into(),
                );
            }
        }
    }

    fn priority_of(&self, r: &Record) -> Priority {
        self.streams
            .get(&r.stream)
            .and_then(|s| s.priority)
            .unwrap_or(r.priority)
    }
}

/// Errors starting telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// The queue thread could not be started.
    #[error("telemetry: cannot start the queue thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The queue thread stopped while opening the queue.
    #[error(transparent)]
    Stopped(#[from] QueueStopped),
}

/// What [`start`] consumes besides the config.
pub struct Inputs {
    /// The receiver of the agent's [`Sink`] (from `Sink::channel`).
    pub intake: mpsc::Receiver<Record>,
    /// The MQTT link; `None` buffers only (uploads start with a link).
    pub link: Option<crate::mqtt::Handle>,
    /// The database quarantined at startup, if any (reported as status and critical event).
    pub quarantine: Option<crate::datadir::Quarantine>,
}

/// Handle on the running telemetry subsystem.
#[derive(Clone, Debug)]
pub struct Handle {
    /// The durable queue.
    pub queue: Queue,
    /// Uploader counters.
    pub upload: Arc<uploader::Stats>,
}

/// Opens the queue in `svc.db`, spawns the writer, uploader (when `link` is given), metrics
/// source and status reporter on `svc.tracker`.
///
/// # Errors
/// [`Error::Queue`] when the sled tree cannot be opened or scanned.
pub async fn start(
    svc: &crate::runtime::Services,
    cfg: &Config,
    inputs: Inputs,
) -> Result<Handle, Error> {
    let reporter = svc.status.register("telemetry");
    let (db, boot, budget) = (svc.db.clone(), svc.boot_id.clone(), cfg.budget_bytes);
    let io = QueueIo::spawn().map_err(Error::Thread)?;
    let queue = io.run(move || Queue::open(&db, &boot, budget)).await??;
    let upload = Arc::new(uploader::Stats::default());
    if let Some(q) = &inputs.quarantine {
        // The runtime also emits `db_quarantined`; the status keeps it visible.
        tracing::error!(moved_to = %q.moved_to.display(), "telemetry queue starts empty: the old database was quarantined");
    }
    svc.tracker.spawn(write_loop(
        io.clone(),
        queue.clone(),
        cfg.clone(),
        inputs.intake,
        svc.telemetry.clone(),
        svc.cancel.child_token(),
    ));
    if let Some(link) = inputs.link.clone() {
        let up = Uploader::new(
            io.clone(),
            queue.clone(),
            link,
            cfg.clone(),
            svc.config.device.id.clone(),
            upload.clone(),
        );
        svc.tracker.spawn(up.run(svc.cancel.child_token()));
    }
    if !cfg.metrics_interval.is_zero() {
        let src = super::source::AgentMetrics::new(svc.data.root().to_owned());
        svc.tracker.spawn(src.run(
            svc.telemetry.clone(),
            cfg.metrics_interval,
            svc.cancel.child_token(),
        ));
    }
    svc.tracker.spawn(report_loop(
        io,
        queue.clone(),
        upload.clone(),
        inputs.link,
        inputs.quarantine,
        reporter,
        svc.cancel.child_token(),
    ));
    Ok(Handle { queue, upload })
}

async fn append(
    io: &QueueIo,
    queue: &Queue,
    batch: Vec<Record>,
    flush: bool,
) -> Result<u64, String> {
    let q = queue.clone();
    io.run(move || {
        let evicted = q.append(&batch)?;
        if flush {
            q.flush()?;
        }
        Ok::<_, queue::Error>(evicted)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

async fn write_loop(
    io: QueueIo,
    queue: Queue,
    cfg: Config,
    mut rx: mpsc::Receiver<Record>,
    sink: Sink,
    cancel: CancellationToken,
) {
    let every_batch = cfg.flush == FlushPolicy::EveryBatch;
    let mut flush_tick = tokio::time::interval(match cfg.flush {
        FlushPolicy::Every(d) => d,
        FlushPolicy::EveryBatch => Duration::from_secs(3600),
    });
    let mut report_tick = tokio::time::interval(cfg.drop_report_interval);
    let mut dirty = false;
    let mut reported: BTreeMap<String, queue::Drops> = BTreeMap::new();
    let mut reported_intake = 0u64;
    let mut buf = Vec::with_capacity(cfg.write_batch_max);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut buf, cfg.write_batch_max) => n == 0,
            _ = flush_tick.tick(), if !every_batch && dirty => {
                let q = queue.clone();
                match io.run(move || q.flush()).await {
                    Ok(Ok(())) => dirty = false,
                    Ok(Err(e)) => tracing::error!(error = %e, "telemetry flush failed"),
                    Err(e) => tracing::error!(error = %e, "telemetry flush failed"),
                }
                continue;
            }
            _ = report_tick.tick() => {
                let batch = drop_report(&queue, &sink, &mut reported, &mut reported_intake);
                if let Some(r) = batch {
                    if let Err(e) = append(&io, &queue, vec![r], every_batch).await {
                        tracing::error!(error = %e, "cannot store drop report");
                    }
                    dirty |= !every_batch;
                }
                continue;
            }
            _ = cancel.cancelled() => true,
        };
        if stopping {
            // Stop intake: take what is already queued, then make everything durable.
            while let Ok(r) = rx.try_recv() {
                buf.push(r);
            }
        }
        if !buf.is_empty() {
            for r in buf.iter_mut() {
                r.priority = cfg.priority_of(r);
            }
            let batch = std::mem::replace(&mut buf, Vec::with_capacity(cfg.write_batch_max));
            let n = batch.len();
            if let Err(e) = append(&io, &queue, batch, every_batch || stopping).await {
                tracing::error!(error = %e, records = n, "telemetry append failed; records lost");
            }
            dirty |= !every_batch;
        }
        if stopping {
            if let Some(r) = drop_report(&queue, &sink, &mut reported, &mut reported_intake) {
                let _ = append(&io, &queue, vec![r], true).await;
            }
            let q = queue.clone();
            let _ = io.run(move || q.flush()).await;
            return;
        }
    }
}

/// Builds a `drops` record with the counts since the last report, if anything was dropped.
fn drop_report(
    queue: &Queue,
    sink: &Sink,
    reported: &mut BTreeMap<String, queue::Drops>,
    reported_intake: &mut u64,
) -> Option<Record> {
    let now = queue.drops();
    let intake = sink.intake_dropped();
    let mut streams = serde_json::Map::new();
    for (s, d) in &now {
        let before = reported.get(s).copied().unwrap_or_default();
        let delta = queue::Drops {
            evicted: d.evicted - before.evicted.min(d.evicted),
            expired: d.expired - before.expired.min(d.expired),
            corrupt: d.corrupt - before.corrupt.min(d.corrupt),
        };
        if delta.total() > 0 {
            streams.insert(s.clone(), json!(delta));
        }
    }
    let intake_delta = intake.saturating_sub(*reported_intake);
    if streams.is_empty() && intake_delta == 0 {
        return None;
    }
    *reported = now;
    *reported_intake = intake;
    tracing::warn!(streams = ?streams, intake_dropped = intake_delta, "telemetry records dropped");
    Some(Record {
        stream: DROPS_STREAM.into(),
        priority: Priority::Critical,
        ts_ms: now_ms(),
        payload: json!({ "streams": streams, "intake_dropped": intake_delta }),
    })
}

/// Stream carrying drop reports: `{"streams": {"<stream>": {"evicted": n, "expired": n,
/// "corrupt": n}}, "intake_dropped": n}` with counts since the previous report.
pub const DROPS_STREAM: &str = "drops";

async fn report_loop(
    io: QueueIo,
    queue: Queue,
    upload: Arc<uploader::Stats>,
    link: Option<crate::mqtt::Handle>,
    quarantine: Option<crate::datadir::Quarantine>,
    reporter: Reporter,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), upload.acked_records());
    let mut rate = 0.0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let q = queue.clone();
        let Ok((stats, oldest, on_disk)) = io
            .run(move || (q.stats(), q.oldest_ts_ms().ok().flatten(), q.size_on_disk()))
            .await
        else {
            continue;
        };
        let acked = upload.acked_records();
        let dt = last.0.elapsed().as_secs_f64();
        if dt > 0.0 {
            rate = (acked - last.1.min(acked)) as f64 / dt;
        }
        last = (Instant::now(), acked);
        let oldest_age_s = oldest
            .map(|ts| now_ms().saturating_sub(ts) as f64 / 1000.0)
            .unwrap_or(0.0);
        let connected = link.as_ref().map(|l| *l.connected().borrow());
        let state = match (&quarantine, connected) {
            (Some(_), _) | (_, Some(false)) => SubsystemState::Degraded,
            _ => SubsystemState::Running,
        };
        reporter.set_state(state);
        let mut by_prio: BTreeMap<&str, u64> = BTreeMap::new();
        let mut metrics = Vec::new();
        for (p, s, l) in &stats.lanes {
            *by_prio.entry(prio_name(*p)).or_default() += l.records;
            metrics.push(
                Metric::gauge(
                    "fleetlet_telemetry_queue_records",
                    "records waiting for upload",
                    l.records as f64,
                )
                .label("stream", s.clone())
                .label("priority", prio_name(*p)),
            );
        }
        for (s, d) in &stats.drops {
            for (reason, n) in [
                ("evicted", d.evicted),
                ("expired", d.expired),
                ("corrupt", d.corrupt),
            ] {
                metrics.push(
                    Metric::counter(
                        "fleetlet_telemetry_dropped_total",
                        "records dropped before upload",
                        n as f64,
                    )
                    .label("stream", s.clone())
                    .label("reason", reason),
                );
            }
        }
        metrics.extend([
            Metric::gauge(
                "fleetlet_telemetry_queue_bytes",
                "record bytes in the queue",
                stats.bytes as f64,
            ),
            Metric::gauge(
                "fleetlet_telemetry_budget_bytes",
                "disk budget of the queue",
                stats.budget as f64,
            ),
            Metric::gauge(
                "fleetlet_telemetry_db_size_bytes",
                "sled size on disk",
                on_disk as f64,
            ),
            Metric::gauge(
                "fleetlet_telemetry_oldest_unsent_seconds",
                "age of the oldest record not yet acknowledged",
                oldest_age_s,
            ),
            Metric::counter(
                "fleetlet_telemetry_acked_records_total",
                "records acknowledged by the broker",
                acked as f64,
            ),
            Metric::gauge(
                "fleetlet_telemetry_publish_rate",
                "records acknowledged per second (last second)",
                rate,
            ),
            Metric::gauge(
                "fleetlet_telemetry_db_quarantined",
                "1 when the database was quarantined at startup",
                if quarantine.is_some() { 1.0 } else { 0.0 },
            ),
        ]);
        reporter.set_metrics(metrics);
        reporter.set_detail(json!({
            "link": match connected { Some(true) => "up", Some(false) => "down", None => "disabled" },
            "records": stats.records(),
            "by_priority": by_prio,
            "streams": stats.lanes.iter().map(|(p, s, l)| json!({"stream": s, "priority": p, "records": l.records, "bytes": l.bytes})).collect::<Vec<_>>(),
            "bytes": stats.bytes,
            "budget_bytes": stats.budget,
            "db_size_on_disk": on_disk,
            "oldest_unsent_age_s": oldest_age_s,
            "drops": stats.drops,
            "acked_records": acked,
            "publish_rate": rate,
            "quarantined": quarantine.as_ref().map(|q| json!({"moved_to": q.moved_to, "reason": q.reason})),
        }));
    }
    reporter.set_state(SubsystemState::Stopped);
}

fn prio_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::Normal => "normal",
        Priority::Bulk => "bulk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses_batch_and_durations() {
        let c: Config = toml::from_str("flush = \"batch\"").unwrap();
        assert_eq!(c.flush, FlushPolicy::EveryBatch);
        let c: Config = toml::from_str(
            "flush = \"250ms\"\n[streams.\"ros/pose\"]\npriority = \"bulk\"\nmax_age = \"1h\"",
        )
        .unwrap();
        assert_eq!(c.flush, FlushPolicy::Every(Duration::from_millis(250)));
        assert_eq!(
            c.streams["ros/pose"].max_age,
            Some(Duration::from_secs(3600))
        );
        let e = toml::from_str::<Config>("flush = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn validate_names_each_bad_key() {
        let mut c = Config {
            budget_bytes: 10,
            inflight: 0,
            batch_records: 0,
            ..Config::default()
        };
        c.streams.insert("a/#".into(), StreamConfig::default());
        let mut p = Vec::new();
        c.validate(&mut p);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "telemetry.budget_bytes",
                "telemetry.batch_records",
                "telemetry.inflight",
                "telemetry.streams.a/#"
            ]
        );
        let mut p = Vec::new();
        Config::default().validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
    }
}
