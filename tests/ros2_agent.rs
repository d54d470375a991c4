//! The real `fleetlet run` binary with a `[ros2]` section: the ROS 2 environment from the
//! config (not the one the agent was started with) is what the agent's own node and the
//! children it supervises use, so the bridge sees a child's topic. Needs the ROS 2
//! environment (`source scripts/ros2-env.sh`); run with `--features ros2`.
#![cfg(feature = "ros2")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_common;
use agent_common::{free_port, status, BIN};

/// The agent; SIGINT (its ordered shutdown stops the children) then SIGKILL on drop.
struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("ROS2_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn rate_pub() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples/ros2-nav/nodes/rate_pub.py")
}

/// The variables that decide the ROS 2 graph, from a file written by `env`.
fn graph_vars(path: &Path) -> BTreeMap<String, String> {
    const KEYS: [&str; 4] = [
        "ROS_DOMAIN_ID",
        "RMW_IMPLEMENTATION",
        "ROS_AUTOMATIC_DISCOVERY_RANGE",
        "ROS_STATIC_PEERS",
    ];
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| KEYS.contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_configured_ros_environment_reaches_the_agent_node_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let domain = 100 + (std::process::id() % 100) as u16;
    let env_file = dir.path().join("child.env");
    std::fs::write(
        dir.path().join("workload.toml"),
        format!(
            r#"
[process.probe]
command = "sh"
args = ["-c", "env > {env}; exec sleep 1000"]

[process.talker]
command = "{py}"
args = ["-u", "{node}", "--topic", "/env_probe", "--rate", "50"]

[[forward]]
topic = "/env_probe"
type = "std_msgs/msg/String"
max_rate_hz = 5.0
"#,
            env = env_file.display(),
            py = python(),
            node = rate_pub().display(),
        ),
    )
    .unwrap();
    let cfg = dir.path().join("fleetlet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ndata_dir = \"{data}\"\nshutdown_timeout = \"20s\"\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\n\
             [supervisor]\nallow_unsigned_workloads = true\nworkload = \"workload.toml\"\n\
             [ros2]\nenabled = true\nnode_name = \"fleetlet_env_test\"\ndomain_id = {domain}\n\
             rmw_implementation = \"rmw_fastrtps_cpp\"\nautomatic_discovery_range = \"LOCALHOST\"\n",
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    // The agent is started in another graph; its config must win, for it and its children.
    let _agent = Agent(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .current_dir(dir.path())
            .env("ROS_DOMAIN_ID", (domain + 1).to_string())
            .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
            .env_remove("ROS_STATIC_PEERS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    let bridged = loop {
        assert!(
            Instant::now() < deadline,
            "the bridge never received the child's topic; last ros2 status: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Some(s) = status(port) else { continue };
        last = s["subsystems"]["ros2"].clone();
        let received = last["detail"]["bridge"][0]["received"]
            .as_u64()
            .unwrap_or(0);
        if received > 0 {
            break last.clone();
        }
    };
    assert_eq!(bridged["detail"]["env"]["domain_id"], domain, "{bridged}");
    assert_eq!(bridged["detail"]["bridge"][0]["topic"], "/env_probe");

    let want: BTreeMap<String, String> = [
        ("ROS_DOMAIN_ID", domain.to_string()),
        ("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp".to_owned()),
        ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let child = graph_vars(&env_file);
    assert_eq!(child, want, "the child's ROS 2 environment");
}
