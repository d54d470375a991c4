//! Model-based tests (vector disk_v2/tests/model style): random operations run against the
//! real queue and a plain in-memory model; after every step the stored records, byte
//! accounting, lanes and drop counts must agree. Plus migration and damage tests.

use super::*;
use crate::telemetry::record::Stored;
use proptest::prelude::*;

const STREAMS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    /// (stream index, priority, payload length) per record.
    Append(Vec<(usize, Priority, usize)>),
    /// Read up to n records after the cursors and keep them in flight.
    Take(usize),
    /// PUBACK of the in-flight group at this index (modulo their number).
    Ack(usize),
    /// The uploader found the group at this index expired.
    Expire(usize),
    /// Connection lost: in-flight groups are forgotten, cursors restart.
    Reconnect,
    /// Agent restart (flush, drop, open with a new boot id).
    Reopen,
}

fn prio() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Critical),
        Just(Priority::Normal),
        Just(Priority::Bulk)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((0..3usize, prio(), 0..400usize), 1..40).prop_map(Op::Append),
        3 => (1..30usize).prop_map(Op::Take),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Expire),
        1 => Just(Op::Reconnect),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug)]
struct MPack {
    id: u64,
    stream: String,
    boot: String,
    /// (seq, dead)
    recs: Vec<(u64, bool)>,
    bytes: u64,
}

impl MPack {
    fn live(&self) -> u64 {
        self.recs.iter().filter(|r| !r.1).count() as u64
    }
}

/// A model pack id and record indices.
type PackIndices = (u64, Vec<u32>);

/// A group in flight: the real spans and the model's (priority, pack id, indices).
type Group = (Vec<Span>, Vec<(usize, u64, Vec<u32>)>);

#[derive(Default)]
struct Model {
    prios: [Vec<MPack>; 3],
    seqs: HashMap<String, u64>,
    bytes: u64,
    drops: BTreeMap<String, Drops>,
    next_id: u64,
    cursors: [Option<(u64, u32)>; 3],
    real_cursors: [Option<Cursor>; 3],
    inflight: Vec<Group>,
}

impl Model {
    fn append(&mut self, recs: &[Record], boot: &str, opts: &Options) {
        let mut open: Vec<(Priority, String, usize, PackWriter)> = Vec::new();
        for r in recs {
            let seq = self.seqs.entry(r.stream.clone()).or_insert(0);
            let s = *seq;
            *seq += 1;
            let pi = prio_index(r.priority);
            let at = match open
                .iter()
                .position(|(p, st, _, _)| *p == r.priority && *st == r.stream)
            {
                Some(i) => i,
                None => {
                    self.prios[pi].push(MPack {
                        id: self.next_id,
                        stream: r.stream.clone(),
                        boot: boot.into(),
                        recs: vec![],
                        bytes: 0,
                    });
                    self.next_id += 1;
                    let w = PackWriter::new(&r.stream, boot, 0);
                    open.push((r.priority, r.stream.clone(), self.prios[pi].len() - 1, w));
                    open.len() - 1
                }
            };
            let (_, _, idx, w) = &mut open[at];
            w.push(s, r.ts_ms, &serde_json::to_vec(&r.payload).unwrap());
            self.prios[pi][*idx].recs.push((s, false));
            if w.records() >= opts.pack_max_records || w.len() >= opts.pack_max_bytes {
                let (p, st, idx, w) = open.swap_remove(at);
                self.close(p, &st, idx, w);
            }
        }
        for (p, st, idx, w) in open {
            self.close(p, &st, idx, w);
        }
        while self.bytes > opts.budget {
            let Some(lane) = self.prios.iter_mut().rev().find(|l| !l.is_empty()) else {
                break;
            };
            let pk = lane.remove(0);
            self.bytes -= pk.bytes;
            let live = pk.live();
            if live > 0 {
                self.drops.entry(pk.stream).or_default().evicted += live;
            }
        }
    }

