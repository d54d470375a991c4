//! The durable telemetry queue on sled.
//!
//! # Design constraints (the invariants every change must keep)
//! - **Durable per batch.** [`Queue::append`] writes a whole batch with one atomic sled
//!   batch (records plus the advanced per-stream sequence counters); the caller makes it
//!   durable with [`Queue::flush`] according to the flush policy. A record is "accepted" once
//!   the flush that follows its append returned; an accepted record survives `kill -9` and
//!   power loss until it is acknowledged by the broker, evicted by the disk budget, or
//!   expired by its stream's maximum age — and every eviction or expiry is counted.
//! - **Order.** Keys are `[priority][u64 big-endian append counter]`, one key space per
//!   priority, so iteration order of a priority is append order; a stream's records (which
//!   share one priority unless the producer mixes them) keep their order.
//! - **Sequence numbers.** Every record gets `seq` = the next number of its stream. Counters
//!   live under `[0xff]seq/<stream>` in the same tree and are written in the same atomic batch
//!   as the records, so after any crash they are never behind a stored record: a `seq` is
//!   never reused within a stream, across restarts too.
//! - **Boot id.** Each record carries the boot id of the agent start that accepted it, so a
//!   record resent after a restart still has its original `(boot, stream, seq)` identity.
//! - **Budget.** The queue accounts key+value bytes of stored records. After each append it
//!   evicts, while over budget, the oldest record of the lowest non-empty priority
//!   (bulk, then normal, then critical). The count of evictions is kept per stream.
//! - **Removal only on acknowledgement.** The uploader removes records only after the
//!   broker's PUBACK ([`Queue::remove`]); a crash before that means the record is sent again
//!   (at least once).
//! - sled calls here are synchronous; callers run them off the async workers
//!   (`spawn_blocking`), flushes in particular.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::record::Stored;
use super::{Priority, Record};

/// Name of the sled tree holding the queue.
pub const TREE: &str = "telemetry";
const SEQ_PREFIX: &[u8] = b"\xffseq/";
/// Records removed per eviction round.
const EVICT_CHUNK: usize = 256;

/// All priorities, highest first (upload order).
pub const PRIORITIES: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Bulk];

/// Key-space byte of a priority.
pub fn prio_byte(p: Priority) -> u8 {
    match p {
        Priority::Critical => 0,
        Priority::Normal => 1,
        Priority::Bulk => 2,
    }
}

fn prio_index(p: Priority) -> usize {
    prio_byte(p) as usize
}

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sled operation failed.
    #[error("telemetry queue: sled {op} failed: {source}")]
    Db {
        /// What we were doing.
        op: &'static str,
        /// sled's error.
        source: sled::Error,
    },
}

/// Why a record left the queue without being delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Evicted by the disk budget.
    pub evicted: u64,
    /// Older than the stream's maximum age.
    pub expired: u64,
    /// Stored value could not be decoded (damaged record).
    pub corrupt: u64,
}

impl Drops {
    /// Sum of all reasons.
    pub fn total(&self) -> u64 {
        self.evicted + self.expired + self.corrupt
    }
}

/// Records and bytes queued for one (priority, stream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Lane {
    /// Records stored.
    pub records: u64,
    /// Key+value bytes stored.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    next_key: u64,
    seqs: HashMap<String, u64>,
    lanes: BTreeMap<(Priority, String), Lane>,
    bytes: u64,
    drops: BTreeMap<String, Drops>,
}

impl State {
    fn add(&mut self, p: Priority, stream: &str, bytes: u64) {
        let lane = self.lanes.entry((p, stream.to_owned())).or_default();
        lane.records += 1;
        lane.bytes += bytes;
        self.bytes += bytes;
    }

    fn sub(&mut self, p: Priority, stream: &str, bytes: u64) {
        if let Some(lane) = self.lanes.get_mut(&(p, stream.to_owned())) {
            lane.records = lane.records.saturating_sub(1);
            lane.bytes = lane.bytes.saturating_sub(bytes);
            if lane.records == 0 {
                self.lanes.remove(&(p, stream.to_owned()));
            }
        }
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// A snapshot of the queue's accounting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Accounted bytes of stored records.
    pub bytes: u64,
    /// The disk budget.
    pub budget: u64,
    /// Per (priority, stream).
    pub lanes: Vec<(Priority, String, Lane)>,
    /// Cumulative drops per stream (since this agent start, plus what was reported before).
    pub drops: BTreeMap<String, Drops>,
}

impl Stats {
    /// Records stored.
    pub fn records(&self) -> u64 {
        self.lanes.iter().map(|l| l.2.records).sum()
    }
}

/// One stored record as read back.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its key (priority byte + counter).
    pub key: sled::IVec,
    /// The encoded [`Stored`] value.
    pub value: sled::IVec,
}

