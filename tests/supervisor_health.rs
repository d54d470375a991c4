//! Liveness and readiness checks: exec, tcp, and the pluggable provider.

mod supervisor_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fleetlet::supervisor::{CheckOutcome, CheckProvider, CheckSpec, ProcessState};
use fleetlet::workload::CheckKind;
use futures::future::BoxFuture;
use supervisor_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failure_restarts_the_process() {
    let rig = start(
        r#"
        [process.hung]
        command = "sh"
        args = ["-c", "echo run >> {dir}/runs; touch {dir}/alive; exec sleep 1000"]
        liveness = { exec = { command = "test", args = ["-f", "{dir}/alive"] }, interval = "100ms", failure_threshold = 3 }
        backoff = { initial = "0s" }
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        "#,
    )
    .await;
    wait_state(&rig.handle, "hung", ProcessState::Running, 10).await;
    eventually(5, "alive file", || rig.path("alive").exists()).await;
    let first = rig.handle.snapshot().processes["hung"].pid;
    // The process keeps running, but its liveness probe now fails: a hang.
    std::fs::remove_file(rig.path("alive")).unwrap();
    let snap = wait_until(&rig.handle, 10, "restart after liveness failure", |s| {
        s.processes["hung"].restarts == 1 && s.processes["hung"].state == ProcessState::Running
    })
    .await;
    let p = &snap.processes["hung"];
    assert_ne!(p.pid, first);
    assert_eq!(
        p.last_exit
            .as_ref()
            .and_then(|e| e.signal.clone())
            .as_deref(),
        Some("SIGTERM")
    );
    let logs = rig.handle.logs("hung", 20).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.text.contains("liveness failed 3 times")),
        "{logs:?}"
    );
    eventually(5, "second run", || lines(&rig.path("runs")).len() == 2).await;
    // Healthy again once the probe passes.
    wait_until(&rig.handle, 5, "healthy", |s| s.processes["hung"].healthy).await;
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ros_check_without_a_provider_fails_with_a_clear_reason() {
    let rig = start(
        r#"
        [process.lidar]
        command = "sleep"
        args = ["1000"]
        readiness = { ros2_topic_rate = { topic = "/scan", min_hz = 5.0 }, interval = "50ms" }
        "#,
    )
    .await;
    let snap = wait_until(&rig.handle, 10, "a readiness reason", |s| {
        s.processes["lidar"].reason.is_some()
    })
    .await;
    let p = &snap.processes["lidar"];
    assert_eq!(p.state, ProcessState::Starting);
    assert!(!p.ready);
    let reason = p.reason.clone().unwrap();
    assert!(
        reason.contains("built without the ros2 feature") && reason.contains("ros2_topic_rate"),
        "{reason}"
    );
    rig.handle.shutdown().await.unwrap();
}

struct Switch(Arc<AtomicBool>);

impl CheckProvider for Switch {
    fn check(&self, process: &str, check: &CheckSpec) -> BoxFuture<'static, CheckOutcome> {
        let on = self.0.load(Ordering::SeqCst);
        let topic = match &check.kind {
            CheckKind::Ros2TopicRate(t) => t.topic.clone(),
            _ => String::new(),
        };
        let process = process.to_owned();
        Box::pin(async move {
            if on && process == "lidar" && topic == "/scan" {
                CheckOutcome::Pass
            } else {
                CheckOutcome::Fail(format!("{topic} silent"))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_checks_gate_readiness() {
    let on = Arc::new(AtomicBool::new(false));
    let rig = start_with(
        r#"
        [process.lidar]
        command = "sleep"
        args = ["1000"]
        readiness = { ros2_topic_rate = { topic = "/scan", min_hz = 5.0 }, interval = "50ms" }
        [process.nav]
        command = "sleep"
        args = ["1000"]
        depends_on = { lidar = "ready" }
        "#,
        Default::default(),
        Some(Arc::new(Switch(on.clone()))),
    )
    .await;
    let snap = wait_until(&rig.handle, 10, "silent reason", |s| {
        s.processes["lidar"].reason.as_deref() == Some("not ready: /scan silent")
    })
    .await;
    assert_eq!(snap.processes["nav"].state, ProcessState::Pending);
    on.store(true, Ordering::SeqCst);
    let snap = wait_state(&rig.handle, "nav", ProcessState::Running, 10).await;
    assert_eq!(snap.processes["lidar"].state, ProcessState::Ready);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_deadline_restarts_a_process_that_never_gets_ready() {
    let rig = start(
        r#"
        [process.slow]
        command = "sh"
        args = ["-c", "echo run >> {dir}/runs; exec sleep 1000"]
        readiness = { exec = { command = "false" }, interval = "50ms", deadline = "300ms" }
        backoff = { initial = "0s" }
        crash_loop = { max_failures = 2, window = "60s" }
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        "#,
    )
    .await;
    let snap = wait_state(&rig.handle, "slow", ProcessState::Failed, 10).await;
    assert!(
        snap.processes["slow"]
            .reason
            .as_deref()
            .unwrap()
            .contains("not ready within 300ms"),
        "{snap:#?}"
    );
    assert_eq!(lines(&rig.path("runs")).len(), 2);
    rig.handle.shutdown().await.unwrap();
}