    fn close(&mut self, p: Priority, stream: &str, idx: usize, w: PackWriter) {
        let (_, meta) = w.finish(stream, 10);
        self.prios[prio_index(p)][idx].bytes = meta.bytes;
        self.bytes += meta.bytes;
    }

    /// What a read of `n` records should return: (priority, [(pack id, indices)]).
    fn take(&self, n: usize) -> Option<(usize, Vec<PackIndices>)> {
        for pi in 0..3 {
            let cur = self.cursors[pi];
            let mut out = Vec::new();
            let mut got = 0;
            for pk in &self.prios[pi] {
                let from = match cur {
                    Some((id, _)) if pk.id < id => continue,
                    Some((id, next)) if pk.id == id => next,
                    _ => 0,
                };
                let ix: Vec<u32> = (from..pk.recs.len() as u32)
                    .filter(|i| !pk.recs[*i as usize].1)
                    .take(n - got)
                    .collect();
                if ix.is_empty() {
                    continue;
                }
                got += ix.len();
                out.push((pk.id, ix));
                if got >= n {
                    break;
                }
            }
            if !out.is_empty() {
                return Some((pi, out));
            }
        }
        None
    }

    /// Marks records dead; returns newly dead per stream.
    fn kill(&mut self, pi: usize, id: u64, ix: &[u32]) -> (String, u64) {
        let Some(pos) = self.prios[pi].iter().position(|p| p.id == id) else {
            return (String::new(), 0);
        };
        let pk = &mut self.prios[pi][pos];
        let mut n = 0;
        for &i in ix {
            if !pk.recs[i as usize].1 {
                pk.recs[i as usize].1 = true;
                n += 1;
            }
        }
        let stream = pk.stream.clone();
        if pk.live() == 0 {
            self.bytes -= pk.bytes;
            self.prios[pi].remove(pos);
        }
        (stream, n)
    }

    fn live(&self, pi: usize) -> Vec<(String, u64, String)> {
        self.prios[pi]
            .iter()
            .flat_map(|pk| {
                pk.recs
                    .iter()
                    .filter(|r| !r.1)
                    .map(|r| (pk.stream.clone(), r.0, pk.boot.clone()))
            })
            .collect()
    }

    fn lanes(&self) -> Vec<(Priority, String, Lane)> {
        let mut m: BTreeMap<(Priority, String), Lane> = BTreeMap::new();
        for p in PRIORITIES {
            for pk in &self.prios[prio_index(p)] {
                let l = m.entry((p, pk.stream.clone())).or_default();
                l.records += pk.live();
                l.bytes += pk.bytes;
            }
        }
        m.into_iter().map(|((p, s), l)| (p, s, l)).collect()
    }
}

fn record(stream: &str, p: Priority, len: usize) -> Record {
    Record {
        stream: stream.into(),
        priority: p,
        ts_ms: 1,
        payload: serde_json::Value::String("x".repeat(len)),
    }
}