impl Entry {
    /// The append counter in the key.
    pub fn counter(&self) -> u64 {
        key_counter(&self.key)
    }

    /// Decodes the value.
    ///
    /// # Errors
    /// postcard's error for a damaged value.
    pub fn decode(&self) -> Result<Stored<'_>, postcard::Error> {
        Stored::decode(&self.value)
    }
}

fn key_counter(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 9 {
        b.copy_from_slice(&key[1..]);
    }
    u64::from_be_bytes(b)
}

fn make_key(p: Priority, counter: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prio_byte(p);
    k[1..].copy_from_slice(&counter.to_be_bytes());
    k
}

fn prio_of_key(key: &[u8]) -> Option<Priority> {
    match key.first() {
        Some(0) => Some(Priority::Critical),
        Some(1) => Some(Priority::Normal),
        Some(2) => Some(Priority::Bulk),
        _ => None,
    }
}

/// Cheap-to-clone handle on the queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    boot: String,
    budget: u64,
    state: Mutex<State>,
    appended: tokio::sync::Notify,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("boot", &self.inner.boot)
            .finish()
    }
}

impl Queue {
    /// Opens (or creates) the queue in `db`, scanning it to rebuild the accounting.
    /// `boot` is stamped on records appended from now on.
    ///
    /// # Errors
    /// [`Error::Db`] when sled fails. Undecodable records are removed and counted as
    /// `corrupt` drops instead.
    pub fn open(db: &sled::Db, boot: &str, budget: u64) -> Result<Self, Error> {
        let tree = db.open_tree(TREE).map_err(db_err("open tree"))?;
        let mut state = State::default();
        let mut damaged = Vec::new();
        for p in PRIORITIES {
            for item in tree.scan_prefix([prio_byte(p)]) {
                let (k, v) = item.map_err(db_err("scan"))?;
                state.next_key = state.next_key.max(key_counter(&k) + 1);
                match Stored::decode(&v) {
                    Ok(r) => state.add(p, r.stream, (k.len() + v.len()) as u64),
                    Err(_) => damaged.push(k),
                }
            }
        }
        for item in tree.scan_prefix(SEQ_PREFIX) {
            let (k, v) = item.map_err(db_err("scan"))?;
            let stream = String::from_utf8_lossy(&k[SEQ_PREFIX.len()..]).into_owned();
            let mut b = [0u8; 8];
            if v.len() == 8 {
                b.copy_from_slice(&v);
            }
            state.seqs.insert(stream, u64::from_be_bytes(b));
        }
        for k in damaged {
            tree.remove(&k).map_err(db_err("remove"))?;
            state.drops.entry("<corrupt>".into()).or_default().corrupt += 1;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                boot: boot.to_owned(),
                budget,
                state: Mutex::new(state),
                appended: tokio::sync::Notify::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Poisoning only follows a panic mid-update of counters; they stay usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The boot id stamped on new records.
    pub fn boot(&self) -> &str {
        &self.inner.boot
    }

    /// The disk budget in bytes.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Appends records (each with its final priority) in one atomic batch, then evicts while
    /// over budget. Not durable until [`Queue::flush`]. Returns the number of evicted records.
    ///
    /// # Errors
    /// [`Error::Db`]; nothing of the batch is stored then.
    pub fn append(&self, records: &[Record]) -> Result<u64, Error> {
        if records.is_empty() {
            return Ok(0);
        }
        let evicted = {
            let mut st = self.state();
            let mut batch = sled::Batch::default();
            let mut seqs_touched: HashMap<&str, u64> = HashMap::new();
            let mut added = Vec::with_capacity(records.len());
            let mut next_key = st.next_key;
            for r in records {
                let seq = match seqs_touched.get(r.stream.as_str()) {
                    Some(s) => *s,
                    None => st.seqs.get(&r.stream).copied().unwrap_or(0),
                };
                seqs_touched.insert(&r.stream, seq + 1);
                let payload = serde_json::to_vec(&r.payload).unwrap_or_default();
                let value = Stored {
                    stream: &r.stream,
                    seq,
                    ts_ms: r.ts_ms,
                    boot: &self.inner.boot,
                    payload: &payload,
                }
                .encode();
                let key = make_key(r.priority, next_key);
                next_key += 1;
                added.push((
                    r.priority,
                    r.stream.as_str(),
                    (key.len() + value.len()) as u64,
                ));
                batch.insert(&key[..], value);
            }
            for (stream, next) in &seqs_touched {
                let mut k = SEQ_PREFIX.to_vec();
                k.extend_from_slice(stream.as_bytes());
                batch.insert(k, &next.to_be_bytes()[..]);
            }
            self.inner
                .tree
                .apply_batch(batch)
                .map_err(db_err("append"))?;
            st.next_key = next_key;
            for (stream, next) in seqs_touched {
                st.seqs.insert(stream.to_owned(), next);
            }
            for (p, stream, bytes) in added {
                st.add(p, stream, bytes);
            }
            self.evict(&mut st)?
        };
        self.inner.appended.notify_waiters();
        Ok(evicted)
    }

    /// Evicts while over budget. Runs under the state lock of the append, so no snapshot
    /// ever sees the queue over its budget.
    fn evict(&self, st: &mut State) -> Result<u64, Error> {
        let mut evicted = 0;
        while st.bytes > self.inner.budget {
            let Some(p) = PRIORITIES
                .iter()
                .rev()
                .copied()
                .find(|p| st.lanes.keys().any(|(lp, _)| lp == p))
            else {
                return Ok(evicted);
            };
            let keys: Vec<sled::IVec> = self
                .inner
                .tree
                .scan_prefix([prio_byte(p)])
                .keys()
                .take(EVICT_CHUNK)
                .collect::<Result<_, _>>()
                .map_err(db_err("scan"))?;
            if keys.is_empty() {
                // Accounting says records exist but sled has none: resynchronise.
                st.lanes.retain(|(lp, _), _| *lp != p);
                continue;
            }
            for k in keys {
                if st.bytes <= self.inner.budget {
                    break;
                }
                if let Some(v) = self.inner.tree.remove(&k).map_err(db_err("evict"))? {
                    let stream = Stored::decode(&v)
                        .map(|r| r.stream.to_owned())
                        .unwrap_or_else(|_| "<corrupt>".into());
                    st.sub(p, &stream, (k.len() + v.len()) as u64);
                    st.drops.entry(stream).or_default().evicted += 1;
                    evicted += 1;
                }
            }
        }
        Ok(evicted)
    }

    /// Makes everything appended so far durable (blocking, an fsync).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.db.flush().map_err(db_err("flush"))?;
        Ok(())
    }

    /// Reads up to `max_records` records (and at most about `max_bytes` of values, always at
    /// least one) of the highest priority that has records after its cursor
    /// (`after[i]` is the last append counter already taken from priority `PRIORITIES[i]`).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn read(
        &self,
        after: &[Option<u64>; 3],
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<(Priority, Vec<Entry>)>, Error> {
        for p in PRIORITIES {
            let start = match after[prio_index(p)] {
                Some(c) => make_key(p, c.saturating_add(1)),
                None => make_key(p, 0),
            };
            let end = [prio_byte(p) + 1];
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for item in self.inner.tree.range(&start[..]..&end[..]) {
                let (key, value) = item.map_err(db_err("read"))?;
                bytes += value.len();
                out.push(Entry { key, value });
                if out.len() >= max_records || bytes >= max_bytes {
                    break;
                }
            }
            if !out.is_empty() {
                return Ok(Some((p, out)));
            }
        }
        Ok(None)
    }

    /// Removes acknowledged records. Records already gone (evicted meanwhile) are skipped.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn remove(&self, keys: &[sled::IVec]) -> Result<(), Error> {
        self.remove_counted(keys, None)
    }

