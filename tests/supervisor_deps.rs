//! Dependency order: start after dependencies, stop in reverse, readiness gating, and
//! restarting dependants.

mod supervisor_common;

use fleetlet::supervisor::ProcessState;
use supervisor_common::*;

fn node(name: &str) -> String {
    // Logs its start and its stop (on SIGINT) to the shared journal.
    format!(
        "echo start {name} >> {{dir}}/journal; trap 'echo stop {name} >> {{dir}}/journal; exit 0' INT TERM; while :; do sleep 0.02; done"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_in_dependency_order_and_stop_in_reverse() {
    let ready = |name: &str| {
        format!(
            r#"readiness = {{ exec = {{ command = "grep", args = ["-q", "start {name}", "{{dir}}/journal"] }}, interval = "50ms" }}"#
        )
    };
    let manifest = format!(
        r#"
        [process.c_top]
        command = "sh"
        args = ["-c", "{c}"]
        depends_on = {{ b_mid = "ready" }}
        {rc}
        [process.b_mid]
        command = "sh"
        args = ["-c", "{b}"]
        depends_on = {{ a_base = "ready" }}
        {rb}
        [process.a_base]
        command = "sh"
        args = ["-c", "{a}"]
        {ra}
        [process.d_side]
        command = "sh"
        args = ["-c", "{d}"]
        depends_on = ["a_base"]
        "#,
        a = node("a"),
        b = node("b"),
        c = node("c"),
        d = node("d"),
        ra = ready("a"),
        rb = ready("b"),
        rc = ready("c"),
    );
    let rig = start(&manifest).await;
    wait_until(&rig.handle, 20, "all ready", |s| s.all_ready()).await;
    let journal = rig.path("journal");
    eventually(5, "4 starts", || lines(&journal).len() == 4).await;
    let j = lines(&journal);
    let pos = |l: &str| {
        j.iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l} missing in {j:?}"))
    };
    assert!(
        pos("start a") < pos("start b") && pos("start b") < pos("start c"),
        "{j:?}"
    );
    // d_side depends on a_base with "started": only the spawn order is guaranteed, not the
    // order in which the two shells write their journal lines.
    rig.handle.shutdown().await.unwrap();
    let j = lines(&journal);
    let pos = |l: &str| {
        j.iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l} missing in {j:?}"))
    };
    assert!(
        pos("stop c") < pos("stop b") && pos("stop b") < pos("stop a"),
        "{j:?}"
    );
    assert!(pos("stop d") < pos("stop a"), "{j:?}");
    let snap = rig.handle.snapshot();
    assert!(
        snap.processes
            .values()
            .all(|p| p.state == ProcessState::Stopped),
        "{snap:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependant_waits_until_the_dependency_listens_on_its_tcp_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!(
        "import socket, time; time.sleep(1.0); s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); open('{{dir}}/journal', 'a').write('listening' + chr(10)); time.sleep(1000)"
    );
    let rig = start(&format!(
        r#"
        [process.server]
        command = "python3"
        args = ["-c", "{server}"]
        readiness = {{ tcp = {{ port = {port} }}, interval = "50ms", timeout = "200ms" }}
        [process.client]
        command = "sh"
        args = ["-c", "echo client >> {{dir}}/journal; exec sleep 1000"]
        depends_on = {{ server = "ready" }}
        "#
    ))
    .await;
    let snap = wait_state(&rig.handle, "server", ProcessState::Starting, 10).await;
    assert_eq!(snap.processes["client"].state, ProcessState::Pending);
    assert!(!snap.processes["server"].ready);
    let snap = wait_state(&rig.handle, "client", ProcessState::Running, 20).await;
    assert_eq!(snap.processes["server"].state, ProcessState::Ready);
    eventually(5, "client line", || lines(&rig.path("journal")).len() == 2).await;
    assert_eq!(lines(&rig.path("journal")), vec!["listening", "client"]);
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_a_dependency_restarts_its_dependants_when_asked() {
    let rig = start(
        r#"
        [process.base]
        command = "sh"
        args = ["-c", "echo base >> {dir}/journal; exec sleep 1000"]
        restart_dependants = true
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        [process.dep]
        command = "sh"
        args = ["-c", "echo dep >> {dir}/journal; exec sleep 1000"]
        depends_on = ["base"]
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        [process.other]
        command = "sh"
        args = ["-c", "echo other >> {dir}/journal; exec sleep 1000"]
        depends_on = ["dep"]
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        "#,
    )
    .await;
    wait_until(&rig.handle, 10, "all running", |s| s.all_ready()).await;
    eventually(5, "3 lines", || lines(&rig.path("journal")).len() == 3).await;
    let before = rig.handle.snapshot();
    rig.handle.restart("base").await.unwrap();
    eventually(10, "6 lines", || lines(&rig.path("journal")).len() == 6).await;
    let snap = wait_until(&rig.handle, 10, "all running again", |s| s.all_ready()).await;
    for name in ["base", "dep", "other"] {
        assert_eq!(snap.processes[name].restarts, 1, "{name}: {snap:#?}");
        assert_ne!(snap.processes[name].pid, before.processes[name].pid);
    }
    // Each ran exactly once more ("started" conditions do not order their first output).
    let mut again = lines(&rig.path("journal"))[3..].to_vec();
    again.sort();
    assert_eq!(again, vec!["base", "dep", "other"]);
    rig.handle.shutdown().await.unwrap();
}
