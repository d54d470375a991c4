//! The real `fleetlet run` binary with telemetry and MQTT: kill -9 in the middle of an
//! upload, and a damaged database on start.

mod telemetry_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleetlet::telemetry::{queue::Queue, Priority, Record};
use telemetry_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_fleetlet");
const BATCH: u64 = 100;
const INFLIGHT: u64 = 4;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, api: u16, broker: u16, device: &str) -> PathBuf {
    let path = dir.join("fleetlet.toml");
    std::fs::write(
        &path,
        format!(
            "[device]\nid = \"{device}\"\n[agent]\ndata_dir = \"{}\"\nshutdown_timeout = \"5s\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {broker}\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n\
             [telemetry]\nmetrics_interval = \"0s\"\nbatch_records = {BATCH}\ninflight = {INFLIGHT}\nbatch_linger = \"10ms\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path) -> Agent {
    Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Fills the agent's queue before it starts (the broker is irrelevant then).
fn prefill(dir: &Path, n: u64) {
    let data = fleetlet::datadir::DataDir::new(dir.join("data"));
    data.create().unwrap();
    let (db, _) = data.open_db(8 << 20, None).unwrap();
    let q = Queue::open(&db, "prefill-boot", 1 << 30).unwrap();
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            stream: "lidar".into(),
            priority: Priority::Normal,
            ts_ms: 1,
            payload: payload(i),
        })
        .collect();
    for chunk in recs.chunks(1000) {
        q.append(chunk).unwrap();
    }
    q.flush().unwrap();
}

#[test]
fn kill_9_mid_upload_then_restart_loses_nothing_and_duplicates_stay_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 40_000;
    prefill(dir.path(), N);
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let collector = Collector::start(broker.port, &["fleet/+/telemetry/#"]);
    let api = free_port();
    let cfg = write_config(dir.path(), api, broker.port, "robot-k");

    let mut agent = spawn(&cfg);
    wait_until(Duration::from_secs(60), "upload under way", || {
        collector.with(|g| g.unique("lidar") >= 2_000)
    });
    agent.0.kill().unwrap(); // SIGKILL
    agent.0.wait().unwrap();
    let at_kill = collector.with(|g| g.unique("lidar"));
    assert!(
        (at_kill as u64) < N,
        "the kill must land mid-upload (got {at_kill} of {N})"
    );

    let _agent = spawn(&cfg);
    wait_until(
        Duration::from_secs(90),
        "every record after restart",
        || collector.with(|g| g.unique("lidar") as u64 == N),
    );
    wait_until(Duration::from_secs(10), "queue empty in status", || {
        status(api).is_some_and(|s| {
            s["subsystems"]["telemetry"]["detail"]["records"]
                .as_u64()
                .is_some_and(|n| n <= 2)
        })
    });
    collector.with(|g| {
        g.assert_complete_and_ordered("lidar", N);
        let dups = g.total("lidar") - g.unique("lidar");
        assert!(
            dups as u64 <= INFLIGHT * BATCH,
            "{dups} duplicates exceed the in-flight window of {}",
            INFLIGHT * BATCH
        );
        // Records keep the identity they were accepted with.
        assert!(g.seqs.keys().all(|(d, _)| d == "robot-k"));
    });
}

/// Writes a queue exactly as layout 1 (fleetlet before packs) left it on robots in the
/// field: one sled value per record under `[prio][counter u64 BE]`, a postcard `Stored`,
/// sequence counters under `\xffseq/<stream>`, no layout key.
fn write_layout_1_queue(dir: &Path, boots: &[(&str, u64)]) -> u64 {
    let data = fleetlet::datadir::DataDir::new(dir.join("data"));
    data.create().unwrap();
    let (db, _) = data.open_db(8 << 20, None).unwrap();
    let tree = db.open_tree(fleetlet::telemetry::queue::TREE).unwrap();
    let (mut counter, mut seq) = (0u64, 0u64);
    for (boot, n) in boots {
        for _ in 0..*n {
            let mut k = vec![1u8]; // normal priority
            k.extend_from_slice(&counter.to_be_bytes());
            let payload = serde_json::to_vec(&payload(seq)).unwrap();
            let v = fleetlet::telemetry::record::Stored {
                stream: "lidar",
                seq,
                ts_ms: 1,
                boot,
                payload: &payload,
            }
            .encode();
            tree.insert(k, v).unwrap();
            counter += 1;
            seq += 1;
        }
    }
    tree.insert(b"\xffseq/lidar", &seq.to_be_bytes()[..])
        .unwrap();
    db.flush().unwrap();
    seq
}

