//! Output capture: ring buffer, follow, and the rate limit under a log storm.

mod supervisor_common;

use std::time::{Duration, Instant};

use fleetlet::supervisor::{self, LogStream, ProcessState};
use supervisor_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_lines_are_kept_per_process_and_can_be_followed() {
    let rig = start(
        r#"
        [process.talker]
        command = "sh"
        args = ["-c", "echo one; echo two >&2; echo three; while [ ! -f {dir}/go ]; do sleep 0.02; done; echo four; exec sleep 1000"]
        "#,
    )
    .await;
    eventually(5, "3 lines", || {
        rig.handle
            .logs("talker", 10)
            .map(|l| l.len() >= 3)
            .unwrap_or(false)
    })
    .await;
    let mut follow = rig.handle.follow("talker").unwrap();
    let tail = rig.handle.logs("talker", 2).unwrap();
    let all = rig.handle.logs("talker", 100).unwrap();
    // The tail is the newest two lines; stdout and stderr are separate pipes, so "two"
    // (stderr) and "three" (stdout) may be captured in either order.
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[..], all[all.len() - 2..]);
    assert!(tail.iter().any(|l| l.text == "three"), "{tail:?}");
    let two = all.iter().find(|l| l.text == "two").unwrap();
    assert_eq!(two.stream, LogStream::Stderr);
    std::fs::write(rig.path("go"), "").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), follow.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.text, "four");
    assert!(rig.handle.logs("nobody", 1).is_err());
    rig.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rate_limit_holds_under_a_process_printing_as_fast_as_it_can() {
    let cfg = supervisor::Config {
        log_rate: 100,
        log_burst: 200,
        log_lines: 100_000,
        ..Default::default()
    };
    // Prints as fast as it can for 1.5 s, then records how many lines it wrote.
    let flood = "import sys, time\nn = 0\nend = time.time() + 1.5\nw = sys.stdout.write\nwhile time.time() < end:\n    for _ in range(1000):\n        w('storm line %d\\n' % n)\n        n += 1\nsys.stdout.flush()\nopen(sys.argv[1], 'w').write(str(n))\n";
    let started = Instant::now();
    let rig = start_with(
        &format!(
            r#"
            [process.storm]
            command = "python3"
            args = ["-c", '''{flood}''', "{{dir}}/written"]
            restart = "never"
            "#
        ),
        cfg,
        None,
    )
    .await;
    let snap = wait_state(&rig.handle, "storm", ProcessState::Exited, 30).await;
    let elapsed = started.elapsed().as_secs_f64();
    let written: u64 = std::fs::read_to_string(rig.path("written"))
        .unwrap()
        .parse()
        .unwrap();
    let kept = rig
        .handle
        .logs("storm", 100_000)
        .unwrap()
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .count() as u64;
    let suppressed = snap.processes["storm"].log_suppressed;
    // Token bucket bound: burst + rate × elapsed (+1 for rounding).
    let bound = 200 + (100.0 * elapsed).ceil() as u64 + 1;
    assert!(
        kept <= bound,
        "kept {kept} lines, bound {bound} (elapsed {elapsed:.2}s)"
    );
    assert!(kept >= 200, "the burst was not kept: {kept}");
    assert_eq!(
        kept + suppressed,
        written,
        "every line is either kept or counted"
    );
    // The child was never blocked on its pipe: it wrote far more than was kept.
    assert!(written > 20 * kept, "written {written}, kept {kept}");
    let markers = rig
        .handle
        .logs("storm", 100_000)
        .unwrap()
        .into_iter()
        .filter(|l| l.stream == LogStream::Supervisor && l.text.contains("suppressed"))
        .count();
    assert!(markers >= 1, "no suppression marker");
    rig.handle.shutdown().await.unwrap();
}
