//! The example workloads in edge-manifests/examples parse, and the demo runs to all-ready.

mod supervisor_common;

use std::path::Path;

use fleetlet::workload::Workload;
use supervisor_common::*;

#[test]
fn every_example_workload_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("workload.toml")
        {
            Workload::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example workload found in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_workload_runs_to_all_ready_and_stops_cleanly() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/examples/demo-workload.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rig = start(&text).await;
    let snap = wait_until(&rig.handle, 30, "demo all ready", |s| s.all_ready()).await;
    assert_eq!(
        snap.processes["params"].state,
        fleetlet::supervisor::ProcessState::Exited
    );
    assert_eq!(
        snap.processes["sensor"].state,
        fleetlet::supervisor::ProcessState::Ready
    );
    eventually(10, "fusion output", || {
        rig.handle
            .logs("fusion", 10)
            .map(|l| l.iter().any(|l| l.text.starts_with("fused pose")))
            .unwrap_or(false)
    })
    .await;
    rig.handle.shutdown().await.unwrap();
    let logs = rig.handle.logs("fusion", 10).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.text.contains("SIGINT, shutting down cleanly")),
        "{logs:?}"
    );
}

#[test]
fn dev_config_runs_the_demo_workload() {
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/config/dev.toml");
    let cfg = fleetlet::config::Config::load(&dev, None).unwrap();
    assert!(cfg.supervisor.allow_unsigned_workloads);
    let w = cfg
        .supervisor
        .workload
        .expect("dev config names a workload");
    assert!(w.ends_with("demo-workload.toml"), "{}", w.display());
    let parsed = Workload::from_file(&w).unwrap();
    assert!(parsed.processes.contains_key("sensor"));
}