#[test]
fn a_queue_left_by_layout_1_is_migrated_and_delivered_with_its_original_identity() {
    let dir = tempfile::tempdir().unwrap();
    let n = write_layout_1_queue(dir.path(), &[("old-boot-a", 3_000), ("old-boot-b", 2_000)]);
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let collector = Collector::start(broker.port, &["fleet/+/telemetry/#"]);
    let api = free_port();
    let cfg = write_config(dir.path(), api, broker.port, "robot-m");
    let _agent = spawn(&cfg);
    wait_until(Duration::from_secs(60), "every migrated record", || {
        collector.with(|g| g.unique("lidar") as u64 == n)
    });
    collector.with(|g| {
        g.assert_complete_and_ordered("lidar", n);
        for seq in [0, 2_999] {
            assert_eq!(
                g.boots[&("robot-m".into(), "lidar".into(), seq)],
                "old-boot-a"
            );
        }
        for seq in [3_000, n - 1] {
            assert_eq!(
                g.boots[&("robot-m".into(), "lidar".into(), seq)],
                "old-boot-b"
            );
        }
        assert_eq!(
            g.records[&("robot-m".to_string(), "lidar".to_string())][&4_321],
            payload(4_321)
        );
    });
    wait_until(Duration::from_secs(10), "queue empty in status", || {
        status(api).is_some_and(|s| {
            s["subsystems"]["telemetry"]["detail"]["records"]
                .as_u64()
                .is_some_and(|r| r <= 2)
        })
    });
}

#[test]
fn damaged_database_on_start_is_quarantined_reported_and_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let collector = Collector::start(
        broker.port,
        &["fleet/+/telemetry/#", "fleet/robot-q/status"],
    );
    // A half-written database: sled's files with garbage.
    let db = dir.path().join("data").join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("conf"), b"\x00\x01garbage").unwrap();
    std::fs::write(db.join("db"), vec![0xa5u8; 4096]).unwrap();
    let api = free_port();
    let cfg = write_config(dir.path(), api, broker.port, "robot-q");
    let _agent = spawn(&cfg);

    wait_until(Duration::from_secs(30), "telemetry status", || {
        status(api)
            .is_some_and(|s| !s["subsystems"]["telemetry"]["detail"]["quarantined"].is_null())
    });
    let s = status(api).unwrap();
    let moved = s["subsystems"]["telemetry"]["detail"]["quarantined"]["moved_to"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        Path::new(&moved).join("conf").exists(),
        "damaged files kept aside at {moved}"
    );
    assert_eq!(s["subsystems"]["telemetry"]["state"], "degraded");
    // Reported to the fleet as a critical event, and the agent is online.
    wait_until(
        Duration::from_secs(20),
        "db_quarantined event delivered",
        || {
            collector.with(|g| {
                g.records.iter().any(|((_, st), r)| {
                    st == "events" && r.values().any(|v| v["kind"] == "db_quarantined")
                })
            })
        },
    );
    collector.with(|g| {
        let online = g
            .other
            .iter()
            .find(|(t, _)| t == "fleet/robot-q/status")
            .expect("presence published");
        let p: serde_json::Value = serde_json::from_slice(&online.1).unwrap();
        assert_eq!(p["state"], "online");
        assert!(p["boot"].as_str().is_some_and(|b| b.len() == 32));
    });
}
