//! The example ROS 2 workload (`edge-manifests/examples/ros2-nav`) under the real supervisor
//! with the ROS 2 check provider: real rclpy nodes, real processes. Needs the ROS 2
//! environment (`source scripts/ros2-env.sh`); run with `--features ros2 -- --test-threads=1`.
#![cfg(feature = "ros2")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod supervisor_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleetlet::ros2::env::DiscoveryRange;
use fleetlet::supervisor::{self, ProcessState};
use fleetlet::telemetry::{Priority, Record};
use fleetlet::workload::Workload;
use supervisor_common::{alive, services, wait_until};
use tokio::sync::mpsc;

fn domain() -> u16 {
    100 + (std::process::id() % 100) as u16
}

fn ros2_config() -> fleetlet::ros2::Config {
    fleetlet::ros2::Config {
        node_name: "fleetlet_test".into(),
        domain_id: Some(domain()),
        rmw_implementation: Some("rmw_fastrtps_cpp".into()),
        automatic_discovery_range: Some(DiscoveryRange::Localhost),
        ..fleetlet::ros2::Config::default()
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples/ros2-nav")
}

/// Node names in the graph (rclpy probe, same environment as the agent's children).
fn graph_nodes() -> Vec<String> {
    let py = std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ros2/graph_nodes.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Records on `stream` received within `d`.
async fn collect(rx: &mut mpsc::Receiver<Record>, stream: &str, d: Duration) -> Vec<Record> {
    let end = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(end, rx.recv()).await {
        if r.stream == stream {
            out.push(r);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_workload_comes_up_in_order_recovers_a_silent_fusion_node_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, mut telemetry) = services(dir.path());
    let mut ros = fleetlet::ros2::start(&svc, &ros2_config()).await.unwrap();
    let sup =
        supervisor::start_with_hooks(&svc, &supervisor::Config::default(), ros.supervisor_hooks())
            .await
            .unwrap();
    let w = Workload::from_file(&example().join("workload.toml")).unwrap();
    ros.accept_workload(&svc, &w).await.unwrap();

    // Record the order in which processes first become ready and whether any started early.
    let mut watch = sup.watch();
    let order = tokio::spawn(async move {
        let mut ready: Vec<String> = Vec::new();
        let mut started_early: Vec<String> = Vec::new();
        let deps: BTreeMap<&str, &str> =
            [("fusion", "sensor_driver"), ("navigation", "fusion")].into();
        loop {
            {
                let s = watch.borrow_and_update().clone();
                // readiness first: one (coalesced) snapshot may show a dependency becoming
                // ready and its dependant starting
                for (name, p) in &s.processes {
                    if p.state == ProcessState::Ready && !ready.contains(name) {
                        ready.push(name.clone());
                    }
                }
                for (name, p) in &s.processes {
                    if let (Some(_), Some(dep)) = (p.pid, deps.get(name.as_str())) {
                        if !ready.iter().any(|r| r == dep) && !started_early.contains(name) {
                            started_early.push(name.clone());
                        }
                    }
                }
                if ready.len() == 3 {
                    return (ready, started_early);
                }
            }
            if watch.changed().await.is_err() {
                return (ready, started_early);
            }
        }
    });
    sup.apply(w).await.unwrap();
    let (ready, early) = tokio::time::timeout(Duration::from_secs(120), order)
        .await
        .expect("workload not ready in 120 s")
        .unwrap();
    assert_eq!(ready, vec!["sensor_driver", "fusion", "navigation"]);
    assert!(
        early.is_empty(),
        "started before their dependency was ready: {early:?}"
    );
    let lc = ros.lifecycle.get_state("/navigation").await.unwrap();
    assert_eq!(
        lc.label, "active",
        "navigation was driven configure → activate"
    );

    // /fused_pose telemetry, throttled to 10 Hz, position and stamp only (backlog drained first)
    while telemetry.try_recv().is_ok() {}
    let recs = collect(&mut telemetry, "ros/fused_pose", Duration::from_secs(5)).await;
    let hz = recs.len() as f64 / 5.0;
    assert!(
        (9.0..=11.0).contains(&hz),
        "fused_pose forwarded at {hz} Hz, want 10 ± 10%"
    );
    assert!(recs.iter().all(|r| r.priority == Priority::Normal));
    let data = &recs[0].payload["data"];
    assert!(
        data["pose.position"]["x"].is_f64() && data["header.stamp"]["sec"].is_i64(),
        "{data}"
    );

    // Alive but silent: SIGSTOP fusion → topic-rate liveness fails → restart → ready again.
    let snap = sup.snapshot();
    let old_pid = snap.processes["fusion"].pid.unwrap();
    let restarts = snap.processes["fusion"].restarts;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let snap = wait_until(&sup, 60, "fusion restarted and ready", |s| {
        let f = &s.processes["fusion"];
        f.restarts > restarts && f.state == ProcessState::Ready && f.pid != Some(old_pid)
    })
    .await;
    assert!(
        !alive(old_pid as i32),
        "the stopped fusion process must be gone"
    );
    assert!(snap.processes["fusion"].pid.is_some());
    let recs = collect(&mut telemetry, "ros/fused_pose", Duration::from_secs(3)).await;
    assert!(
        recs.len() >= 20,
        "fused_pose telemetry did not recover: {} records in 3 s",
        recs.len()
    );

    // Shutdown: every node gets SIGINT first and leaves the graph.
    let pids: Vec<u32> = sup
        .snapshot()
        .processes
        .values()
        .filter_map(|p| p.pid)
        .collect();
    sup.shutdown().await.unwrap();
    for (name, node) in [
        ("sensor_driver", "sensor_driver"),
        ("fusion", "fusion"),
        ("navigation", "navigation"),
    ] {
        let logs = sup.logs(name, 50).unwrap();
        assert!(
            logs.iter()
                .any(|l| l.text.contains(&format!("{node}: stopping on SIGINT"))),
            "{name} was not stopped with SIGINT: {:?}",
            logs.iter().map(|l| &l.text).collect::<Vec<_>>()
        );
    }
    for p in pids {
        assert!(!alive(p as i32), "pid {p} still alive after shutdown");
    }
    svc.cancel.cancel();
    svc.tracker.close();
    tokio::time::timeout(Duration::from_secs(10), svc.tracker.wait())
        .await
        .expect("ros2 tasks did not stop");
    assert!(
        !ros.ros.is_running(),
        "the spin thread must be joined on shutdown"
    );
    let start = Instant::now();
    let mut left = graph_nodes();
    while !left.is_empty() && start.elapsed() < Duration::from_secs(10) {
        left = graph_nodes();
    }
    assert!(left.is_empty(), "DDS participants left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_node_left_inactive_blocks_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _telemetry) = services(dir.path());
    let cfg = fleetlet::ros2::Config {
        node_name: "fleetlet_test_lc".into(),
        ..ros2_config()
    };
    let ros = fleetlet::ros2::start(&svc, &cfg).await.unwrap();
    let sup = supervisor::start(&svc, &supervisor::Config::default(), Some(ros.provider()))
        .await
        .unwrap();
    let manifest = format!(
        r#"
        [process.navigation]
        command = "python3"
        args = ["-u", "{nodes}/navigation.py", "--self-configure", "--name", "nav_inactive"]
        readiness = {{ ros2_lifecycle = {{ node = "/nav_inactive" }}, interval = "500ms", timeout = "15s" }}
        [process.consumer]
        command = "sleep"
        args = ["1000"]
        depends_on = {{ navigation = "ready" }}
        "#,
        nodes = example().join("nodes").display()
    );
    sup.apply(Workload::from_toml_str(&manifest).unwrap())
        .await
        .unwrap();
    let snap = wait_until(&sup, 60, "inactive reason", |s| {
        s.processes["navigation"]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("is inactive (needs active)"))
    })
    .await;
    assert_ne!(snap.processes["navigation"].state, ProcessState::Ready);
    assert_eq!(snap.processes["consumer"].state, ProcessState::Pending);
    assert!(snap.processes["consumer"].pid.is_none());
    // an operator (or a fixed node) activates it: readiness follows
    ros.lifecycle.ensure_active("/nav_inactive").await.unwrap();
    wait_until(&sup, 30, "consumer running", |s| {
        s.processes["consumer"].pid.is_some()
    })
    .await;
    sup.shutdown().await.unwrap();
    svc.cancel.cancel();
    svc.tracker.close();
    svc.tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_asking_for_another_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _t) = services(dir.path());
    let cfg = fleetlet::ros2::Config {
        node_name: "fleetlet_test_dom".into(),
        ..ros2_config()
    };
    let mut ros = fleetlet::ros2::start(&svc, &cfg).await.unwrap();
    let other = (domain() + 1) % 200;
    let w = Workload::from_toml_str(&format!(
        "[ros2]\ndomain_id = {other}\n[process.a]\ncommand = \"true\"\n"
    ))
    .unwrap();
    let e = ros.accept_workload(&svc, &w).await.unwrap_err();
    assert!(
        e.to_string().contains("ros2.domain_id") && e.to_string().contains(&other.to_string()),
        "{e}"
    );
    // children get the agent's graph
    assert_eq!(ros.child_env()["ROS_DOMAIN_ID"], domain().to_string());
    assert_eq!(
        std::env::var("ROS_DOMAIN_ID").unwrap(),
        domain().to_string()
    );
    svc.cancel.cancel();
    svc.tracker.close();
    svc.tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_nodes_are_deactivated_and_cleaned_up_in_reverse_order_before_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _telemetry) = services(dir.path());
    let cfg = fleetlet::ros2::Config {
        node_name: "fleetlet_test_teardown".into(),
        ..ros2_config()
    };
    let ros = fleetlet::ros2::start(&svc, &cfg).await.unwrap();
    let sup =
        supervisor::start_with_hooks(&svc, &supervisor::Config::default(), ros.supervisor_hooks())
            .await
            .unwrap();
    // Names unique to this run: a leftover node of another run must not answer for ours.
    let (map, planner) = (
        format!("map_{}", std::process::id()),
        format!("planner_{}", std::process::id()),
    );
    let journal = dir.path().join("journal");
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ros2/journal_lifecycle_node.py");
    let manifest = format!(
        r#"
        [process.map_server]
        command = "python3"
        args = ["-u", "{node}", "--name", "{map}", "--journal", "{journal}"]
        readiness = {{ ros2_lifecycle = {{ node = "/{map}" }}, interval = "500ms", timeout = "15s" }}
        [process.planner]
        command = "python3"
        args = ["-u", "{node}", "--name", "{planner}", "--journal", "{journal}"]
        depends_on = {{ map_server = "ready" }}
        readiness = {{ ros2_lifecycle = {{ node = "/{planner}" }}, interval = "500ms", timeout = "15s" }}
        "#,
        node = node.display(),
        journal = journal.display(),
    );
    sup.apply(Workload::from_toml_str(&manifest).unwrap())
        .await
        .unwrap();
    wait_until(&sup, 90, "both managed nodes ready", |s| {
        s.processes.values().all(|p| p.state == ProcessState::Ready)
    })
    .await;
    sup.shutdown().await.unwrap();
    let events: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = [
        (&map, "configure"),
        (&map, "activate"),
        (&planner, "configure"),
        (&planner, "activate"),
        // teardown: the dependant first, each deactivate → cleanup before its SIGINT
        (&planner, "deactivate"),
        (&planner, "cleanup"),
        (&planner, "SIGINT"),
        (&map, "deactivate"),
        (&map, "cleanup"),
        (&map, "SIGINT"),
    ]
    .iter()
    .map(|(n, e)| format!("{n} {e}"))
    .collect();
    assert_eq!(events, want);
    let log: Vec<String> = sup
        .logs("planner", 50)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        log.iter().any(|l| l.contains("pre-stop hook done")),
        "{log:?}"
    );
    svc.cancel.cancel();
    svc.tracker.close();
    svc.tracker.wait().await;
}
