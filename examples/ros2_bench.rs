//! ROS 2 bridge benchmark (run through `benches/ros2.sh`, release build, `--features ros2`).
//!
//! Runs the agent's ROS 2 subsystem (r2r node on its spin thread, bridge, diagnostics,
//! status publisher) feeding the real telemetry queue (sled), forwards `--topic` with an
//! optional `--max-rate`, and after `--warmup` seconds measures its own CPU time and RSS over
//! `--seconds`. Prints one JSON line, with CPU per thread kind, RSS/PSS, and RSS per group of
//! mappings (Fast DDS, message type support, libc/libstdc++, ...; see [`mapping_group`]).
//! `--min-spin-interval-ms 0` turns paced spinning off (spin per message).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlet::ros2::bridge::Forward;
use fleetlet::telemetry::Priority;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// utime + stime of this process in seconds.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = s.rsplit(')').next().unwrap();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after the comm: state(0) ... utime(11) stime(12)
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// CPU seconds per thread name (threads of one kind summed: `dds.rc.7410` → `dds.rc`).
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let name = s
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("?", |(n, _)| n);
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        let secs = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0;
        *out.entry(kind.to_owned()).or_insert(0.0) += secs;
    }
    out
}

/// Kilobytes of `key` in a /proc/self file (`status`, `smaps_rollup`).
fn proc_kb(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The group a mapping of /proc/self/smaps counts in (`path`: its file, empty for anonymous).
fn mapping_group(path: &str, exe: &str) -> &'static str {
    let file = path.rsplit('/').next().unwrap_or(path);
    if path == exe {
        "binary"
    } else if path.starts_with("/dev/shm/") {
        "dds_shm_segments"
    } else if path.contains("fastrtps") || path.contains("fastcdr") || path.contains("fastdds") {
        // also OpenSSL and tinyxml2, shipped in ros_fastrtps.libs for Fast DDS only
        "fastdds"
    } else if file.contains("__rosidl_") {
        "msg_typesupport"
    } else if file.starts_with("libpython") {
        "libpython"
    } else if [
        "libc.",
        "libm.",
        "libstdc++",
        "libgcc_s",
        "ld-linux",
        "libz.",
    ]
    .iter()
    .any(|p| file.starts_with(p))
    {
        "libc_libstdcxx"
    } else if file.contains(".so") {
        "ros_other_libs"
    } else {
        "anon_heap_stacks"
    }
}

/// RSS in MB per [`mapping_group`].
fn rss_by_group() -> std::collections::BTreeMap<&'static str, f64> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_string_lossy();
    let mut out = std::collections::BTreeMap::new();
    let mut group = "anon_heap_stacks";
    for line in std::fs::read_to_string("/proc/self/smaps").unwrap().lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            group = mapping_group(f.nth(4).unwrap_or(""), &exe);
        } else if first == "Rss:" {
            let kb: f64 = f.next().unwrap().parse().unwrap();
            *out.entry(group).or_insert(0.0) += kb / 1024.0;
        }
    }
    out.values_mut()
        .for_each(|v| *v = (*v * 10.0).round() / 10.0);
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let topic = arg("--topic", "/bench");
    let max_rate: Option<f64> = match arg("--max-rate", "none").as_str() {
        "none" => None,
        r => Some(r.parse().unwrap()),
    };
    let seconds: f64 = arg("--seconds", "10").parse().unwrap();
    let warmup: f64 = arg("--warmup", "3").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = fleetlet::datadir::DataDir::new(dir.path().join("data"));
    data.create().unwrap();
    let (db, quarantine) = data.open_db(8 << 20, Some(500)).unwrap();
    let (sink, rx) =
        fleetlet::telemetry::Sink::channel(fleetlet::telemetry::DEFAULT_INTAKE_CAPACITY);
    let svc = fleetlet::runtime::Services {
        config: Arc::new(fleetlet::config::Config::default()),
        data,
        db,
        cancel: tokio_util::sync::CancellationToken::new(),
        tracker: tokio_util::task::TaskTracker::new(),
        status: fleetlet::status::Registry::new(),
        telemetry: sink.clone(),
        boot_id: fleetlet::runtime::new_boot_id(),
        liveness: fleetlet::liveness::Liveness::new(),
        ops: Default::default(),
    };
    let _telemetry = fleetlet::telemetry::start(
        &svc,
        &fleetlet::telemetry::Config::default(),
        fleetlet::telemetry::Inputs {
            intake: rx,
            link: None,
            quarantine,
        },
    )
    .await
    .unwrap();
    let forward = if arg("--idle", "no") == "yes" {
        vec![]
    } else {
        vec![Forward {
            topic: topic.clone(),
            msg_type: "std_msgs/msg/String".into(),
            max_rate_hz: max_rate,
            fields: vec![],
            priority: Priority::Bulk,
            stream: None,
        }]
    };
    let cfg = fleetlet::ros2::Config {
        node_name: "fleetlet_bench".into(),
        forward,
        min_spin_interval: Duration::from_millis(
            arg("--min-spin-interval-ms", "10").parse().unwrap(),
        ),
        ..fleetlet::ros2::Config::default()
    };
    let ros = fleetlet::ros2::start(&svc, &cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let count = |f: fn(&fleetlet::ros2::bridge::Counters) -> u64| {
        ros.bridged().iter().map(|b| f(&b.counters)).sum::<u64>()
    };
    let (r0, f0) = (
        count(|c| c.received.load(Ordering::Relaxed)),
        count(|c| c.forwarded.load(Ordering::Relaxed)),
    );
    let (c0, t0, th0) = (cpu_seconds(), Instant::now(), thread_cpu());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (c1, el, th1) = (cpu_seconds(), t0.elapsed().as_secs_f64(), thread_cpu());
    let threads: serde_json::Map<String, serde_json::Value> = th1
        .iter()
        .map(|(k, v)| (k, 100.0 * (v - th0.get(k).copied().unwrap_or(0.0)) / el))
        .filter(|(_, pct)| *pct >= 0.05)
        .map(|(k, pct)| (k.clone(), serde_json::json!((pct * 100.0).round() / 100.0)))
        .collect();
    let (r1, f1) = (
        count(|c| c.received.load(Ordering::Relaxed)),
        count(|c| c.forwarded.load(Ordering::Relaxed)),
    );
    println!(
        "{}",
        serde_json::json!({
            "cpu_percent": 100.0 * (c1 - c0) / el,
            "rss_mb": proc_kb("status", "VmRSS:") as f64 / 1024.0,
            "peak_rss_mb": proc_kb("status", "VmHWM:") as f64 / 1024.0,
            "anon_rss_mb": proc_kb("status", "RssAnon:") as f64 / 1024.0,
            "file_rss_mb": proc_kb("status", "RssFile:") as f64 / 1024.0,
            "shmem_rss_mb": proc_kb("status", "RssShmem:") as f64 / 1024.0,
            "pss_mb": proc_kb("smaps_rollup", "Pss:") as f64 / 1024.0,
            "threads": proc_kb("status", "Threads:"),
            "cpu_by_thread": threads,
            "rss_by_group_mb": rss_by_group(),
            "received_hz": (r1 - r0) as f64 / el,
            "forwarded_hz": (f1 - f0) as f64 / el,
            "spins": ros.ros.spin_count(),
        })
    );
    svc.cancel.cancel();
    svc.tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), svc.tracker.wait()).await;
}
