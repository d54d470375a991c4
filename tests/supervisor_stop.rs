//! The stop ladder and process sessions, with real children that ignore signals, fork, and
//! move their children to other groups and sessions.

mod supervisor_common;

use std::time::Duration;

use fleetlet::supervisor::ProcessState;
use supervisor_common::*;

const IGNORE_INT: &str = r#"
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def note(sig, _frame):
    log.write(signal.Signals(sig).name + "\n")
signal.signal(signal.SIGINT, note)
if len(sys.argv) > 2:
    signal.signal(signal.SIGTERM, note)
log.write("up\n")
while True:
    time.sleep(0.05)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigint_is_escalated_to_sigterm() {
    let rig = start(&format!(
        r#"
        [process.stubborn]
        command = "python3"
        args = ["-c", '''{IGNORE_INT}''', "{{dir}}/signals"]
        stop = [{{ signal = "SIGINT", timeout = "400ms" }}, {{ signal = "SIGTERM", timeout = "2s" }}]
        "#
    ))
    .await;
    let file = rig.path("signals");
    eventually(10, "child up", || lines(&file).contains(&"up".to_owned())).await;
    let t = std::time::Instant::now();
    rig.handle.stop("stubborn").await.unwrap();
    let took = t.elapsed();
    let snap = rig.handle.snapshot();
    let p = &snap.processes["stubborn"];
    assert_eq!(p.state, ProcessState::Stopped);
    assert_eq!(
        lines(&file),
        vec!["up", "SIGINT"],
        "SIGINT was delivered and ignored"
    );
    assert_eq!(
        p.last_exit
            .as_ref()
            .and_then(|e| e.signal.clone())
            .as_deref(),
        Some("SIGTERM")
    );
    // It waited out the SIGINT step before escalating.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigint_and_sigterm_is_killed() {
    let rig = start(&format!(
        r#"
        [process.deaf]
        command = "python3"
        args = ["-c", '''{IGNORE_INT}''', "{{dir}}/signals", "ignore-term"]
        stop = [{{ signal = "SIGINT", timeout = "300ms" }}, {{ signal = "SIGTERM", timeout = "300ms" }}]
        "#
    ))
    .await;
    let file = rig.path("signals");
    eventually(10, "child up", || lines(&file).contains(&"up".to_owned())).await;
    let pid = rig.handle.snapshot().processes["deaf"].pid.unwrap() as i32;
    rig.handle.stop("deaf").await.unwrap();
    let snap = rig.handle.snapshot();
    let p = &snap.processes["deaf"];
    assert_eq!(lines(&file), vec!["up", "SIGINT", "SIGTERM"]);
    assert_eq!(
        p.last_exit
            .as_ref()
            .and_then(|e| e.signal.clone())
            .as_deref(),
        Some("SIGKILL")
    );
    assert!(!alive(pid));
    let logs = rig.handle.logs("deaf", 5).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.text.contains("SIGINT → SIGTERM → SIGKILL")),
        "{logs:?}"
    );
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_are_gone_after_stop() {
    // A shell that forks a sleeping child, a grandchild via a subshell, and a grandchild
    // that ignores SIGINT and SIGTERM: only SIGKILL to the whole group gets it.
    let rig = start(
        r#"
        [process.tree]
        command = "sh"
        args = ["-c", "sleep 1000 & (sleep 1001 &) ; (trap '' INT TERM; sleep 1002) & echo forked > {dir}/ready; wait"]
        stop = [{ signal = "SIGINT", timeout = "300ms" }, { signal = "SIGTERM", timeout = "300ms" }]
        "#,
    )
    .await;
    eventually(10, "forks", || rig.path("ready").exists()).await;
    let pgid = rig.handle.snapshot().processes["tree"].pid.unwrap() as i32;
    eventually(10, "4+ members", || group(pgid).len() >= 4).await;
    let members = group(pgid);
    rig.handle.stop("tree").await.unwrap();
    for pid in &members {
        assert!(!alive(*pid), "group member {pid} survived the stop");
    }
    assert!(group(pgid).is_empty());
    rig.handle.shutdown().await.unwrap();
}