fn db() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    (dir, db)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_model(ops in proptest::collection::vec(op(), 1..50),
                           budget in 2_000u64..40_000,
                           pack_max_records in 1u32..6,
                           pack_max_bytes in prop_oneof![Just(usize::MAX), 300usize..3_000]) {
        let (_dir, db) = db();
        let opts = Options { budget, pack_max_records, pack_max_bytes };
        let mut boot = 0u32;
        let mut q = Queue::open_with(&db, &format!("{boot:032}"), opts).unwrap();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Append(rs) => {
                    let recs: Vec<Record> = rs.iter().map(|(s, p, l)| record(STREAMS[*s], *p, *l)).collect();
                    q.append(&recs).unwrap();
                    m.append(&recs, q.boot(), &opts);
                }
                Op::Take(n) => {
                    let got = q.read(&m.real_cursors, n, usize::MAX).unwrap();
                    let want = m.take(n);
                    match (got, want) {
                        (None, None) => {}
                        (Some((p, entries)), Some((pi, packs))) => {
                            prop_assert_eq!(prio_index(p), pi);
                            prop_assert_eq!(entries.len(), packs.len());
                            let mut group: Group = (vec![], vec![]);
                            for (e, (id, ix)) in entries.iter().zip(&packs) {
                                prop_assert_eq!(&e.indices, ix);
                                let pk = m.prios[pi].iter().find(|pk| pk.id == *id).unwrap();
                                let decoded = e.pack().unwrap();
                                for &i in ix {
                                    let r = decoded.get(i).unwrap();
                                    prop_assert_eq!((r.stream, r.seq, r.boot), (pk.stream.as_str(), pk.recs[i as usize].0, pk.boot.as_str()));
                                }
                                group.0.push(e.span(e.indices.clone()));
                                group.1.push((pi, *id, ix.clone()));
                            }
                            m.real_cursors[pi] = entries.last().map(Entry::cursor_after);
                            let (last_id, last_ix) = packs.last().unwrap();
                            m.cursors[pi] = Some((*last_id, last_ix.last().unwrap() + 1));
                            m.inflight.push(group);
                        }
                        (got, want) => prop_assert!(false, "queue read {:?} but model {:?}", got.map(|g| g.1.len()), want),
                    }
                }
                Op::Ack(i) | Op::Expire(i) => {
                    if m.inflight.is_empty() {
                        continue;
                    }
                    let (spans, packs) = m.inflight.remove(i % m.inflight.len());
                    let expire = matches!(op, Op::Expire(_));
                    let n = if expire { q.expire(&spans).unwrap() } else { q.remove(&spans).unwrap() };
                    let mut want = 0;
                    for (pi, id, ix) in packs {
                        let (s, k) = m.kill(pi, id, &ix);
                        want += k;
                        if expire && k > 0 {
                            m.drops.entry(s).or_default().expired += k;
                        }
                    }
                    prop_assert_eq!(n, want);
                }
                Op::Reconnect => {
                    m.inflight.clear();
                    m.cursors = [None; 3];
                    m.real_cursors = [None; 3];
                }
                Op::Reopen => {
                    q.flush().unwrap();
                    drop(q);
                    boot += 1;
                    q = Queue::open_with(&db, &format!("{boot:032}"), opts).unwrap();
                    m.inflight.clear();
                    m.cursors = [None; 3];
                    m.real_cursors = [None; 3];
                    // Drop counters are per agent start (they were reported already).
                    m.drops.clear();
                }
            }
            for p in PRIORITIES {
                let stored: Vec<(String, u64, String)> = q.records(p).unwrap().into_iter().map(|r| (r.stream, r.seq, r.boot)).collect();
                prop_assert_eq!(stored, m.live(prio_index(p)), "priority {:?}", p);
            }
            let stats = q.stats();
            prop_assert_eq!(stats.bytes, m.bytes);
            prop_assert!(stats.bytes <= budget);
            prop_assert_eq!(stats.lanes, m.lanes());
            prop_assert_eq!(q.drops(), m.drops.clone());
            for s in STREAMS {
                prop_assert_eq!(q.next_seq(s), m.seqs.get(s).copied().unwrap_or(0));
            }
        }
        // The persisted accounting equals what a full recount finds.
        let before = q.stats();
        q.rebuild_accounting(&mut q.state()).unwrap();
        prop_assert_eq!(q.stats().lanes, before.lanes);
        prop_assert_eq!(q.stats().bytes, before.bytes);
    }
}

#[test]
fn a_batch_of_one_stream_is_a_few_packs_not_one_value_per_record() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 30).unwrap();
    let recs: Vec<Record> = (0..4096)
        .map(|_| record("bench", Priority::Normal, 254))
        .collect();
    q.append(&recs).unwrap();
    let tree = db.open_tree(TREE).unwrap();
    let packs = tree.scan_prefix([pack::PACK]).count();
    // 256-byte records at ~6 KiB per pack: ~22 records each.
    assert!((100..300).contains(&packs), "{packs} packs");
    assert_eq!(q.len(), 4096);
    let seqs: Vec<u64> = q
        .records(Priority::Normal)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (0..4096).collect::<Vec<_>>());
}

