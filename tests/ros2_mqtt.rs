//! ROS 2 → telemetry → MQTT end to end: `/fused_pose` from the example's real rclpy nodes is
//! bridged by the agent's r2r node, queued, uploaded, and arrives at a real mosquitto
//! (started on a free 127.0.0.1 port) throttled to the configured rate.
#![cfg(feature = "ros2")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod telemetry_common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use fleetlet::ros2::bridge::Forward;
use fleetlet::ros2::env::DiscoveryRange;
use fleetlet::telemetry::Priority;
use telemetry_common::*;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_pose_telemetry_arrives_at_mosquitto_throttled_to_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), free_port(), "");
    broker.start();
    let collector = Collector::start(broker.port, &["fleet/+/telemetry/#"]);
    let tcfg = fleetlet::telemetry::Config {
        metrics_interval: Duration::ZERO,
        batch_linger: Duration::from_millis(20),
        ..fleetlet::telemetry::Config::default()
    };
    let h = Harness::start(
        dir.path(),
        "robot-ros",
        tcfg,
        Some(mqtt_config(broker.port)),
        10_000,
    )
    .await;
    let cfg = fleetlet::ros2::Config {
        node_name: "fleetlet_mqtt".into(),
        domain_id: Some(100 + (std::process::id() % 100) as u16),
        automatic_discovery_range: Some(DiscoveryRange::Localhost),
        forward: vec![Forward {
            topic: "/fused_pose".into(),
            msg_type: "geometry_msgs/msg/PoseStamped".into(),
            max_rate_hz: Some(10.0),
            fields: vec!["header.stamp".into(), "pose.position".into()],
            priority: Priority::Normal,
            stream: None,
        }],
        ..fleetlet::ros2::Config::default()
    };
    let ros = fleetlet::ros2::start(&h.svc, &cfg).await.unwrap();
    let nodes =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples/ros2-nav/nodes");
    let py = std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into());
    let spawn = |script: &str| {
        let mut c = Command::new(&py);
        c.arg(nodes.join(script)).envs(ros.child_env());
        Kill(c.spawn().unwrap())
    };
    let _driver = spawn("sensor_driver.py");
    let _fusion = spawn("fusion.py");

    eventually(
        Duration::from_secs(90),
        "80 fused_pose records at the broker",
        || collector.with(|g| g.unique("ros/fused_pose") >= 80),
    )
    .await;
    // Rate from the message stamps of the forwarded records (independent of upload batching).
    let mut stamps: Vec<f64> = collector.with(|g| {
        g.records
            .iter()
            .filter(|((dev, s), _)| dev == "robot-ros" && s == "ros/fused_pose")
            .flat_map(|(_, r)| r.values())
            .map(|p| {
                assert_eq!(p["topic"], "/fused_pose");
                assert!(p["data"]["pose.position"]["x"].is_f64(), "{p}");
                assert!(p["data"].get("pose.orientation").is_none(), "{p}");
                let st = &p["data"]["header.stamp"];
                st["sec"].as_f64().unwrap() + st["nanosec"].as_f64().unwrap() * 1e-9
            })
            .collect()
    });
    stamps.sort_by(f64::total_cmp);
    // skip the first records (start-up), measure over the rest
    let s = &stamps[10..];
    let hz = (s.len() - 1) as f64 / (s[s.len() - 1] - s[0]);
    assert!(
        (9.0..=11.0).contains(&hz),
        "forwarded at {hz:.2} Hz, want 10 Hz ± 10%"
    );
    drop(_fusion);
    drop(_driver);
    h.stop().await;
    assert!(!ros.ros.is_running());
}
