//! Property: random mutations of a valid bundle never panic, and are never accepted
//! unless the signed manifest bytes and the payload are exactly the original ones.

mod bundle_support;

use std::io::Cursor;

use bundle_support::*;
use fleetlet::bundle::format::read_header;
use fleetlet::bundle::{verify, verify_and_extract, Config};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let n = b.len();
    match m {
        Mutation::Flip { at, bit } => b[at % n] ^= 1 << bit,
        Mutation::Set { at, byte } => b[at % n] = *byte,
        Mutation::Truncate { at } => b.truncate(at % n),
        Mutation::Insert { at, bytes } => {
            let at = at % (n + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(n);
            b.drain(at..end);
        }
    }
}

/// (manifest bytes, payload bytes) of a bundle.
fn parts(b: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut c = Cursor::new(b);
    let h = read_header(&mut c).ok()?;
    Some((h.manifest_bytes, b[h.len as usize..].to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bundle_is_never_accepted_with_changed_signed_bytes_or_payload(
        muts in proptest::collection::vec(mutation(), 1..4)
    ) {
        let orig = good_bundle();
        let mut b = orig.clone();
        for m in &muts {
            if b.is_empty() { break; }
            apply(&mut b, m);
        }
        let res = verify(Cursor::new(&b), &standard_root(), &device(), 0, now());
        if res.is_ok() {
            prop_assert_eq!(parts(&b), parts(&orig), "accepted a bundle with changed signed bytes or payload");
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn mutated_bundle_extraction_never_panics_and_leaves_nothing_on_refusal(
        muts in proptest::collection::vec(mutation(), 1..3)
    ) {
        let orig = good_bundle();
        let mut b = orig.clone();
        for m in &muts {
            if b.is_empty() { break; }
            apply(&mut b, m);
        }
        let s = Scratch::new();
        let res = verify_and_extract(Cursor::new(&b), &standard_root(), &device(), 0, now(), &s.target(), &Config::default());
        match res {
            Ok(_) => prop_assert_eq!(parts(&b), parts(&orig)),
            Err(_) => s.assert_clean(),
        }
    }
}