#[test]
fn records_survive_reopen_with_their_original_boot_id_and_seq_continues() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "boot-1", 1 << 20).unwrap();
    q.append(&[
        record("a", Priority::Normal, 3),
        record("a", Priority::Normal, 3),
    ])
    .unwrap();
    q.flush().unwrap();
    drop(q);
    let q = Queue::open(&db, "boot-2", 1 << 20).unwrap();
    q.append(&[record("a", Priority::Normal, 3)]).unwrap();
    let got: Vec<(String, u64)> = q
        .records(Priority::Normal)
        .unwrap()
        .into_iter()
        .map(|r| (r.boot, r.seq))
        .collect();
    assert_eq!(
        got,
        [
            ("boot-1".into(), 0),
            ("boot-1".into(), 1),
            ("boot-2".into(), 2)
        ]
    );
}

#[test]
fn read_after_cursor_skips_records_already_taken_and_prefers_higher_priority() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    q.append(&[
        record("bulk", Priority::Bulk, 1),
        record("n", Priority::Normal, 1),
        record("n", Priority::Normal, 1),
    ])
    .unwrap();
    let (p, e) = q.read(&[None; 3], 1, usize::MAX).unwrap().unwrap();
    assert_eq!(
        (p, e.len(), e[0].indices.as_slice()),
        (Priority::Normal, 1, &[0][..])
    );
    let mut cur = [None; 3];
    cur[1] = Some(e[0].cursor_after());
    let (p, e2) = q.read(&cur, 10, usize::MAX).unwrap().unwrap();
    assert_eq!(
        (
            p,
            e2.len(),
            e2[0].pack().unwrap().get(e2[0].indices[0]).unwrap().seq
        ),
        (Priority::Normal, 1, 1)
    );
    cur[1] = Some(e2[0].cursor_after());
    let (p, _) = q.read(&cur, 10, usize::MAX).unwrap().unwrap();
    assert_eq!(p, Priority::Bulk);
}

#[test]
fn acknowledging_part_of_a_pack_keeps_the_rest_across_a_restart() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    let recs: Vec<Record> = (0..10).map(|_| record("s", Priority::Normal, 5)).collect();
    q.append(&recs).unwrap();
    let (_, e) = q.read(&[None; 3], 4, usize::MAX).unwrap().unwrap();
    assert_eq!(e.len(), 1, "one pack");
    // PUBACKs out of order: the second message (records 2, 3) first.
    assert_eq!(q.remove(&[e[0].span(vec![2, 3])]).unwrap(), 2);
    q.flush().unwrap();
    drop(q);
    let q = Queue::open(&db, "b2", 1 << 20).unwrap();
    let seqs: Vec<u64> = q
        .records(Priority::Normal)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 4, 5, 6, 7, 8, 9]);
    assert_eq!(q.len(), 8);
    let (_, e) = q.read(&[None; 3], 100, usize::MAX).unwrap().unwrap();
    assert_eq!(q.remove(&[e[0].span(e[0].indices.clone())]).unwrap(), 8);
    assert!(q.is_empty());
    assert_eq!(q.stats().bytes, 0);
    let tree = db.open_tree(TREE).unwrap();
    assert_eq!(tree.scan_prefix([pack::PACK]).count(), 0, "pack deleted");
    assert_eq!(tree.scan_prefix([META]).count(), 0, "meta deleted");
}

#[test]
fn oldest_timestamp_skips_acknowledged_records_of_the_first_pack() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            ts_ms: 100 + i,
            ..record("s", Priority::Bulk, 1)
        })
        .collect();
    q.append(&recs).unwrap();
    q.append(&[Record {
        ts_ms: 50,
        ..record("c", Priority::Critical, 1)
    }])
    .unwrap();
    assert_eq!(q.oldest_ts_ms().unwrap(), Some(50));
    let (_, e) = q.read(&[None; 3], 1, usize::MAX).unwrap().unwrap();
    q.remove(&[e[0].span(e[0].indices.clone())]).unwrap();
    assert_eq!(q.oldest_ts_ms().unwrap(), Some(100));
    let (_, e) = q.read(&[None; 3], 1, usize::MAX).unwrap().unwrap();
    q.remove(&[e[0].span(e[0].indices.clone())]).unwrap();
    assert_eq!(q.oldest_ts_ms().unwrap(), Some(101));
}

