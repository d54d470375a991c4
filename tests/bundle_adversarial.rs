//! Adversarial corpus: every malicious or broken bundle is built here, must be refused
//! with its own error variant, and must leave no file behind (neither a partial tree at
//! the target nor anything written outside it).

mod bundle_support;

use std::io::Cursor;
use std::time::SystemTime;

use bundle_support::*;
use fleetlet::bundle::root::TrustedRoot;
use fleetlet::bundle::{self, verify, verify_and_extract, Config, DeviceIdentity, Error};

/// Runs verification with extraction into a fresh scratch area, asserts nothing was left
/// behind, and returns the refusal.
fn refuse_with(
    bytes: &[u8],
    root: &TrustedRoot,
    dev: &DeviceIdentity,
    committed: u64,
    now: SystemTime,
    cfg: &Config,
) -> Error {
    let s = Scratch::new();
    let r = verify_and_extract(
        Cursor::new(bytes),
        root,
        dev,
        committed,
        now,
        &s.target(),
        cfg,
    );
    let e = match r {
        Ok(v) => panic!("accepted {}", v.id),
        Err(e) => e,
    };
    s.assert_clean();
    // The verify-only path must refuse too (for payload-independent reasons, identically).
    assert!(
        verify(Cursor::new(bytes), root, dev, committed, now).is_err() || is_extraction_only(&e)
    );
    e
}

fn is_extraction_only(e: &Error) -> bool {
    matches!(
        e,
        Error::UnsafePath { .. }
            | Error::LinkEscape { .. }
            | Error::PathThroughSymlink { .. }
            | Error::SpecialFile { .. }
            | Error::SetuidEntry { .. }
            | Error::UnpackedSizeExceeded { .. }
            | Error::TooManyEntries { .. }
            | Error::DuplicateEntry { .. }
    )
}

fn refuse(bytes: &[u8]) -> Error {
    refuse_with(
        bytes,
        &standard_root(),
        &device(),
        0,
        now(),
        &Config::default(),
    )
}

/// Offset of the payload in a bundle (header length).
fn payload_offset(b: &[u8]) -> usize {
    let m = u32::from_be_bytes(b[12..16].try_into().unwrap()) as usize;
    let s = u32::from_be_bytes(b[16 + m..20 + m].try_into().unwrap()) as usize;
    20 + m + s
}

