//! The signing workflow of docs/bundles.md through the real `fleetlet` binary: three
//! bundle keys with threshold 2, sign with two of three, verify, extract, rotate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn fleetlet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetlet"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = fleetlet(dir, args);
    assert!(
        o.status.success(),
        "fleetlet {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let o = fleetlet(dir, args);
    assert!(
        !o.status.success(),
        "fleetlet {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn two_of_three_signing_workflow_works_end_to_end_through_the_binary() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for k in ["root-1", "release-1", "release-2", "release-3"] {
        ok(d, &["keys", "gen", "--out", &format!("keys/{k}")]);
    }
    let mode = std::fs::metadata(d.join("keys/release-1.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private key must be 0600");
    assert!(fails(d, &["keys", "gen", "--out", "keys/release-1"]).contains("refusing to overwrite"));

    ok(
        d,
        &[
            "keys",
            "root",
            "init",
            "--root-key",
            "keys/root-1.pub",
            "--bundle-key",
            "keys/release-1.pub",
            "--bundle-key",
            "keys/release-2.pub",
            "--bundle-key",
            "keys/release-3.pub",
            "--bundle-threshold",
            "2",
            "--out",
            "root.json",
        ],
    );
    // Unsigned root is not trusted.
    assert!(fails(d, &["keys", "root", "verify", "root.json"]).contains("signatures"));
    ok(
        d,
        &[
            "keys",
            "root",
            "sign",
            "root.json",
            "--key",
            "keys/root-1.key",
        ],
    );
    assert!(ok(d, &["keys", "root", "verify", "root.json"]).contains("bundle 2-of-3"));

    std::fs::create_dir_all(d.join("app/bin")).unwrap();
    std::fs::write(d.join("app/bin/nav"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        d.join("workload.toml"),
        "[process.nav]\ncommand = \"bin/nav\"\n",
    )
    .unwrap();
    ok(
        d,
        &[
            "bundle",
            "pack",
            "app",
            "--manifest",
            "workload.toml",
            "--name",
            "nav",
            "--version",
            "1.0.0",
            "--security-version",
            "2",
            "--arch",
            "aarch64",
            "--key",
            "keys/release-1.key",
            "--out",
            "nav.bundle",
        ],
    );
    let err = fails(
        d,
        &[
            "bundle",
            "verify",
            "nav.bundle",
            "--root",
            "root.json",
            "--arch",
            "aarch64",
        ],
    );
    assert!(
        err.contains("1 valid bundle signatures, the threshold is 2"),
        "{err}"
    );

    ok(
        d,
        &[
            "bundle",
            "sign",
            "nav.bundle",
            "--key",
            "keys/release-3.key",
        ],
    );
    assert!(fails(
        d,
        &[
            "bundle",
            "sign",
            "nav.bundle",
            "--key",
            "keys/release-3.key"
        ]
    )
    .contains("more than once"));
    let out = ok(
        d,
        &[
            "bundle",
            "verify",
            "nav.bundle",
            "--root",
            "root.json",
            "--arch",
            "aarch64",
            "--extract-to",
            "installed",
        ],
    );
    assert!(out.starts_with("OK nav@1.0.0"), "{out}");
    assert_eq!(
        std::fs::read_to_string(d.join("installed/bin/nav")).unwrap(),
        "#!/bin/sh\n"
    );

    let err = fails(
        d,
        &[
            "bundle",
            "verify",
            "nav.bundle",
            "--root",
            "root.json",
            "--arch",
            "x86_64",
        ],
    );
    assert!(err.contains("targets architectures"), "{err}");
    let err = fails(
        d,
        &[
            "bundle",
            "verify",
            "nav.bundle",
            "--root",
            "root.json",
            "--arch",
            "aarch64",
            "--committed-security-version",
            "3",
        ],
    );
    assert!(err.contains("downgrade refused"), "{err}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(d, &["bundle", "inspect", "nav.bundle", "--json"])).unwrap();
    assert_eq!(json["manifest"]["name"], "nav");
    assert_eq!(json["signatures"].as_array().unwrap().len(), 2);
    assert!(ok(d, &["bundle", "inspect", "nav.bundle"]).contains("NOT verified"));

    // Rotate: new root drops release-1; signed by the old root key and the new one.
    ok(d, &["keys", "gen", "--out", "keys/root-2"]);
    ok(
        d,
        &[
            "keys",
            "root",
            "rotate",
            "--from",
            "root.json",
            "--root-key",
            "keys/root-2.pub",
            "--bundle-key",
            "keys/release-2.pub",
            "--bundle-key",
            "keys/release-3.pub",
            "--bundle-threshold",
            "2",
            "--out",
            "root-2.json",
        ],
    );
    ok(
        d,
        &[
            "keys",
            "root",
            "sign",
            "root-2.json",
            "--key",
            "keys/root-2.key",
        ],
    );
    let err = fails(d, &["keys", "root", "verify", "root.json", "root-2.json"]);
    assert!(
        err.contains("not signed by a threshold of the current root"),
        "{err}"
    );
    ok(
        d,
        &[
            "keys",
            "root",
            "sign",
            "root-2.json",
            "--key",
            "keys/root-1.key",
        ],
    );
    let out = ok(d, &["keys", "root", "verify", "root.json", "root-2.json"]);
    assert!(
        out.contains("root version 2") && out.contains("revoked"),
        "{out}"
    );
    // The bundle signed by release-1 + release-3 no longer meets 2-of-2 under root v2.
    let err = fails(
        d,
        &[
            "bundle",
            "verify",
            "nav.bundle",
            "--root",
            "root.json",
            "--root",
            "root-2.json",
            "--arch",
            "aarch64",
        ],
    );
    assert!(err.contains("revoked by root version 2"), "{err}");
}

#[test]
fn private_key_readable_by_others_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &["keys", "gen", "--out", "k"]);
    std::fs::set_permissions(d.join("k.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(d.join("app")).unwrap();
    std::fs::write(d.join("w.toml"), "").unwrap();
    let err = fails(
        d,
        &[
            "bundle",
            "pack",
            "app",
            "--manifest",
            "w.toml",
            "--name",
            "x",
            "--version",
            "1.0.0",
            "--key",
            "k.key",
        ],
    );
    assert!(err.contains("too open"), "{err}");
}

#[test]
fn bundle_help_shows_the_signing_workflow() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(t.path(), &["bundle", "--help"]);
    assert!(
        out.contains("Signing workflow") && out.contains("fleetlet bundle sign"),
        "{out}"
    );
    let out = ok(t.path(), &["keys", "--help"]);
    assert!(out.contains("keys root init"), "{out}");
}