#[test]
fn a_damaged_pack_is_discarded_and_its_records_counted_as_corrupt() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    q.append(&[
        record("a", Priority::Normal, 1),
        record("a", Priority::Normal, 1),
    ])
    .unwrap();
    q.append(&[record("a", Priority::Normal, 1)]).unwrap();
    let tree = db.open_tree(TREE).unwrap();
    tree.insert(key(pack::PACK, Priority::Normal, 0), &[0xffu8; 3][..])
        .unwrap();
    let (_, e) = q.read(&[None; 3], 10, usize::MAX).unwrap().unwrap();
    assert!(e[0].pack().is_err());
    assert!(e[1].pack().is_ok());
    assert_eq!(q.discard_corrupt(&[e[0].key.clone()]).unwrap(), 2);
    assert_eq!(q.drops()["a"].corrupt, 2);
    assert_eq!(q.len(), 1);
}

#[test]
fn a_damaged_meta_is_removed_counted_and_the_accounting_rebuilt() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    q.append(&[record("a", Priority::Normal, 1)]).unwrap();
    q.append(&[record("a", Priority::Normal, 1)]).unwrap();
    let tree = db.open_tree(TREE).unwrap();
    tree.insert(key(META, Priority::Normal, 0), &[0xffu8; 2][..])
        .unwrap();
    let (_, e) = q.read(&[None; 3], 10, usize::MAX).unwrap().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(q.drops()["<corrupt>"].corrupt, 1);
    assert_eq!(q.len(), 1);
    assert_eq!(tree.scan_prefix([pack::PACK]).count(), 1);
}

#[test]
fn a_layout_newer_than_this_code_is_refused_with_its_number() {
    let (_dir, db) = db();
    db.open_tree(TREE)
        .unwrap()
        .insert(pack::FORMAT_KEY, &[LAYOUT + 1][..])
        .unwrap();
    let e = Queue::open(&db, "b", 1 << 20).unwrap_err();
    assert!(
        matches!(e, Error::Layout { found } if found == LAYOUT + 1),
        "{e}"
    );
}

/// Writes records exactly as layout 1 did: key `[prio][counter u64 BE]`, value a postcard
/// `Stored`, counters under `\xffseq/<stream>`; no layout key.
fn write_v1(db: &sled::Db, recs: &[(Priority, &str, u64, &str)]) {
    let tree = db.open_tree(TREE).unwrap();
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (i, (p, stream, seq, boot)) in recs.iter().enumerate() {
        let mut k = vec![prio_byte(*p)];
        k.extend_from_slice(&(i as u64).to_be_bytes());
        let payload = format!("{{\"i\":{i}}}");
        let v = Stored {
            stream,
            seq: *seq,
            ts_ms: 1000 + i as u64,
            boot,
            payload: payload.as_bytes(),
        }
        .encode();
        tree.insert(k, v).unwrap();
        next.insert(stream, seq + 1);
    }
    for (s, n) in next {
        let mut k = pack::SEQ_PREFIX.to_vec();
        k.extend_from_slice(s.as_bytes());
        tree.insert(k, &n.to_be_bytes()[..]).unwrap();
    }
}

fn v1_fixture() -> Vec<(Priority, &'static str, u64, &'static str)> {
    let mut v = Vec::new();
    for i in 0..300u64 {
        let boot = if i < 120 { "old-boot-1" } else { "old-boot-2" };
        v.push((Priority::Normal, "pose", i, boot));
        if i % 3 == 0 {
            v.push((Priority::Bulk, "cam", i / 3, boot));
        }
        if i % 50 == 0 {
            v.push((Priority::Critical, "events", i / 50, boot));
        }
    }
    v
}