    /// Removes records that exceeded their stream's maximum age, counting them as expired.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn expire(&self, keys: &[sled::IVec]) -> Result<(), Error> {
        self.remove_counted(keys, Some(false))
    }

    /// Removes records whose value cannot be decoded, counting them as corrupt.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn discard_corrupt(&self, keys: &[sled::IVec]) -> Result<(), Error> {
        self.remove_counted(keys, Some(true))
    }

    fn remove_counted(&self, keys: &[sled::IVec], drop: Option<bool>) -> Result<(), Error> {
        for k in keys {
            let Some(p) = prio_of_key(k) else { continue };
            if let Some(v) = self.inner.tree.remove(k).map_err(db_err("remove"))? {
                let stream = Stored::decode(&v)
                    .map(|r| r.stream.to_owned())
                    .unwrap_or_else(|_| "<corrupt>".into());
                let mut st = self.state();
                st.sub(p, &stream, (k.len() + v.len()) as u64);
                match drop {
                    None => {}
                    Some(false) => st.drops.entry(stream).or_default().expired += 1,
                    Some(true) => st.drops.entry(stream).or_default().corrupt += 1,
                }
            }
        }
        Ok(())
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> Stats {
        let st = self.state();
        Stats {
            bytes: st.bytes,
            budget: self.inner.budget,
            lanes: st
                .lanes
                .iter()
                .map(|((p, s), l)| (*p, s.clone(), *l))
                .collect(),
            drops: st.drops.clone(),
        }
    }

    /// Cumulative drops per stream.
    pub fn drops(&self) -> BTreeMap<String, Drops> {
        self.state().drops.clone()
    }

    /// Records stored.
    pub fn len(&self) -> u64 {
        self.state().lanes.values().map(|l| l.records).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Producer timestamp of the oldest stored record (any priority).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn oldest_ts_ms(&self) -> Result<Option<u64>, Error> {
        let mut oldest: Option<u64> = None;
        for p in PRIORITIES {
            if let Some((_, v)) = self
                .inner
                .tree
                .scan_prefix([prio_byte(p)])
                .next()
                .transpose()
                .map_err(db_err("scan"))?
            {
                if let Ok(r) = Stored::decode(&v) {
                    oldest = Some(oldest.map_or(r.ts_ms, |o| o.min(r.ts_ms)));
                }
            }
        }
        Ok(oldest)
    }

    /// Approximate bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Resolves after the next append (for the uploader). Register interest with
    /// [`tokio::sync::Notify::notified`] before reading to avoid missed wake-ups.
    pub fn appended(&self) -> &tokio::sync::Notify {
        &self.inner.appended
    }

    /// All stored entries of one priority, oldest first (tests and tools).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn entries(&self, p: Priority) -> Result<Vec<Entry>, Error> {
        self.inner
            .tree
            .scan_prefix([prio_byte(p)])
            .map(|i| i.map(|(key, value)| Entry { key, value }))
            .collect::<Result<_, _>>()
            .map_err(db_err("scan"))
    }

    /// The next sequence number of `stream`.
    pub fn next_seq(&self, stream: &str) -> u64 {
        self.state().seqs.get(stream).copied().unwrap_or(0)
    }
}

