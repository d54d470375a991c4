//! Store-and-forward delivery against a real mosquitto: offline buffering, the disk budget,
//! broker restarts and garbage on downlink topics.

mod telemetry_common;

use std::time::Duration;

use fleetlet::telemetry::{Config, Priority};
use telemetry_common::*;

fn tcfg() -> Config {
    Config {
        metrics_interval: Duration::ZERO,
        batch_linger: Duration::from_millis(20),
        drop_report_interval: Duration::from_millis(200),
        ..Config::default()
    }
}

/// Starts the broker, registers a persistent collector session, and stops the broker again
/// so the agent sees it down while the collector's subscription survives.
fn broker_down_with_collector(dir: &std::path::Path) -> (Broker, Collector) {
    let mut b = Broker::new(dir, free_port(), "");
    b.start();
    let c = Collector::start(b.port, &["fleet/+/telemetry/#"]);
    b.stop();
    (b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_while_broker_is_down_all_arrive_in_order_after_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, collector) = broker_down_with_collector(dir.path());
    let h = Harness::start(
        dir.path(),
        "robot-1",
        tcfg(),
        Some(mqtt_config(broker.port)),
        120_000,
    )
    .await;
    const N: u64 = 50_000;
    for i in 0..N {
        h.sink.emit("pose", Priority::Normal, payload(i));
        h.sink.emit("diag", Priority::Bulk, payload(i));
    }
    assert_eq!(h.sink.intake_dropped(), 0);
    let q = h.telemetry.queue.clone();
    eventually(Duration::from_secs(60), "100k records in the queue", || {
        q.len() == 2 * N
    })
    .await;
    assert!(!*h.link.as_ref().unwrap().connected().borrow());
    broker.start();
    let c = &collector;
    eventually(
        Duration::from_secs(90),
        "all records at the subscriber",
        || c.with(|g| g.unique("pose") as u64 == N && g.unique("diag") as u64 == N),
    )
    .await;
    collector.with(|g| {
        g.assert_complete_and_ordered("pose", N);
        g.assert_complete_and_ordered("diag", N);
        assert_eq!(g.undecodable, 0);
        assert_eq!(
            g.records[&("robot-1".to_string(), "pose".to_string())][&4242],
            payload(4242)
        );
    });
    eventually(
        Duration::from_secs(10),
        "queue emptied after PUBACKs",
        || q.is_empty(),
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_evicts_bulk_first_keeps_critical_and_reports_its_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, collector) = broker_down_with_collector(dir.path());
    let budget = 300_000;
    let cfg = Config {
        budget_bytes: budget,
        ..tcfg()
    };
    let h = Harness::start(
        dir.path(),
        "robot-3",
        cfg,
        Some(mqtt_config(broker.port)),
        20_000,
    )
    .await;
    let big = "x".repeat(256);
    for i in 0..200u64 {
        h.sink.emit("alarms", Priority::Critical, payload(i));
    }
    for i in 0..5_000u64 {
        h.sink.emit(
            "camera",
            Priority::Bulk,
            serde_json::json!({ "i": i, "b": big }),
        );
        if i % 10 == 0 {
            h.sink.emit("state", Priority::Normal, payload(i / 10));
        }
    }
    assert_eq!(h.sink.intake_dropped(), 0);
    let q = h.telemetry.queue.clone();
    eventually(Duration::from_secs(20), "everything appended", || {
        q.next_seq("camera") == 5_000
    })
    .await;
    // Let the writer report the final evictions before the link comes up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = q.stats();
    assert!(stats.bytes <= budget, "{} > {budget}", stats.bytes);
    let drops = q.drops();
    let evicted = drops["camera"].evicted;
    assert!(evicted > 3_000, "bulk must have been evicted: {drops:?}");
    assert!(
        !drops.contains_key("alarms") && !drops.contains_key("state"),
        "only bulk evicted: {drops:?}"
    );

    broker.start();
    let c = &collector;
    eventually(Duration::from_secs(30), "kept records delivered", || {
        c.with(|g| {
            g.unique("alarms") == 200
                && g.unique("state") == 500
                && g.unique("camera") as u64 == 5_000 - evicted
        })
    })
    .await;
    eventually(Duration::from_secs(10), "queue drained", || q.is_empty()).await;
    collector.with(|g| {
        g.assert_complete_and_ordered("alarms", 200);
        g.assert_complete_and_ordered("state", 500);
        // The newest bulk records survived: exactly seqs evicted..5000.
        let cam = &g.records[&("robot-3".to_string(), "camera".to_string())];
        assert_eq!(cam.keys().next().copied(), Some(evicted));
        assert_eq!(cam.keys().last().copied(), Some(4_999));
        // Drop reports were delivered and add up to the evictions.
        let reports = &g.records[&("robot-3".to_string(), "drops".to_string())];
        let reported: u64 = reports
            .values()
            .map(|r| r["streams"]["camera"]["evicted"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(reported, evicted, "drop reports {reports:?}");
    });
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_broker_restarts_during_a_steady_stream_lose_nothing_and_reconnects_jitter() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let collector = Collector::start(broker.port, &["fleet/+/telemetry/#"]);
    let h = Harness::start(
        dir.path(),
        "robot-5",
        tcfg(),
        Some(mqtt_config(broker.port)),
        4096,
    )
    .await;
    let link = h.link.clone().unwrap();
    eventually(Duration::from_secs(10), "link up", || {
        *link.connected().borrow()
    })
    .await;
    let sink = h.sink.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut i = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !stop.is_cancelled() {
                tick.tick().await;
                sink.emit("odom", Priority::Normal, payload(i));
                i += 1;
            }
            i
        }
    });
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tokio::task::block_in_place(|| broker.stop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::block_in_place(|| broker.start());
    }
    stop.cancel();
    let n = producer.await.unwrap();
    assert_eq!(h.sink.intake_dropped(), 0);
    let c = &collector;
    eventually(
        Duration::from_secs(30),
        "all records after the restarts",
        || c.with(|g| g.unique("odom") as u64 == n),
    )
    .await;
    collector.with(|g| g.assert_complete_and_ordered("odom", n));
    let delays = link.recent_reconnect_delays_ms();
    assert!(
        delays.len() >= 20,
        "expected a reconnect delay per restart, got {delays:?}"
    );
    let distinct: std::collections::HashSet<_> = delays.iter().collect();
    assert!(
        distinct.len() >= delays.len() / 2,
        "delays show no jitter: {delays:?}"
    );
    assert!(
        delays.iter().all(|d| *d <= 400),
        "delays above reconnect_max: {delays:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_downlink_topics_is_counted_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let mut h = Harness::start(
        dir.path(),
        "robot-6",
        tcfg(),
        Some(mqtt_config(broker.port)),
        1024,
    )
    .await;
    let link = h.link.clone().unwrap();
    eventually(Duration::from_secs(10), "link up", || {
        *link.connected().borrow()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // subscriptions settle

    let mut o = rumqttc::MqttOptions::new("cloud", "127.0.0.1", broker.port);
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (cloud, mut el) = rumqttc::AsyncClient::new(o, 32);
    let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let digest = format!("sha256:{}", "ab".repeat(32));
    let random: Vec<u8> = (0..300).map(|_| rand::random::<u8>()).collect();
    let sends: Vec<(&str, Vec<u8>, bool)> = vec![
        ("fleet/robot-6/cmd/restart", random.clone(), false),
        ("fleet/robot-6/cmd/restart", vec![b'{'; 2 << 20], false),
        ("fleet/robot-6/cmd/restart", br#"{"id": 7}"#.to_vec(), false),
        ("fleet/robot-6/deployment/desired", random, true),
        (
            "fleet/groups/eu/deployment/desired",
            br#"{"manifest_url":"x","digest":"nope"}"#.to_vec(),
            true,
        ),
        (
            "fleet/robot-6/cmd/restart",
            br#"{"id":"r1","args":{"name":"nav"}}"#.to_vec(),
            false,
        ),
        (
            "fleet/groups/eu/deployment/desired",
            format!(r#"{{"manifest_url":"https://c/m.json","digest":"{digest}"}}"#).into_bytes(),
            true,
        ),
    ];
    for (t, p, retain) in sends {
        cloud
            .publish(t, rumqttc::QoS::AtLeastOnce, retain, p)
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(10), "all downlinks processed", || {
        let (ok, bad, _) = link.downlink_counters();
        ok + bad == 7
    })
    .await;
    assert_eq!(link.downlink_counters(), (2, 5, 0));
    let rx = h.downlink.as_mut().unwrap();
    let first = rx.recv().await.unwrap();
    assert!(
        matches!(first, fleetlet::mqtt::codec::Downlink::Command { ref name, ref request } if name == "restart" && request.id == "r1"),
        "{first:?}"
    );
    let second = rx.recv().await.unwrap();
    assert!(
        matches!(second, fleetlet::mqtt::codec::Downlink::Desired { scope: fleetlet::mqtt::codec::Scope::Group(ref g), desired: Some(_) } if g == "eu"),
        "{second:?}"
    );
    // The link never dropped because of the garbage.
    assert!(*link.connected().borrow());
    assert!(link.recent_reconnect_delays_ms().is_empty());
    // Telemetry still flows after the garbage.
    let collector = Collector::start(broker.port, &["fleet/+/telemetry/#"]);
    h.sink.emit("after", Priority::Normal, payload(1));
    eventually(Duration::from_secs(10), "telemetry after garbage", || {
        collector.with(|g| g.unique("after") == 1)
    })
    .await;
    poller.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_decoded_records_once_despite_duplicate_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let args = fleetlet::mqtt::tail::TailArgs {
        broker: format!("127.0.0.1:{}", broker.port),
        device: Some("robot-t".into()),
        stream: None,
        prefix: "fleet".into(),
        ca: None,
        cert: None,
        key: None,
        username: None,
        json: false,
        count: Some(3),
    };
    let tail = tokio::spawn(async move {
        let mut out = Vec::new();
        fleetlet::mqtt::tail::run_to(args, &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let (cloud, mut el) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("pub", "127.0.0.1", broker.port),
        16,
    );
    let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let batch = |seqs: &[u64]| {
        let recs: Vec<_> = seqs
            .iter()
            .map(|s| serde_json::json!({"seq": s, "ts": 0, "payload": {"v": s}}))
            .collect();
        serde_json::json!({"device": "robot-t", "boot": "b1", "stream": "pose", "records": recs})
            .to_string()
    };
    for seqs in [&[0u64, 1][..], &[0, 1], &[1, 2]] {
        cloud
            .publish(
                "fleet/robot-t/telemetry/pose",
                rumqttc::QoS::AtLeastOnce,
                false,
                batch(seqs),
            )
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(10), tail)
        .await
        .expect("tail exits after --count")
        .unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        r#"robot-t pose #0 1970-01-01T00:00:00.000Z {"v":0}"#
    );
    assert!(lines[2].starts_with("robot-t pose #2 "), "{out}");
    poller.abort();
}