#[test]
fn valid_bundle_is_accepted_and_extracted_with_its_tree() {
    let s = Scratch::new();
    let v = verify_and_extract(
        Cursor::new(good_bundle()),
        &standard_root(),
        &device(),
        5,
        now(),
        &s.target(),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(v.id.to_string(), "nav@1.2.0");
    assert_eq!(v.signers.len(), 2);
    assert_eq!(
        Scratch::listing(&s.target()),
        vec!["bin", "bin/nav", "params.yaml", "start"]
    );
    assert_eq!(
        std::fs::read(s.target().join("start")).unwrap(),
        b"#!/bin/sh\necho nav\n"
    );
    // Only the target remains in the parent: the staging dir is gone.
    assert_eq!(
        Scratch::listing(&s.parent()).first().map(String::as_str),
        Some("app")
    );
    assert!(Scratch::listing(&s.parent())
        .iter()
        .all(|p| p.starts_with("app")));
}

#[test]
fn wrong_private_key_claiming_a_trusted_key_id_is_bad_signature() {
    let o = opts();
    let payload = good_tar().finish();
    let m = o.manifest(payload_info(&payload, 31, 4));
    let bytes = m.to_bytes().unwrap();
    let forged = key(99).sign_as(&bytes, key(11).public().keyid);
    let good = key(12).sign(&bytes);
    let b = fleetlet::bundle::pack::assemble(&bytes, &[forged, good], &payload).unwrap();
    assert!(
        matches!(refuse(&b), Error::BadSignature { keyid, .. } if keyid == key(11).public().keyid)
    );
}

#[test]
fn unknown_key_id_is_refused_as_unknown_key() {
    let payload = good_tar().finish();
    let b = bundle_with(&opts(), &payload, 31, 4, &[&key(11), &key(77)]);
    assert!(
        matches!(refuse(&b), Error::UnknownKey { keyid, valid: 1, threshold: 2, .. } if keyid == key(77).public().keyid)
    );
}

#[test]
fn root_key_is_not_authorised_to_sign_bundles() {
    let payload = good_tar().finish();
    let b = bundle_with(&opts(), &payload, 31, 4, &[&key(11), &key(1)]);
    assert!(
        matches!(refuse(&b), Error::KeyNotAuthorized { keyid, .. } if keyid == key(1).public().keyid)
    );
}

#[test]
fn one_flipped_bit_in_the_payload_is_a_digest_mismatch() {
    let mut b = good_bundle();
    let off = payload_offset(&b);
    let mid = off + (b.len() - off) / 2;
    b[mid] ^= 0x10;
    assert!(matches!(refuse(&b), Error::DigestMismatch { .. }));
}

#[test]
fn one_flipped_bit_in_the_manifest_is_a_bad_signature() {
    let mut b = good_bundle();
    // Flip a bit inside the "name" value ("nav" -> "naw"): still valid JSON.
    let pos = b
        .windows(12)
        .position(|w| w == b"\"name\":\"nav\"")
        .unwrap()
        + 10;
    b[pos] ^= 0x01;
    assert!(matches!(
        refuse(&b),
        Error::BadSignature {
            what: "bundle manifest",
            ..
        }
    ));
}

#[test]
fn signature_copied_from_another_bundle_is_a_bad_signature() {
    let other = {
        let mut o = opts();
        o.version = semver::Version::new(9, 9, 9);
        bundle_with(&o, &good_tar().finish(), 31, 4, &[&key(11), &key(12)])
    };
    let victim = good_bundle();
    // Replace the victim's signature block with the other bundle's.
    let (vo, oo) = (payload_offset(&victim), payload_offset(&other));
    let vm = u32::from_be_bytes(victim[12..16].try_into().unwrap()) as usize;
    let om = u32::from_be_bytes(other[12..16].try_into().unwrap()) as usize;
    let mut b = victim[..16 + vm].to_vec();
    b.extend_from_slice(&other[16 + om..oo]);
    b.extend_from_slice(&victim[vo..]);
    assert!(matches!(refuse(&b), Error::BadSignature { .. }));
}

#[test]
fn truncated_file_is_refused_as_truncated_in_payload_and_in_header() {
    let b = good_bundle();
    assert!(matches!(
        refuse(&b[..b.len() - 7]),
        Error::Truncated {
            section: "payload",
            ..
        }
    ));
    assert!(matches!(
        refuse(&b[..40]),
        Error::Truncated {
            section: "manifest",
            ..
        }
    ));
    assert!(matches!(
        refuse(&b[..5]),
        Error::Truncated {
            section: "header",
            ..
        }
    ));
}

#[test]
fn trailing_data_after_the_payload_is_a_size_mismatch() {
    let mut b = good_bundle();
    b.extend_from_slice(b"extra");
    assert!(matches!(refuse(&b), Error::SizeMismatch { .. }));
}

#[test]
fn payload_swapped_for_another_valid_one_is_a_digest_mismatch() {
    let mk = |c: u8| {
        let mut t = RawTar::default();
        t.file("data.bin", 0o644, &[c; 4096]);
        t
    };
    let (a, b2) = (mk(b'A'), mk(b'B'));
    let (pa, pb) = (a.finish(), b2.finish());
    assert_eq!(pa.len(), pb.len(), "precondition: same compressed size");
    let bundle_a = tar_bundle(&a);
    let mut swapped = bundle_a[..payload_offset(&bundle_a)].to_vec();
    swapped.extend_from_slice(&pb);
    assert!(matches!(refuse(&swapped), Error::DigestMismatch { .. }));
}

#[test]
fn absolute_path_entry_is_refused() {
    let mut t = RawTar::default();
    t.file("/tmp/fleetlet-evil", 0o644, b"x");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::UnsafePath {
            reason: "absolute path",
            ..
        }
    ));
    assert!(!std::path::Path::new("/tmp/fleetlet-evil").exists());
}