fn db_err(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Db { op, source }
}

#[cfg(test)]
mod tests {
    //! Model-based tests (vector disk_v2/tests/model style): random operations run against
    //! the real queue and a plain in-memory model; after every step the stored records,
    //! byte accounting and drop counts must agree.
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const STREAMS: [&str; 3] = ["a", "b", "c"];

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<(usize, Priority, usize)>),
        Ack(usize),
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
            2 => (1..30usize).prop_map(Op::Ack),
            1 => Just(Op::Reopen),
        ]
    }

    #[derive(Default)]
    struct Model {
        lanes: [VecDeque<(String, u64, u64)>; 3],
        seqs: HashMap<String, u64>,
        bytes: u64,
        drops: BTreeMap<String, Drops>,
    }

    fn record(stream: &str, p: Priority, len: usize) -> Record {
        Record {
            stream: stream.into(),
            priority: p,
            ts_ms: 1,
            payload: serde_json::Value::String("x".repeat(len)),
        }
    }

    fn size(r: &Record, seq: u64, boot: &str) -> u64 {
        let payload = serde_json::to_vec(&r.payload).unwrap();
        (9 + Stored {
            stream: &r.stream,
            seq,
            ts_ms: r.ts_ms,
            boot,
            payload: &payload,
        }
        .encode()
        .len()) as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn queue_matches_model(ops in proptest::collection::vec(op(), 1..40), budget in 2_000u64..40_000) {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let mut boot = 0u32;
            let mut q = Queue::open(&db, &format!("{boot:032}"), budget).unwrap();
            let mut m = Model::default();
            for op in ops {
                match op {
                    Op::Append(rs) => {
                        let recs: Vec<Record> = rs.iter().map(|(s, p, l)| record(STREAMS[*s], *p, *l)).collect();
                        q.append(&recs).unwrap();
                        for r in &recs {
                            let seq = m.seqs.entry(r.stream.clone()).or_insert(0);
                            let sz = size(r, *seq, q.boot());
                            m.lanes[prio_index(r.priority)].push_back((r.stream.clone(), *seq, sz));
                            *seq += 1;
                            m.bytes += sz;
                        }
                        while m.bytes > budget {
                            let Some(lane) = m.lanes.iter_mut().rev().find(|l| !l.is_empty()) else { break };
                            let (s, _, sz) = lane.pop_front().unwrap();
                            m.bytes -= sz;
                            m.drops.entry(s).or_default().evicted += 1;
                        }
                    }
                    Op::Ack(n) => {
                        let got = q.read(&[None; 3], n, usize::MAX).unwrap();
                        let lane = m.lanes.iter_mut().find(|l| !l.is_empty());
                        match (got, lane) {
                            (None, None) => {}
                            (Some((p, entries)), Some(lane)) => {
                                prop_assert_eq!(entries.len(), n.min(lane.len()));
                                for e in &entries {
                                    let r = e.decode().unwrap();
                                    let (s, seq, sz) = lane.pop_front().unwrap();
                                    prop_assert_eq!((r.stream, r.seq), (s.as_str(), seq));
                                    prop_assert_eq!(prio_of_key(&e.key), Some(p));
                                    m.bytes -= sz;
                                }
                                let keys: Vec<_> = entries.into_iter().map(|e| e.key).collect();
                                q.remove(&keys).unwrap();
                            }
                            (got, lane) => prop_assert!(false, "queue read {:?} but model lane {:?}", got.map(|g| g.1.len()), lane.map(|l| l.len())),
                        }
                    }
                    Op::Reopen => {
                        q.flush().unwrap();
                        drop(q);
                        boot += 1;
                        q = Queue::open(&db, &format!("{boot:032}"), budget).unwrap();
                        // Drop counters are per agent start (they were reported already).
                        m.drops.clear();
                    }
                }
                for p in PRIORITIES {
                    let stored: Vec<(String, u64)> = q.entries(p).unwrap().iter().map(|e| { let r = e.decode().unwrap(); (r.stream.to_owned(), r.seq) }).collect();
                    let model: Vec<(String, u64)> = m.lanes[prio_index(p)].iter().map(|(s, q, _)| (s.clone(), *q)).collect();
                    prop_assert_eq!(stored, model, "priority {:?}", p);
                }
                prop_assert_eq!(q.stats().bytes, m.bytes);
                prop_assert!(q.stats().bytes <= budget);
                prop_assert_eq!(q.drops(), m.drops.clone());
                for s in STREAMS {
                    prop_assert_eq!(q.next_seq(s), m.seqs.get(s).copied().unwrap_or(0));
                }
            }
        }
    }

    #[test]
    fn records_survive_reopen_with_their_original_boot_id_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
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
            .entries(Priority::Normal)
            .unwrap()
            .iter()
            .map(|e| {
                let r = e.decode().unwrap();
                (r.boot.to_owned(), r.seq)
            })
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
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let q = Queue::open(&db, "b", 1 << 20).unwrap();
        q.append(&[
            record("bulk", Priority::Bulk, 1),
            record("n", Priority::Normal, 1),
            record("n", Priority::Normal, 1),
        ])
        .unwrap();
        let (p, e) = q.read(&[None; 3], 1, usize::MAX).unwrap().unwrap();
        assert_eq!((p, e.len()), (Priority::Normal, 1));
        let mut cur = [None; 3];
        cur[1] = Some(e[0].counter());
        let (p, e2) = q.read(&cur, 10, usize::MAX).unwrap().unwrap();
        assert_eq!(
            (p, e2.len(), e2[0].decode().unwrap().seq),
            (Priority::Normal, 1, 1)
        );
        cur[1] = Some(e2[0].counter());
        let (p, _) = q.read(&cur, 10, usize::MAX).unwrap().unwrap();
        assert_eq!(p, Priority::Bulk);
    }

    #[test]
    fn damaged_records_are_removed_on_open_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let q = Queue::open(&db, "b", 1 << 20).unwrap();
        q.append(&[record("a", Priority::Normal, 1)]).unwrap();
        drop(q);
        db.open_tree(TREE)
            .unwrap()
            .insert(make_key(Priority::Normal, 99), &[0xffu8; 3][..])
            .unwrap();
        let q = Queue::open(&db, "b", 1 << 20).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.drops()["<corrupt>"].corrupt, 1);
    }
}
