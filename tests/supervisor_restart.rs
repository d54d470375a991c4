//! Restart policies, backoff and crash-loop detection with real child processes.

mod supervisor_common;

use std::time::Duration;

use fleetlet::supervisor::ProcessState;
use supervisor_common::*;

/// Nanosecond timestamps (CLOCK_REALTIME via date) the child appended at each start.
fn starts(p: &std::path::Path) -> Vec<u128> {
    lines(p)
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_restarted_with_exponentially_growing_backoff() {
    let rig = start(
        r#"
        [process.crashy]
        command = "sh"
        args = ["-c", "date +%s%N >> {dir}/starts; exit 3"]
        restart = "on-failure"
        backoff = { initial = "200ms", max = "10s", multiplier = 2.0, jitter = 0.0 }
        crash_loop = { max_failures = 0 }
        "#,
    )
    .await;
    let file = rig.path("starts");
    // The delays the supervisor announces while in backoff (jitter 0: exact).
    let mut announced: Vec<u64> = Vec::new();
    let mut rx = rig.handle.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while announced.len() < 3 {
        if let Some(ms) = rx.borrow_and_update().processes["crashy"].backoff_ms {
            if announced.last() != Some(&ms) {
                announced.push(ms);
            }
        }
        tokio::select! {
            r = rx.changed() => r.unwrap(),
            _ = tokio::time::sleep_until(deadline) => panic!("announced so far: {announced:?}"),
        }
    }
    assert_eq!(announced, vec![200, 400, 800]);
    eventually(20, "4 starts", || starts(&file).len() >= 4).await;
    let s = starts(&file);
    let gaps: Vec<u128> = s.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    // Each delay is at least the configured backoff: 200, 400, 800 ms.
    for (i, (gap, min)) in gaps.iter().zip([200u128, 400, 800]).enumerate() {
        assert!(
            *gap >= min,
            "gap {i} was {gap} ms, expected ≥ {min} ms (gaps {gaps:?})"
        );
    }
    let snap = rig.handle.snapshot();
    let p = &snap.processes["crashy"];
    assert!(p.restarts >= 3, "{p:?}");
    assert_eq!(p.last_exit.as_ref().and_then(|e| e.code), Some(3));
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_leaves_a_clean_exit_exited_but_restarts_a_failure() {
    let rig = start(
        r#"
        [process.clean]
        command = "sh"
        args = ["-c", "echo x >> {dir}/clean"]
        restart = "on-failure"
        [process.dirty]
        command = "sh"
        args = ["-c", "echo x >> {dir}/dirty; [ $(wc -l < {dir}/dirty) -ge 3 ] && exec sleep 1000; exit 1"]
        restart = "on-failure"
        backoff = { initial = "10ms", jitter = 0.0 }
        "#,
    )
    .await;
    wait_state(&rig.handle, "clean", ProcessState::Exited, 10).await;
    wait_until(&rig.handle, 10, "dirty running after 2 restarts", |s| {
        s.processes["dirty"].state == ProcessState::Running && s.processes["dirty"].restarts == 2
    })
    .await;
    eventually(5, "third dirty run writes", || {
        lines(&rig.path("dirty")).len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lines(&rig.path("clean")).len(),
        1,
        "a clean exit was restarted"
    );
    assert_eq!(lines(&rig.path("dirty")).len(), 3);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_even_a_clean_exit() {
    let rig = start(
        r#"
        [process.job]
        command = "sh"
        args = ["-c", "echo x >> {dir}/runs; [ $(wc -l < {dir}/runs) -ge 3 ] && exec sleep 1000; exit 0"]
        restart = "always"
        backoff = { initial = "10ms", jitter = 0.0 }
        "#,
    )
    .await;
    wait_until(&rig.handle, 10, "third run", |s| {
        s.processes["job"].state == ProcessState::Running && s.processes["job"].restarts == 2
    })
    .await;
    eventually(5, "third run writes", || {
        lines(&rig.path("runs")).len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lines(&rig.path("runs")).len(), 3);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_does_not_restart_and_a_failure_is_reported_failed() {
    let rig = start(
        r#"
        [process.once]
        command = "sh"
        args = ["-c", "echo x >> {dir}/runs; exit 7"]
        restart = "never"
        "#,
    )
    .await;
    let snap = wait_state(&rig.handle, "once", ProcessState::Failed, 10).await;
    let p = &snap.processes["once"];
    assert_eq!(p.last_exit.as_ref().and_then(|e| e.code), Some(7));
    assert!(
        p.reason.as_deref().unwrap_or("").contains("code 7"),
        "{p:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&rig.path("runs")).len(), 1);
    assert_eq!(rig.handle.snapshot().processes["once"].restarts, 0);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_marks_failed_and_stops_restarting_until_an_operator_starts_it() {
    let mut rig = start(
        r#"
        [process.loop]
        command = "sh"
        args = ["-c", "echo x >> {dir}/runs; exit 1"]
        restart = "always"
        backoff = { initial = "0s", jitter = 0.0 }
        crash_loop = { max_failures = 4, window = "60s" }
        "#,
    )
    .await;
    let snap = wait_state(&rig.handle, "loop", ProcessState::Failed, 10).await;
    let p = &snap.processes["loop"];
    assert!(
        p.reason.as_deref().unwrap_or("").contains("crash loop"),
        "{p:?}"
    );
    assert!(!p.ready);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines(&rig.path("runs")).len(),
        4,
        "restarted after the crash loop"
    );
    // The failure is an event with critical priority.
    let mut saw = false;
    while let Ok(r) = rig.telemetry.try_recv() {
        if r.payload["kind"] == "process_failed" && r.payload["process"] == "loop" {
            assert_eq!(r.priority, fleetlet::telemetry::Priority::Critical);
            saw = true;
        }
    }
    assert!(saw, "no process_failed event");
    // An operator start clears the crash window: it runs (and loops) again.
    rig.handle.start("loop").await.unwrap();
    eventually(10, "runs after operator start", || {
        lines(&rig.path("runs")).len() >= 5
    })
    .await;
    wait_state(&rig.handle, "loop", ProcessState::Failed, 10).await;
    assert_eq!(lines(&rig.path("runs")).len(), 8);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_failure_is_retried_then_fails_with_the_reason() {
    let rig = start(
        r#"
        [process.ghost]
        command = "/nonexistent/binary"
        backoff = { initial = "0s" }
        crash_loop = { max_failures = 2, window = "60s" }
        "#,
    )
    .await;
    let snap = wait_state(&rig.handle, "ghost", ProcessState::Failed, 10).await;
    assert!(snap.processes["ghost"]
        .reason
        .as_deref()
        .unwrap()
        .contains("crash loop"));
    let logs = rig.handle.logs("ghost", 10).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.text.contains("cannot start \"/nonexistent/binary\"")),
        "{logs:?}"
    );
    rig.handle.shutdown().await.unwrap();
}
