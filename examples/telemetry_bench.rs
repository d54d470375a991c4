//! Telemetry benchmark (run through `benches/telemetry.sh`, release build).
//!
//! 1. ingest: 256-byte records appended to the sled queue in batches, fsync per batch;
//! 2. drain: the real agent (`fleetlet run`, default upload settings unless `--batch-records`,
//!    `--batch-bytes`, `--inflight`, `--db-cache-bytes` say otherwise) uploads the filled
//!    queue to a local mosquitto; a subscriber counts every record; agent RSS is sampled
//!    while it drains (`--no-peers` stops after this);
//! 3. peers in the same run: `mosquitto_pub --repeat` at QoS 1, and a plain rumqttc
//!    publisher sending one record per message at QoS 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlet::telemetry::{
    queue::{Options, Queue},
    Priority, Record,
};

const RECORD: usize = 256;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn payload() -> serde_json::Value {
    // A JSON string of exactly RECORD bytes including its quotes.
    serde_json::Value::String("r".repeat(RECORD - 2))
}

/// Subscriber on its own thread counting telemetry records (decoding batches) and raw
/// messages on other topics.
fn subscriber(port: u16, filter: &str) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let records = Arc::new(AtomicU64::new(0));
    let raw = Arc::new(AtomicU64::new(0));
    let (r, m) = (records.clone(), raw.clone());
    let filter = filter.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut o = rumqttc::MqttOptions::new(
                format!("bench-sub-{}", rand::random::<u32>()),
                "127.0.0.1",
                port,
            );
            o.set_max_packet_size(64 << 20, 64 << 20).set_inflight(1000);
            let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
            let mut tx = Some(tx);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        c.subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if p.topic.contains("/telemetry/") {
                            if let Ok(b) = fleetlet::telemetry::record::Batch::decode(&p.payload) {
                                r.fetch_add(b.records.len() as u64, Ordering::Relaxed);
                            }
                        } else {
                            m.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("subscriber ready");
    (records, raw)
}

fn wait_count(c: &AtomicU64, n: u64, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if c.load(Ordering::Relaxed) >= n {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// (VmRSS, RssAnon, RssFile) of a process in kB. RssFile is mostly the agent's own code
/// and libc mapped from the page cache; RssAnon is its heap, stacks and other private memory.
fn rss_kb(pid: u32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?))
}