#[test]
fn dotdot_escape_entry_is_refused() {
    let mut t = RawTar::default();
    t.file("ok.txt", 0o644, b"x")
        .file("../../outside/evil", 0o644, b"x");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::UnsafePath {
            reason: "contains a `..` component",
            ..
        }
    ));
}

#[test]
fn symlink_escape_then_write_through_is_refused_before_writing() {
    let mut t = RawTar::default();
    // From parent/.app.staging-x/, "../../outside" is the scratch `outside/` directory.
    t.symlink("evil", "../../outside")
        .file("evil/pwned", 0o644, b"owned");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::LinkEscape {
            kind: "symlink",
            ..
        }
    ));
}

#[test]
fn absolute_symlink_is_refused() {
    let mut t = RawTar::default();
    t.symlink("etc", "/etc");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::LinkEscape {
            kind: "symlink",
            ..
        }
    ));
}

#[test]
fn writing_through_an_internal_symlink_is_refused() {
    let mut t = RawTar::default();
    t.dir("real/")
        .symlink("alias", "real")
        .file("alias/file", 0o644, b"x");
    assert!(
        matches!(refuse(&tar_bundle(&t)), Error::PathThroughSymlink { link, .. } if link == "alias")
    );
}

#[test]
fn symlink_chain_that_escapes_only_once_complete_is_refused() {
    let mut t = RawTar::default();
    // m -> a/l/.. looks inside while a/l does not exist; a/l -> .. then makes m the
    // parent of the root. Caught by the final re-resolution of every link.
    t.symlink("m", "a/l/..").dir("a/").symlink("a/l", "..");
    assert!(matches!(refuse(&tar_bundle(&t)), Error::LinkEscape { path, .. } if path == "m"));
}

#[test]
fn hardlink_escape_is_refused() {
    let mut t = RawTar::default();
    t.hardlink("passwd", "../../../etc/passwd");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::LinkEscape {
            kind: "hardlink",
            ..
        }
    ));
    let mut t = RawTar::default();
    t.hardlink("passwd", "/etc/passwd");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::LinkEscape {
            kind: "hardlink",
            ..
        }
    ));
}

#[test]
fn hardlink_through_a_symlink_is_refused() {
    let mut t = RawTar::default();
    t.symlink("up", ".").hardlink("x", "up/y");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::LinkEscape {
            kind: "hardlink",
            ..
        }
    ));
}

#[test]
fn device_node_and_fifo_entries_are_refused() {
    let mut t = RawTar::default();
    t.special("dev/sda", b'4');
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::SpecialFile {
            kind: "block device",
            ..
        }
    ));
    let mut t = RawTar::default();
    t.special("tty", b'3');
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::SpecialFile {
            kind: "character device",
            ..
        }
    ));
    let mut t = RawTar::default();
    t.special("pipe", b'6');
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::SpecialFile { kind: "fifo", .. }
    ));
}

#[test]
fn setuid_and_setgid_files_are_refused() {
    let mut t = RawTar::default();
    t.file("bin/su", 0o4755, b"x");
    assert!(matches!(
        refuse(&tar_bundle(&t)),
        Error::SetuidEntry { mode: 0o4755, .. }
    ));
    let mut t = RawTar::default();
    t.file("bin/sg", 0o2755, b"x");
    assert!(matches!(refuse(&tar_bundle(&t)), Error::SetuidEntry { .. }));
}

#[test]
fn compression_bomb_declared_small_stops_at_the_declared_size() {
    let mut t = RawTar::default();
    t.file("small", 0o644, b"hello")
        .zeros("huge", 64 * 1024 * 1024);
    let payload = t.finish();
    assert!(
        payload.len() < 64 * 1024,
        "bomb compresses well: {}",
        payload.len()
    );
    let b = bundle_with(&opts(), &payload, 5, 2, &[&key(11), &key(12)]);
    assert!(matches!(
        refuse(&b),
        Error::UnpackedSizeExceeded {
            limit: 5,
            limit_name: "declared unpacked_size"
        }
    ));
}

