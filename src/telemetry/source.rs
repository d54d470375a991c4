//! Built-in telemetry sources: periodic agent/board metrics (stream `metrics`).
//!
//! Other sources need no code here: the supervisor and runtime emit events through the
//! [`Sink`]; queue drops are reported by the writer on the `drops` stream.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::{Priority, Sink};

/// Stream name of agent metrics.
pub const METRICS_STREAM: &str = "metrics";

/// Samples CPU, memory, disk, load and thermal zones from /proc and /sys.
#[derive(Debug)]
pub struct AgentMetrics {
    data_dir: PathBuf,
    last_cpu: Option<(u64, u64)>,
}

impl AgentMetrics {
    /// A sampler reporting the disk that holds `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            last_cpu: None,
        }
    }

    /// Emits one sample every `interval` until cancelled.
    pub async fn run(mut self, sink: Sink, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let last = self.last_cpu;
            let dir = self.data_dir.clone();
            let Ok((sample, cpu)) = tokio::task::spawn_blocking(move || sample(&dir, last)).await
            else {
                return;
            };
            self.last_cpu = cpu;
            sink.emit(METRICS_STREAM, Priority::Normal, sample);
        }
    }
}

/// One sample (blocking: reads /proc and /sys).
// statvfs fields are u32 on 32-bit targets (armv7), u64 here.
#[allow(clippy::unnecessary_cast)]
pub fn sample(
    data_dir: &std::path::Path,
    last_cpu: Option<(u64, u64)>,
) -> (Value, Option<(u64, u64)>) {
    let mut m = Map::new();
    let cpu = read_cpu();
    if let (Some((busy, total)), Some((lb, lt))) = (cpu, last_cpu) {
        let dt = total.saturating_sub(lt);
        if dt > 0 {
            m.insert(
                "cpu_percent".into(),
                json!((busy.saturating_sub(lb)) as f64 * 100.0 / dt as f64),
            );
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let get = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        if let (Some(t), Some(a)) = (get("MemTotal:"), get("MemAvailable:")) {
            m.insert("mem_total_bytes".into(), json!(t));
            m.insert("mem_available_bytes".into(), json!(a));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            m.insert("agent_rss_bytes".into(), json!(rss * 4096));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        let v: Vec<f64> = text
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 3 {
            m.insert("load".into(), json!(v));
        }
    }
    if let Ok(st) = nix::sys::statvfs::statvfs(data_dir) {
        let frag = st.fragment_size() as u64;
        m.insert("disk_total_bytes".into(), json!(st.blocks() as u64 * frag));
        m.insert(
            "disk_available_bytes".into(),
            json!(st.blocks_available() as u64 * frag),
        );
    }
    let temps = read_temps();
    if !temps.is_empty() {
        m.insert("temps_c".into(), Value::Object(temps));
    }
    (Value::Object(m), cpu)
}

fn read_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn read_temps() -> Map<String, Value> {
    let mut out = Map::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/thermal") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("thermal_zone") {
            continue;
        }
        let p = e.path();
        let Some(milli) = std::fs::read_to_string(p.join("temp"))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let label = std::fs::read_to_string(p.join("type"))
            .map(|t| t.trim().to_owned())
            .unwrap_or(name);
        out.insert(label, json!(milli as f64 / 1000.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reports_memory_load_disk_and_cpu_after_two_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cpu) = sample(dir.path(), None);
        std::thread::sleep(Duration::from_millis(50));
        let (v, _) = sample(dir.path(), cpu);
        for k in [
            "mem_total_bytes",
            "mem_available_bytes",
            "agent_rss_bytes",
            "load",
            "disk_total_bytes",
            "cpu_percent",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert!(
            v["disk_available_bytes"].as_u64().unwrap() <= v["disk_total_bytes"].as_u64().unwrap()
        );
    }
}