/// User + system CPU seconds of this process so far (robust to a loaded machine).
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn ingest(data: &Path, n: u64, batch: usize, pack_max_bytes: Option<usize>) -> f64 {
    let dir = fleetlet::datadir::DataDir::new(data);
    dir.create().unwrap();
    // The agent's default sled cache (agent.db_cache_bytes).
    let (db, _) = dir
        .open_db(fleetlet::config::DEFAULT_DB_CACHE_BYTES, None)
        .unwrap();
    let mut opts = Options::with_budget(4 << 30);
    if let Some(b) = pack_max_bytes {
        opts.pack_max_bytes = b;
    }
    let q = Queue::open_with(&db, "bench-boot-0000000000000000000000", opts).unwrap();
    let recs: Vec<Record> = (0..batch)
        .map(|_| Record {
            stream: "bench".into(),
            priority: Priority::Normal,
            ts_ms: fleetlet::telemetry::now_ms(),
            payload: payload(),
        })
        .collect();
    let t = Instant::now();
    let mut done = 0u64;
    while done < n {
        let k = (n - done).min(batch as u64) as usize;
        q.append(&recs[..k]).unwrap();
        q.flush().unwrap();
        done += k as u64;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = arg("--records", "300000").parse().unwrap();
    let agent_bin = PathBuf::from(arg("--agent", "target/release/fleetlet"));
    let peer_n: u64 = arg("--peer-messages", "50000").parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // 1. Ingest.
    let pack_max_bytes = std::env::args()
        .any(|a| a == "--pack-max-bytes")
        .then(|| arg("--pack-max-bytes", "0").parse().unwrap());
    let cpu0 = cpu_s();
    let ingest_rate = ingest(&data, n, 4096, pack_max_bytes);
    let ingest_cpu = cpu_s() - cpu0;
    println!("ingest (256 B records, fsync per 4096-record batch): {ingest_rate:>10.0} rec/s   target >= 100000  {}", verdict(ingest_rate >= 100_000.0));
    println!(
        "  ingest CPU time (user+sys of this process): {:.2} s = {:.1} us/record",
        ingest_cpu,
        ingest_cpu * 1e6 / n as f64
    );
    if std::env::args().any(|a| a == "--ingest-only") {
        return;
    }

    // Broker.
    let port = free_port();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let conf = tmp.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n")).unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    // 2. Drain through the real agent, with the agent's default upload settings unless
    // overridden (to study RSS against the upload window).
    let batch_records = arg(
        "--batch-records",
        &fleetlet::telemetry::Config::default()
            .batch_records
            .to_string(),
    );
    let batch_bytes = arg(
        "--batch-bytes",
        &fleetlet::telemetry::Config::default()
            .batch_bytes
            .to_string(),
    );
    let inflight = arg(
        "--inflight",
        &fleetlet::telemetry::Config::default().inflight.to_string(),
    );
    let db_cache = match arg("--db-cache-bytes", "") {
        s if s.is_empty() => String::new(),
        s => format!("db_cache_bytes = {s}\n"),
    };
    let (records, raw) = subscriber(port, "#");
    let api = free_port();
    let cfg = tmp.path().join("fleetlet.toml");
    std::fs::write(&cfg, format!(
        "[device]\nid = \"bench\"\n[agent]\ndata_dir = \"{}\"\nlog_level = \"warn\"\n{db_cache}[api]\nlisten = \"127.0.0.1:{api}\"\n[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n[telemetry]\nmetrics_interval = \"0s\"\nbatch_records = {batch_records}\nbatch_bytes = {batch_bytes}\ninflight = {inflight}\n",
        data.display()
    )).unwrap();
    let mut agent = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent binary (build with --release)");
    let pid = agent.id();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The sample with the highest VmRSS while draining.
    let sampler = {
        let s = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = (0u64, 0u64, 0u64);
            while s.load(Ordering::Relaxed) {
                if let Some(kb) = rss_kb(pid) {
                    peak = peak.max(kb);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let first = wait_count(&records, 1, Duration::from_secs(30)).expect("first record arrives");
    let rss_first = rss_kb(pid).map_or(0, |r| r.0) as f64 / 1024.0;
    let done = wait_count(&records, n, Duration::from_secs(300));
    sampling.store(false, Ordering::Relaxed);
    let (rss_peak, anon_peak, file_peak) = sampler.join().unwrap_or_default();
    let got = records.load(Ordering::Relaxed);
    let drain_rate = match done {
        Some(t) => n as f64 / t.duration_since(first).as_secs_f64(),
        None => 0.0,
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    let rss_mb = rss_peak as f64 / 1024.0;
    println!("drain (agent -> mosquitto -> subscriber, {got}/{n} received): {drain_rate:>10.0} rec/s   target >= 100000  {}", verdict(drain_rate >= 100_000.0 && got >= n));
    println!("agent peak RSS while draining:                     {rss_mb:>10.1} MB      target <= 15     {}", verdict(rss_mb <= 15.0));
    println!(
        "  (at the peak: RssAnon {:.1} MB + RssFile {:.1} MB; RSS when the first record arrived: {rss_first:.1} MB)",
        anon_peak as f64 / 1024.0,
        file_peak as f64 / 1024.0
    );
    println!(
        "  (upload: batch_records {batch_records}, batch_bytes {batch_bytes}, inflight {inflight})"
    );
    if std::env::args().any(|a| a == "--no-peers") {
        let _ = broker.kill();
        let _ = broker.wait();
        return;
    }

    // 3a. mosquitto_pub --repeat, QoS 1, one 256-byte message per record.
    let before = raw.load(Ordering::Relaxed);
    let body = "m".repeat(RECORD);
    let t = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "peer/pub",
            "--repeat",
            &peer_n.to_string(),
            "-m",
            &body,
        ])
        .status()
        .expect("mosquitto_pub");
    let pub_done = wait_count(&raw, before + peer_n, Duration::from_secs(120));
    let pub_rate = match (status.success(), pub_done) {
        (true, Some(end)) => peer_n as f64 / end.duration_since(t).as_secs_f64(),
        _ => 0.0,
    };
    println!("peer mosquitto_pub --repeat {peer_n} -q 1:              {pub_rate:>10.0} msg/s");

    // 3b. Plain rumqttc publisher, one record per message, QoS 1.
    let before = raw.load(Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let mut o = rumqttc::MqttOptions::new("bench-rumqttc", "127.0.0.1", port);
        o.set_inflight(100);
        let (c, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let pubs = tokio::spawn(async move {
            for _ in 0..peer_n {
                c.publish(
                    "peer/rumqttc",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    vec![b'm'; RECORD],
                )
                .await
                .unwrap();
            }
            c
        });
        let mut acks = 0u64;
        while acks < peer_n {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = el.poll().await {
                acks += 1;
            }
        }
        let _ = pubs.await;
    });
    let rq_done = wait_count(&raw, before + peer_n, Duration::from_secs(120));
    let rq_rate = rq_done
        .map(|end| peer_n as f64 / end.duration_since(t).as_secs_f64())
        .unwrap_or(0.0);
    println!("peer rumqttc, one record per QoS 1 message:        {rq_rate:>10.0} msg/s");
    if pub_rate > 0.0 && rq_rate > 0.0 {
        println!(
            "ratios: drain / mosquitto_pub = {:.1}x, drain / rumqttc per-message = {:.1}x",
            drain_rate / pub_rate,
            drain_rate / rq_rate
        );
    }
    let _ = broker.kill();
    let _ = broker.wait();
}