#[test]
fn configured_cap_applies_even_when_the_manifest_declares_more() {
    let mut t = RawTar::default();
    t.zeros("big", 2 * 1024 * 1024);
    let b = tar_bundle(&t);
    let cfg = Config {
        max_unpacked_bytes: 1024 * 1024,
        max_entries: 10,
    };
    let e = refuse_with(&b, &standard_root(), &device(), 0, now(), &cfg);
    assert!(matches!(
        e,
        Error::UnpackedSizeExceeded {
            limit: 1048576,
            limit_name: "bundle.max_unpacked_bytes"
        }
    ));
}

#[test]
fn entry_count_bomb_stops_at_the_declared_count_and_at_the_cap() {
    let mut t = RawTar::default();
    for i in 0..500 {
        t.dir(&format!("d{i}/"));
    }
    let b = bundle_with(&opts(), &t.finish(), 0, 10, &[&key(11), &key(12)]);
    assert!(matches!(
        refuse(&b),
        Error::TooManyEntries {
            limit: 10,
            limit_name: "declared entries"
        }
    ));
    let b = tar_bundle(&t);
    let cfg = Config {
        max_entries: 100,
        ..Config::default()
    };
    let e = refuse_with(&b, &standard_root(), &device(), 0, now(), &cfg);
    assert!(matches!(
        e,
        Error::TooManyEntries {
            limit: 100,
            limit_name: "bundle.max_entries"
        }
    ));
}

#[test]
fn duplicate_entry_replacing_a_file_is_refused() {
    let mut t = RawTar::default();
    t.file("a", 0o644, b"1").symlink("a", "/etc/passwd");
    // The symlink is refused first as an escape; a benign duplicate is refused as such.
    assert!(matches!(refuse(&tar_bundle(&t)), Error::LinkEscape { .. }));
    let mut t = RawTar::default();
    t.file("a", 0o644, b"1").file("a", 0o644, b"2");
    assert!(matches!(refuse(&tar_bundle(&t)), Error::DuplicateEntry { path } if path == "a"));
}

#[test]
fn downgrade_below_committed_security_version_is_refused() {
    let e = refuse_with(
        &good_bundle(),
        &standard_root(),
        &device(),
        6,
        now(),
        &Config::default(),
    );
    assert!(matches!(
        e,
        Error::Downgrade {
            found: 5,
            committed: 6,
            ..
        }
    ));
}

#[test]
fn downgrade_override_needs_the_override_role_signature() {
    let mut o = opts();
    o.allow_downgrade = true;
    let p = good_tar().finish();
    let without = bundle_with(&o, &p, 31, 4, &[&key(11), &key(12)]);
    let e = refuse_with(
        &without,
        &standard_root(),
        &device(),
        6,
        now(),
        &Config::default(),
    );
    assert!(matches!(e, Error::OverrideNotAuthorized { .. }));
    let with = bundle_with(&o, &p, 31, 4, &[&key(11), &key(12), &key(21)]);
    let v = verify(Cursor::new(with), &standard_root(), &device(), 6, now()).unwrap();
    assert!(v.manifest.allow_downgrade);
}

#[test]
fn expired_manifest_is_refused() {
    let e = refuse_with(
        &good_bundle(),
        &standard_root(),
        &device(),
        0,
        now() + 31 * DAY,
        &Config::default(),
    );
    assert!(matches!(e, Error::ManifestExpired { .. }));
}

#[test]
fn expired_root_is_refused() {
    let r = key(1);
    let (b1, b2) = (key(11), key(12));
    let f = root_file(1, &[&r], 1, &[&b1, &b2], 2, &[], now() - DAY, &[&r]);
    let root = TrustedRoot::anchor(&f).unwrap();
    let e = refuse_with(
        &good_bundle(),
        &root,
        &device(),
        0,
        now(),
        &Config::default(),
    );
    assert!(matches!(e, Error::RootExpired { version: 1, .. }));
}

