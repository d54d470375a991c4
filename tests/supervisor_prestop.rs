//! The supervisor's pre-stop hook, with real children: it runs before the stop ladder's
//! first signal, in reverse dependency order, and a hook that hangs is cut off after its
//! timeout so the ladder still runs.

mod supervisor_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlet::supervisor::{self, Hooks, PreStop, ProcessState};
use fleetlet::workload::{ProcessSpec, Workload};
use futures::future::BoxFuture;
use supervisor_common::*;

/// A child that journals `<name> up` and `<name> SIGINT` (then exits) to a shared file.
const JOURNALED: &str = r#"
import signal, sys, time
name, path = sys.argv[1], sys.argv[2]
log = open(path, "a", buffering=1)
def on_int(sig, _frame):
    log.write(name + " SIGINT\n")
    sys.exit(0)
signal.signal(signal.SIGINT, on_int)
log.write(name + " up\n")
while True:
    time.sleep(0.05)
"#;

/// Journals `hook <process>` to the same file; `hang` never finishes.
struct Journal {
    path: PathBuf,
    hang: bool,
    timeout: Duration,
}

impl PreStop for Journal {
    fn pre_stop(
        &self,
        process: &str,
        _spec: &ProcessSpec,
    ) -> Option<BoxFuture<'static, Result<(), String>>> {
        let (path, line, hang) = (self.path.clone(), format!("hook {process}\n"), self.hang);
        Some(Box::pin(async move {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| e.to_string())?;
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(())
        }))
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn manifest(dir: &std::path::Path) -> String {
    format!(
        r#"
        [process.base]
        command = "python3"
        args = ["-c", '''{JOURNALED}''', "base", "{dir}/journal"]
        [process.top]
        command = "python3"
        args = ["-c", '''{JOURNALED}''', "top", "{dir}/journal"]
        depends_on = ["base"]
        "#,
        dir = dir.display()
    )
}

async fn rig(hang: bool, timeout: Duration) -> (tempfile::TempDir, supervisor::Handle, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _telemetry) = services(dir.path());
    let journal = dir.path().join("journal");
    let hooks = Hooks {
        checks: None,
        pre_stop: Some(Arc::new(Journal {
            path: journal.clone(),
            hang,
            timeout,
        })),
    };
    let handle = supervisor::start_with_hooks(&svc, &supervisor::Config::default(), hooks)
        .await
        .unwrap();
    let w = Workload::from_toml_str(&manifest(dir.path()))
        .unwrap()
        .with_root(dir.path());
    handle.apply(w).await.unwrap();
    let j = journal.clone();
    eventually(20, "both children up", move || {
        let l = lines(&j);
        l.contains(&"base up".to_owned()) && l.contains(&"top up".to_owned())
    })
    .await;
    (dir, handle, journal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_hook_runs_before_sigint_in_reverse_dependency_order() {
    let (_dir, handle, journal) = rig(false, Duration::from_secs(5)).await;
    handle.shutdown().await.unwrap();
    let events: Vec<String> = lines(&journal)
        .into_iter()
        .filter(|l| !l.ends_with(" up"))
        .collect();
    assert_eq!(
        events,
        vec!["hook top", "top SIGINT", "hook base", "base SIGINT"],
        "each process gets its hook, then SIGINT; dependants first"
    );
    let log: Vec<String> = handle
        .logs("top", 20)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        log.iter().any(|l| l.contains("pre-stop hook done")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_pre_stop_hook_is_cut_off_and_the_stop_ladder_proceeds() {
    let timeout = Duration::from_millis(400);
    let (_dir, handle, journal) = rig(true, timeout).await;
    let t = Instant::now();
    handle.stop("top").await.unwrap();
    let took = t.elapsed();
    let snap = handle.snapshot();
    assert_eq!(snap.processes["top"].state, ProcessState::Stopped);
    let events: Vec<String> = lines(&journal)
        .into_iter()
        .filter(|l| !l.ends_with(" up"))
        .collect();
    assert_eq!(events, vec!["hook top", "top SIGINT"]);
    assert!(
        took >= timeout,
        "the supervisor waited for the hook: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the hook was bounded by its timeout: {took:?}"
    );
    let log: Vec<String> = handle
        .logs("top", 20)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        log.iter()
            .any(|l| l.contains("pre-stop hook timed out after 400ms")),
        "{log:?}"
    );
    handle.shutdown().await.unwrap();
}