fn assert_migrated(q: &Queue, fixture: &[(Priority, &str, u64, &str)]) {
    for p in PRIORITIES {
        let want: Vec<(String, u64, String)> = fixture
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| (r.1.to_owned(), r.2, r.3.to_owned()))
            .collect();
        let got: Vec<(String, u64, String)> = q
            .records(p)
            .unwrap()
            .into_iter()
            .map(|r| (r.stream, r.seq, r.boot))
            .collect();
        assert_eq!(got, want, "{p:?}");
    }
    assert_eq!(q.len(), fixture.len() as u64);
    assert_eq!(q.next_seq("pose"), 300);
    assert_eq!(q.next_seq("cam"), 100);
}

#[test]
fn a_layout_1_queue_is_migrated_on_open_keeping_order_seq_and_boot() {
    let (_dir, db) = db();
    let fixture = v1_fixture();
    write_v1(&db, &fixture);
    let q = Queue::open(&db, "new-boot", 1 << 30).unwrap();
    assert_migrated(&q, &fixture);
    let tree = db.open_tree(TREE).unwrap();
    assert_eq!(tree.range([0u8]..[3u8]).count(), 0, "no layout-1 keys left");
    assert_eq!(
        tree.get(pack::FORMAT_KEY).unwrap().as_deref(),
        Some(&[LAYOUT][..])
    );
    // Payloads came through verbatim, and appends continue the sequences.
    let first = &q.records(Priority::Normal).unwrap()[0];
    assert_eq!(first.payload, b"{\"i\":0}");
    q.append(&[record("pose", Priority::Normal, 1)]).unwrap();
    let last = q.records(Priority::Normal).unwrap().pop().unwrap();
    assert_eq!((last.seq, last.boot.as_str()), (300, "new-boot"));
    // And the accounting it wrote is what a recount finds.
    let before = q.stats();
    q.rebuild_accounting(&mut q.state()).unwrap();
    assert_eq!(q.stats().lanes, before.lanes);
}

#[test]
fn a_migration_interrupted_between_chunks_resumes_on_the_next_open() {
    let (_dir, db) = db();
    let fixture = v1_fixture();
    write_v1(&db, &fixture);
    let tree = db.open_tree(TREE).unwrap();
    // One chunk of 100 old records, then "crash" (no layout key written).
    let mut st = load_state(&tree).unwrap();
    let opts = Options::with_budget(1 << 30);
    assert_eq!(migrate_v1_chunk(&tree, &mut st, &opts, 100).unwrap(), 100);
    assert!(tree.get(pack::FORMAT_KEY).unwrap().is_none());
    drop(tree);
    let q = Queue::open(&db, "new-boot", 1 << 30).unwrap();
    assert_migrated(&q, &fixture);
}

#[test]
fn damaged_layout_1_records_are_dropped_and_counted_during_migration() {
    let (_dir, db) = db();
    write_v1(
        &db,
        &[
            (Priority::Normal, "a", 0, "b"),
            (Priority::Normal, "a", 1, "b"),
        ],
    );
    let tree = db.open_tree(TREE).unwrap();
    let mut k = vec![1u8];
    k.extend_from_slice(&99u64.to_be_bytes());
    tree.insert(k, &[0xffu8; 3][..]).unwrap();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q.drops()["<corrupt>"].corrupt, 1);
}

#[test]
fn opening_with_a_smaller_budget_evicts_down_to_it() {
    let (_dir, db) = db();
    let q = Queue::open(&db, "b", 1 << 20).unwrap();
    for _ in 0..30 {
        q.append(&[
            record("bulk", Priority::Bulk, 200),
            record("crit", Priority::Critical, 200),
        ])
        .unwrap();
    }
    drop(q);
    let q = Queue::open(&db, "b", 10_000).unwrap();
    assert!(q.stats().bytes <= 10_000, "{}", q.stats().bytes);
    assert_eq!(q.records(Priority::Critical).unwrap().len(), 30);
    assert!(q.drops()["bulk"].evicted > 0);
}