#[test]
fn wrong_arch_model_or_group_is_refused_before_the_payload() {
    // A bundle whose payload is garbage: target checks must fire before it is read.
    let b = bundle_with(&opts(), b"not zstd at all", 0, 0, &[&key(11), &key(12)]);
    let cfg = Config::default();
    let mut d = device();
    d.arch = "x86_64".into();
    assert!(matches!(
        refuse_with(&b, &standard_root(), &d, 0, now(), &cfg),
        Error::ArchMismatch { device, .. } if device == "x86_64"
    ));
    let mut d = device();
    d.model = "nuc".into();
    assert!(matches!(
        refuse_with(&b, &standard_root(), &d, 0, now(), &cfg),
        Error::ModelMismatch { .. }
    ));
    let mut d = device();
    d.groups = vec!["warehouse-b".into()];
    assert!(matches!(
        refuse_with(&b, &standard_root(), &d, 0, now(), &cfg),
        Error::GroupMismatch { .. }
    ));
}

#[test]
fn below_threshold_is_refused() {
    let b = bundle_with(&opts(), &good_tar().finish(), 31, 4, &[&key(11)]);
    assert!(matches!(
        refuse(&b),
        Error::BelowThreshold {
            valid: 1,
            threshold: 2,
            ..
        }
    ));
}

#[test]
fn same_key_twice_cannot_fake_a_threshold() {
    let b = bundle_with(&opts(), &good_tar().finish(), 31, 4, &[&key(11), &key(11)]);
    assert!(
        matches!(refuse(&b), Error::DuplicateSignature { keyid, .. } if keyid == key(11).public().keyid)
    );
}

#[test]
fn key_revoked_by_rotation_is_refused() {
    let (r, b1, b2, b3) = (key(1), key(11), key(12), key(13));
    let v1 = standard_root_file();
    // v2 drops bundle key 12.
    let v2 = root_file(2, &[&r], 1, &[&b1, &b3], 2, &[], now() + 365 * DAY, &[&r]);
    let root = TrustedRoot::from_chain(&[v1, v2]).unwrap();
    assert_eq!(root.version(), 2);
    let _ = b2;
    let e = refuse_with(
        &good_bundle(),
        &root,
        &device(),
        0,
        now(),
        &Config::default(),
    );
    assert!(
        matches!(e, Error::RevokedKey { keyid, revoked_in: 2, .. } if keyid == key(12).public().keyid)
    );
    // Re-signed by the remaining keys it passes.
    let b = bundle_with(&opts(), &good_tar().finish(), 31, 4, &[&key(11), &key(13)]);
    verify(Cursor::new(b), &root, &device(), 0, now()).unwrap();
}

