//! ROS 2 integration against real rclpy nodes (the example workload's nodes in
//! `edge-manifests/examples/ros2-nav/nodes`). Needs the ROS 2 environment
//! (`source scripts/ros2-env.sh`); run with `--features ros2 -- --test-threads=1`
//! (one r2r context per process).
#![cfg(feature = "ros2")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fleetlet::ros2::bridge::{self, Forward};
use fleetlet::ros2::checks::{Checker, Ros2Check, TopicRates};
use fleetlet::ros2::diagnostics::{Diagnostics, Level};
use fleetlet::ros2::env::{DiscoveryRange, Ros2Env};
use fleetlet::ros2::lifecycle::{self, Lifecycle};
use fleetlet::ros2::Ros2;
use fleetlet::telemetry::{Priority, Sink};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One graph per test process, away from other ROS 2 users on the machine: a domain id
/// derived from the pid, discovery limited to this host.
fn env() -> &'static Ros2Env {
    static ENV: OnceLock<Ros2Env> = OnceLock::new();
    ENV.get_or_init(|| Ros2Env {
        domain_id: Some(100 + (std::process::id() % 100) as u16),
        rmw_implementation: Some("rmw_fastrtps_cpp".into()),
        automatic_discovery_range: Some(DiscoveryRange::Localhost),
        static_peers: vec![],
    })
}

fn python() -> String {
    std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn nodes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples/ros2-nav/nodes")
}

/// A child rclpy node; SIGINT then SIGKILL on drop.
struct Node(Child);