/// Forks a child that forks two grandchildren: one moves to a process group of its own
/// (`setpgid(0, 0)`), one to a session of its own (`setsid()`); each writes its pid to
/// `<dir>/<how>` once it has moved. Everyone then sleeps.
const ESCAPERS: &str = r#"
import os, sys, time
d = sys.argv[1]
def grandchild(how):
    if os.fork() == 0:
        if how == "setpgid":
            os.setpgid(0, 0)
        else:
            os.setsid()
        with open(f"{d}/{how}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(f"{d}/{how}.tmp", f"{d}/{how}")
        while True:
            time.sleep(1)
if os.fork() == 0:
    with open(f"{d}/child", "w") as f:
        f.write(str(os.getpid()))
    grandchild("setpgid")
    grandchild("setsid")
    while True:
        time.sleep(1)
while True:
    time.sleep(1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_leads_its_own_session_and_group() {
    let rig = start("[process.a]\ncommand = \"sleep\"\nargs = [\"100\"]\n").await;
    wait_state(&rig.handle, "a", ProcessState::Running, 10).await;
    let pid = rig.handle.snapshot().processes["a"].pid.unwrap() as i32;
    let (pgrp, sid) = pgrp_and_session(pid).unwrap();
    assert_eq!(
        (pgrp, sid),
        (pid, pid),
        "pid {pid}: group {pgrp}, session {sid}"
    );
    let me = std::process::id() as i32;
    assert_ne!(
        pgrp_and_session(me).unwrap().1,
        sid,
        "shares the agent's session"
    );
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_that_left_the_group_or_the_session_are_gone_after_stop() {
    let rig = start(&format!(
        r#"
        [process.escapers]
        command = "python3"
        args = ["-c", '''{ESCAPERS}''', "{{dir}}"]
        stop = [{{ signal = "SIGTERM", timeout = "2s" }}]
        "#
    ))
    .await;
    let (child, pgid_escaper, sid_escaper) =
        (rig.path("child"), rig.path("setpgid"), rig.path("setsid"));
    eventually(20, "grandchildren moved", || {
        pid_in(&child).is_some()
            && pid_in(&pgid_escaper).is_some()
            && pid_in(&sid_escaper).is_some()
    })
    .await;
    let leader = rig.handle.snapshot().processes["escapers"].pid.unwrap() as i32;
    let (c, g1, g2) = (
        pid_in(&child).unwrap(),
        pid_in(&pgid_escaper).unwrap(),
        pid_in(&sid_escaper).unwrap(),
    );
    // The premise: a signal to the leader's group alone would miss both grandchildren.
    assert_eq!(
        pgrp_and_session(g1),
        Some((g1, leader)),
        "setpgid grandchild"
    );
    assert_eq!(pgrp_and_session(g2), Some((g2, g2)), "setsid grandchild");
    assert!(!group(leader).contains(&g1) && !group(leader).contains(&g2));
    rig.handle.stop("escapers").await.unwrap();
    for (what, pid) in [
        ("leader", leader),
        ("child", c),
        ("setpgid grandchild", g1),
        ("setsid grandchild", g2),
    ] {
        assert!(!alive(pid), "{what} {pid} survived the stop");
    }
    assert_eq!(
        rig.handle.snapshot().processes["escapers"].state,
        ProcessState::Stopped
    );
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_exit_takes_a_grandchild_in_another_group_down_before_the_restart() {
    // The leader leaves a child that moved to a group of its own (same session): killpg of
    // the leader's group cannot see it, the session scan must.
    let rig = start(
        r#"
        [process.leaky]
        command = "sh"
        args = ["-c", "echo $$ >> {dir}/leaders; rm -f {dir}/kid; python3 -c 'import os; os.setpgid(0, 0); open(\"{dir}/kid.tmp\", \"w\").write(str(os.getpid())); os.rename(\"{dir}/kid.tmp\", \"{dir}/kid\"); os.execvp(\"sleep\", [\"sleep\", \"1000\"])' & while [ ! -s {dir}/kid ]; do sleep 0.01; done; cat {dir}/kid >> {dir}/kids; echo >> {dir}/kids; exit 1"]
        backoff = { initial = "0s" }
        crash_loop = { max_failures = 0 }
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        "#,
    )
    .await;
    eventually(20, "two runs", || lines(&rig.path("leaders")).len() >= 2).await;
    let first_leader: i32 = lines(&rig.path("leaders"))[0].parse().unwrap();
    let first_kid: i32 = lines(&rig.path("kids"))[0].parse().unwrap();
    assert_ne!(first_kid, first_leader);
    assert!(
        !alive(first_kid),
        "the first run's grandchild {first_kid} outlived its leader into the restart"
    );
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_exit_takes_its_group_down_before_the_restart() {
    // The leader exits, leaving a background child in its group: no second copy may run
    // beside the restarted one.
    let rig = start(
        r#"
        [process.leaky]
        command = "sh"
        args = ["-c", "echo $$ >> {dir}/leaders; sleep 1000 & sleep 0.2; exit 1"]
        backoff = { initial = "0s" }
        crash_loop = { max_failures = 0 }
        stop = [{ signal = "SIGTERM", timeout = "1s" }]
        "#,
    )
    .await;
    eventually(10, "two runs", || lines(&rig.path("leaders")).len() >= 2).await;
    let first: i32 = lines(&rig.path("leaders"))[0].parse().unwrap();
    assert!(
        group(first).is_empty(),
        "first run's group still has members"
    );
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_the_whole_group_and_resume_thaws_it() {
    let rig = start(
        r#"
        [process.p]
        command = "sh"
        args = ["-c", "sleep 1000 & while :; do sleep 0.05; done"]
        "#,
    )
    .await;
    wait_state(&rig.handle, "p", ProcessState::Running, 10).await;
    let pgid = rig.handle.snapshot().processes["p"].pid.unwrap() as i32;
    eventually(10, "2 members", || group(pgid).len() >= 2).await;
    let state_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    rig.handle.pause("p").await.unwrap();
    assert_eq!(
        rig.handle.snapshot().processes["p"].state,
        ProcessState::Paused
    );
    eventually(5, "all stopped", || {
        group(pgid).iter().all(|m| state_of(*m) == "T")
    })
    .await;
    rig.handle.resume("p").await.unwrap();
    assert_eq!(
        rig.handle.snapshot().processes["p"].state,
        ProcessState::Running
    );
    eventually(5, "all thawed", || {
        group(pgid).iter().all(|m| state_of(*m) != "T")
    })
    .await;
    // Pausing a stopped process is refused with the state named.
    rig.handle.stop("p").await.unwrap();
    let e = rig.handle.pause("p").await.unwrap_err();
    assert!(e.to_string().contains("while it is stopped"), "{e}");
    // An operator start brings it back.
    rig.handle.start("p").await.unwrap();
    wait_state(&rig.handle, "p", ProcessState::Running, 10).await;
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_process_is_a_clear_error() {
    let rig = start("[process.a]\ncommand = \"sleep\"\nargs = [\"100\"]\n").await;
    let e = rig.handle.restart("nope").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no process named \"nope\" in the current workload"
    );
    rig.handle.shutdown().await.unwrap();
}