#[test]
fn root_rotation_not_signed_by_the_old_root_is_refused() {
    let (new_root_key, b1, b2) = (key(2), key(11), key(12));
    let v2 = root_file(
        2,
        &[&new_root_key],
        1,
        &[&b1, &b2],
        2,
        &[],
        now() + 365 * DAY,
        &[&new_root_key],
    );
    let e = standard_root().rotate(&v2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RotationNotAuthorized {
                current: 1,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn root_rotation_not_signed_by_its_own_new_keys_is_refused() {
    let (old, new_root_key, b1, b2) = (key(1), key(2), key(11), key(12));
    let v2 = root_file(
        2,
        &[&new_root_key],
        1,
        &[&b1, &b2],
        2,
        &[],
        now() + 365 * DAY,
        &[&old],
    );
    let e = standard_root().rotate(&v2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownKey {
                what: "root document",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn root_rotation_signed_by_both_is_accepted_and_new_bundle_keys_work() {
    let (old, new_root_key, n1) = (key(1), key(2), key(31));
    let v2 = root_file(
        2,
        &[&new_root_key],
        1,
        &[&n1],
        1,
        &[],
        now() + 365 * DAY,
        &[&old, &new_root_key],
    );
    let root = standard_root().rotate(&v2).unwrap();
    let b = bundle_with(&opts(), &good_tar().finish(), 31, 4, &[&n1]);
    verify(Cursor::new(b), &root, &device(), 0, now()).unwrap();
    // The old bundle keys are revoked now.
    assert!(matches!(
        verify(Cursor::new(good_bundle()), &root, &device(), 0, now()).unwrap_err(),
        Error::RevokedKey { .. }
    ));
}

#[test]
fn root_rotation_must_increment_the_version_by_one() {
    let (old, b1, b2) = (key(1), key(11), key(12));
    let v3 = root_file(
        3,
        &[&old],
        1,
        &[&b1, &b2],
        2,
        &[],
        now() + 365 * DAY,
        &[&old],
    );
    assert!(matches!(
        standard_root().rotate(&v3).unwrap_err(),
        Error::RootVersion {
            expected: 2,
            found: 3,
            ..
        }
    ));
}

#[test]
fn trust_store_persists_the_chain_and_rejects_a_tampered_stored_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = bundle::TrustStore::new(dir.path().join("trust"));
    let anchor = standard_root_file();
    let root = store.load(&anchor).unwrap();
    assert_eq!(root.version(), 1);
    let (old, b1) = (key(1), key(11));
    let v2 = root_file(2, &[&old], 1, &[&b1], 1, &[], now() + 365 * DAY, &[&old]);
    let after = store.rotate(&root, &v2).unwrap();
    assert_eq!(after.version(), 2);
    assert_eq!(store.load(&anchor).unwrap().version(), 2);
    // Tamper with the stored root: the chain no longer loads.
    let p = dir.path().join("trust/root.2.json");
    let text = std::fs::read_to_string(&p).unwrap().replacen(
        "\\\"threshold\\\": 1",
        "\\\"threshold\\\": 2",
        1,
    );
    std::fs::write(&p, text).unwrap();
    assert!(store.load(&anchor).is_err());
}

#[test]
fn unknown_manifest_keys_are_refused_even_when_signed() {
    let payload = good_tar().finish();
    let m = opts().manifest(payload_info(&payload, 31, 4));
    let mut v = serde_json::to_value(&m).unwrap();
    v["surprise"] = serde_json::json!(1);
    let bytes = serde_json::to_vec(&v).unwrap();
    let sigs = vec![key(11).sign(&bytes), key(12).sign(&bytes)];
    let b = fleetlet::bundle::pack::assemble(&bytes, &sigs, &payload).unwrap();
    assert!(
        matches!(refuse(&b), Error::Malformed { what: "manifest", reason } if reason.contains("surprise"))
    );
}

#[test]
fn workload_that_is_not_toml_is_refused() {
    let mut o = opts();
    o.workload = "[process.nav\n".into();
    let b = bundle_with(&o, &good_tar().finish(), 31, 4, &[&key(11), &key(12)]);
    assert!(matches!(refuse(&b), Error::WorkloadRejected { .. }));
}

#[test]
fn bad_magic_and_unsupported_version_are_refused() {
    let mut b = good_bundle();
    b[0] = b'X';
    assert!(matches!(refuse(&b), Error::BadMagic { .. }));
    let mut b = good_bundle();
    b[11] = 2;
    assert!(matches!(
        refuse(&b),
        Error::UnsupportedFormat { found: 2, .. }
    ));
    let mut b = good_bundle();
    b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        refuse(&b),
        Error::SectionTooLarge {
            section: "manifest",
            ..
        }
    ));
}

#[test]
fn existing_target_is_never_replaced() {
    let s = Scratch::new();
    std::fs::create_dir(s.target()).unwrap();
    let e = verify_and_extract(
        Cursor::new(good_bundle()),
        &standard_root(),
        &device(),
        0,
        now(),
        &s.target(),
        &Config::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TargetExists { .. }));
    assert_eq!(Scratch::listing(&s.parent()), vec!["app"]);
}