impl Node {
    fn spawn(script: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(nodes_dir().join(script))
            .args(args)
            .stdin(Stdio::null());
        env().apply_to_command(&mut cmd);
        Node(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {script}: {e}")),
        )
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }
    fn signal(&self, s: Signal) {
        kill(self.pid(), s).unwrap();
    }
    /// SIGINT and wait up to 5 s; returns whether it exited by itself.
    fn interrupt(&mut self) -> bool {
        let _ = kill(self.pid(), Signal::SIGINT);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(self.pid(), Signal::SIGCONT);
            if !self.interrupt() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

fn start_node(name: &str) -> Ros2 {
    Ros2::start(
        name,
        env().clone(),
        Duration::from_millis(20),
        fleetlet::ros2::config::DEFAULT_MIN_SPIN_INTERVAL,
    )
    .unwrap()
}

fn graph_nodes() -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ros2/graph_nodes.py"));
    env().apply_to_command(&mut cmd);
    let out = cmd.output().unwrap();
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

/// Polls `check` until `want` (pass/fail) or `within` elapses; returns the last outcome.
async fn until(
    checker: &Checker,
    check: &Ros2Check,
    want_pass: bool,
    within: Duration,
) -> Result<String, String> {
    let end = Instant::now() + within;
    loop {
        let r = checker.evaluate(check).await;
        if r.is_ok() == want_pass || Instant::now() > end {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn checker(
    ros: &Ros2,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    diagnostics: Option<Diagnostics>,
) -> Checker {
    Checker {
        rates: TopicRates::new(ros.clone(), cancel.clone(), tracker.clone()),
        lifecycle: Lifecycle::new(ros.clone())
            .with_timeouts(Duration::from_secs(10), Duration::from_secs(5)),
        diagnostics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_rate_check_passes_for_fusion_and_fails_while_fusion_is_stopped() {
    let ros = start_node("t_rate");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let c = checker(&ros, &cancel, &tracker, None);
    let _driver = Node::spawn("sensor_driver.py", &[]);
    let fusion = Node::spawn("fusion.py", &[]);
    let check = Ros2Check::TopicRate {
        topic: "/fused_pose".into(),
        min_hz: 40.0,
        window: Duration::from_secs(1),
    };
    let r = until(&c, &check, true, Duration::from_secs(30)).await;
    assert!(r.is_ok(), "fusion never reached 40 Hz: {r:?}");
    // alive but silent
    fusion.signal(Signal::SIGSTOP);
    let r = until(&c, &check, false, Duration::from_secs(5)).await;
    let why = r.expect_err("a stopped fusion node must fail the rate check");
    assert!(why.contains("below 40 Hz"), "{why}");
    fusion.signal(Signal::SIGCONT);
    let r = until(&c, &check, true, Duration::from_secs(10)).await;
    assert!(r.is_ok(), "rate did not recover after SIGCONT: {r:?}");
    // a topic nobody publishes fails with a clear reason
    let ghost = Ros2Check::TopicRate {
        topic: "/ghost".into(),
        min_hz: 1.0,
        window: Duration::from_secs(1),
    };
    let why = c.evaluate(&ghost).await.unwrap_err();
    assert!(
        why.contains("/ghost") && why.contains("no publisher"),
        "{why}"
    );
    cancel.cancel();
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_pose_is_bridged_throttled_to_the_configured_rate_with_selected_fields() {
    let ros = start_node("t_bridge");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let (sink, mut rx) = Sink::channel(10_000);
    let _driver = Node::spawn("sensor_driver.py", &[]);
    let _fusion = Node::spawn("fusion.py", &[]);
    let fwd = Forward {
        topic: "/fused_pose".into(),
        msg_type: "geometry_msgs/msg/PoseStamped".into(),
        max_rate_hz: Some(10.0),
        fields: vec!["pose.position".into(), "header.frame_id".into()],
        priority: Priority::Normal,
        stream: None,
    };
    let bridged = bridge::start(&ros, &[fwd], sink, cancel.clone(), &tracker)
        .await
        .unwrap();
    // first record (fusion up), then count over 5 s
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no record within 30 s")
        .unwrap();
    assert_eq!(first.stream, "ros/fused_pose");
    assert_eq!(first.priority, Priority::Normal);
    assert_eq!(first.payload["topic"], "/fused_pose");
    assert_eq!(first.payload["data"]["header.frame_id"], "map");
    assert!(
        first.payload["data"]["pose.position"]["x"].is_f64(),
        "{}",
        first.payload
    );
    assert!(first.payload["data"].get("pose.orientation").is_none());
    let received_before = bridged[0]
        .counters
        .received
        .load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            n += 1;
        }
    }
    let received = bridged[0]
        .counters
        .received
        .load(std::sync::atomic::Ordering::Relaxed)
        - received_before;
    let rate = f64::from(n) / 5.0;
    assert!(
        (9.0..=11.0).contains(&rate),
        "forwarded {rate} Hz, want 10 Hz ± 10% ({n} records)"
    );
    // The ~50 Hz source is taken once per paced spin interval (half the 10 Hz throttle
    // period: ~20 takes a second), so the throttle must have dropped about every other one.
    assert!(
        received > u64::from(n) * 3 / 2,
        "the throttle should drop messages: took {received}, forwarded {n} in 5 s"
    );
    cancel.cancel();
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_not_compiled_in_is_refused_with_a_clear_error() {
    let ros = start_node("t_types");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let (sink, _rx) = Sink::channel(10);
    let fwd = Forward {
        topic: "/scan".into(),
        msg_type: "velodyne_msgs/msg/VelodyneScan".into(),
        max_rate_hz: None,
        fields: vec![],
        priority: Priority::Bulk,
        stream: None,
    };
    let e = bridge::start(&ros, &[fwd], sink, cancel.clone(), &tracker)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("velodyne_msgs/msg/VelodyneScan") && msg.contains("IDL_PACKAGE_FILTER"),
        "{msg}"
    );
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_diagnostics_produce_an_event_and_fail_the_diagnostics_check() {
    let ros = start_node("t_diag");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let (sink, mut rx) = Sink::channel(1000);
    let diag = Diagnostics::start(&ros, "/diagnostics", sink, cancel.clone(), &tracker)
        .await
        .unwrap();
    let c = checker(&ros, &cancel, &tracker, Some(diag));
    let _nav = Node::spawn("navigation.py", &["--autostart", "--diag-level", "error"]);
    let ev = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = rx.recv().await.unwrap();
            if r.stream == "events" && r.payload["kind"] == "ros2.diagnostics" {
                return r;
            }
        }
    })
    .await
    .expect("no diagnostics event within 30 s");
    assert_eq!(ev.priority, Priority::Critical);
    assert_eq!(ev.payload["name"], "navigation: planner");
    assert_eq!(ev.payload["level"], "error");
    assert_eq!(ev.payload["message"], "no valid path");
    let check = Ros2Check::Diagnostics {
        name: "navigation: planner".into(),
        hardware_id: None,
        max_level: Level::Warn,
        stale_after: Duration::from_secs(5),
    };
    let why = c.evaluate(&check).await.unwrap_err();
    assert!(why.contains("error: no valid path"), "{why}");
    cancel.cancel();
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_node_left_inactive_fails_the_check_until_driven_active_also_after_respawn() {
    let ros = start_node("t_lifecycle");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let c = checker(&ros, &cancel, &tracker, None);
    let lc = c.lifecycle.clone();
    let active = Ros2Check::Lifecycle {
        node: "navigation".into(),
        state: "active".into(),
    };
    let mut nav = Node::spawn("navigation.py", &[]);
    let s = lc.get_state("navigation").await.unwrap();
    assert_eq!(
        (s.id, s.label.as_str()),
        (lifecycle::state::UNCONFIGURED, "unconfigured")
    );
    lc.change_state("navigation", lifecycle::transition::CONFIGURE)
        .await
        .unwrap();
    // left inactive: blocks readiness
    let why = c.evaluate(&active).await.unwrap_err();
    assert!(why.contains("is inactive (needs active)"), "{why}");
    // bring-up drives it to active
    lc.bring_up(&["navigation".to_owned()]).await.unwrap();
    assert!(c.evaluate(&active).await.is_ok());
    // a respawned managed node comes back unconfigured and is driven to active again
    assert!(nav.interrupt(), "navigation did not exit on SIGINT");
    let _nav2 = Node::spawn("navigation.py", &[]);
    let s = lc.get_state("navigation").await.unwrap();
    assert_eq!(s.label, "unconfigured");
    assert!(c.evaluate(&active).await.is_err());
    lc.ensure_active("navigation").await.unwrap();
    assert!(c.evaluate(&active).await.is_ok());
    // teardown reverses it
    lc.teardown(&["navigation".to_owned()]).await.unwrap();
    assert_eq!(
        lc.get_state("navigation").await.unwrap().label,
        "unconfigured"
    );
    // not a managed node at all: clear error
    let e = Lifecycle::new(ros.clone())
        .with_timeouts(Duration::from_millis(500), Duration::from_secs(1))
        .get_state("/no_such_node")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("/no_such_node") && e.to_string().contains("not available"),
        "{e}"
    );
    cancel.cancel();
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_state_is_published_on_fleetlet_status() {
    let ros = start_node("t_status");
    let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
    let registry = fleetlet::status::Registry::new();
    let rep = registry.register("mcu");
    rep.set_state(fleetlet::status::SubsystemState::Failed);
    rep.set_detail(serde_json::json!({"estop": "engaged"}));
    let mut sub = ros
        .with_node(|n| {
            n.subscribe::<r2r::std_msgs::msg::String>(
                "/fleetlet/status",
                r2r::QosProfile::default(),
            )
        })
        .await
        .unwrap()
        .unwrap();
    fleetlet::ros2::status::start(
        &ros,
        "/fleetlet/status",
        Duration::from_millis(200),
        registry.clone(),
        cancel.clone(),
        &tracker,
    )
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("no status within 10 s")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg.data).unwrap();
    assert_eq!(v["subsystems"]["mcu"]["detail"]["estop"], "engaged");
    assert_eq!(v["ready"], false);
    assert!(v["ts_ms"].as_u64().unwrap() > 0);
    // a change goes out promptly
    rep.set_detail(serde_json::json!({"estop": "released"}));
    let changed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = sub.next().await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&m.data).unwrap();
            if v["subsystems"]["mcu"]["detail"]["estop"] == "released" {
                return v;
            }
        }
    })
    .await;
    assert!(changed.is_ok(), "status change not published");
    cancel.cancel();
    ros.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stopped_with_sigint_and_the_agent_node_leave_the_graph() {
    let ros = start_node("t_graph");
    // give the node an entity so it spins
    let _s = ros
        .with_node(|n| {
            n.subscribe::<r2r::std_msgs::msg::String>("/nothing", r2r::QosProfile::default())
        })
        .await
        .unwrap()
        .unwrap();
    let mut driver = Node::spawn("sensor_driver.py", &["--name", "g_driver"]);
    let mut fusion = Node::spawn("fusion.py", &["--name", "g_fusion"]);
    let want = ["/g_driver", "/g_fusion", "/t_graph"];
    let end = Instant::now() + Duration::from_secs(30);
    let mut before = graph_nodes();
    while !want.iter().all(|n| before.iter().any(|x| x == n)) && Instant::now() < end {
        before = graph_nodes();
    }
    for n in want {
        assert!(before.iter().any(|x| x == n), "{n} missing from {before:?}");
    }
    assert!(fusion.interrupt(), "fusion did not exit on SIGINT");
    assert!(driver.interrupt(), "sensor_driver did not exit on SIGINT");
    ros.shutdown_async().await;
    assert!(!ros.is_running());
    let after = graph_nodes();
    for n in want {
        assert!(
            !after.iter().any(|x| x == n),
            "{n} still in the graph: {after:?}"
        );
    }
}

#[test]
fn idle_node_does_not_busy_spin() {
    let ros = start_node("t_idle");
    std::thread::sleep(Duration::from_millis(500));
    // no entities yet: the thread sleeps on its job queue instead of spinning
    assert_eq!(ros.spin_count(), 0);
    ros.shutdown();
    assert!(!ros.is_running());
}
