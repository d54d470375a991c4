//! Every file under edge-manifests/ parses: YAML documents, TOML configs (through the real
//! loader) and the systemd unit's essential settings.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn all() -> Vec<PathBuf> {
    let mut v = Vec::new();
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests"),
        &mut v,
    );
    v
}

#[test]
fn every_yaml_manifest_parses_and_has_kind_and_api_version() {
    let mut n = 0;
    for p in all()
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
    {
        let text = std::fs::read_to_string(&p).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(
                v.get("kind").is_some() && v.get("apiVersion").is_some(),
                "{}: document without kind/apiVersion",
                p.display()
            );
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "expected the k3s namespace, configmap and daemonset"
    );
}

#[test]
fn every_toml_file_parses() {
    for p in all()
        .into_iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
    {
        let text = std::fs::read_to_string(&p).unwrap();
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

#[test]
fn systemd_unit_uses_notify_watchdog_and_outlasts_the_stop_ladder() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-manifests/systemd/fleetlet.service"),
    )
    .unwrap();
    let get = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(get("Type"), "notify");
    let watchdog = humantime::parse_duration(get("WatchdogSec")).unwrap();
    assert!(watchdog.as_secs() >= 2);
    let stop = humantime::parse_duration(get("TimeoutStopSec")).unwrap();
    // The agent's shutdown deadline (which covers the SIGINT/SIGTERM/SIGKILL ladder) must fit.
    assert!(
        stop > fleetlet::config::DEFAULT_SHUTDOWN_TIMEOUT,
        "TimeoutStopSec {stop:?} must exceed agent.shutdown_timeout"
    );
}
