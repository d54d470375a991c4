//! The durable telemetry queue on sled.
//!
//! # Layout (version [`LAYOUT`], one sled tree [`TREE`])
//! An append groups its records by (priority, stream) and stores each group as one or more
//! **packs**: one sled value holding up to [`Options::pack_max_records`] records (about
//! [`Options::pack_max_bytes`]) of one stream, one boot id and one priority, in sequence
//! order. Next to each pack lives its small **meta** (stream, record count, accounted bytes,
//! first timestamp, and the index ranges of records already gone). Keys (see [`pack`]):
//! `p<prio><counter>` pack, `m<prio><counter>` meta, `l<prio><stream>` lane accounting,
//! `\xffseq/<stream>` sequence counter, `\xfeformat` layout version. The counter is one
//! number for the whole queue, increasing with every pack.
//!
//! # Design constraints (the invariants every change must keep)
//! - **Durable per batch.** [`Queue::append`] writes a whole batch with one atomic sled
//!   batch (packs, metas, the advanced per-stream sequence counters and the lane
//!   accounting); the caller makes it durable with [`Queue::flush`] according to the flush
//!   policy. A record is "accepted" once the flush that follows its append returned; an
//!   accepted record survives `kill -9` and power loss until it is acknowledged by the
//!   broker, evicted by the disk budget, or expired by its stream's maximum age — and every
//!   eviction or expiry is counted. A batch of N records of one stream costs
//!   ⌈N / pack size⌉ sled inserts, not N: that is what makes ingest cheap.
//! - **Order.** Packs of a priority are read in counter order, and records inside a pack in
//!   sequence order, so a stream's records (which share one priority unless the producer
//!   mixes them) keep their order. Records of different streams in one append may be
//!   regrouped (each stream's records become contiguous).
//! - **Sequence numbers.** Every record gets `seq` = the next number of its stream. Counters
//!   live under `\xffseq/<stream>` and are written in the same atomic batch as the packs, so
//!   after any crash they are never behind a stored record: a `seq` is never reused within a
//!   stream, across restarts too.
//! - **Boot id.** Each pack carries the boot id of the agent start that accepted it, so a
//!   record resent after a restart still has its original `(boot, stream, seq)` identity.
//! - **Accounting without scans.** Records and bytes per (priority, stream) lane are kept
//!   in sled (`l…` keys) and updated in the same atomic batch as every append, removal and
//!   eviction, so [`Queue::open`] reads a handful of small keys instead of the whole queue,
//!   and never pulls the queue into memory. A pack's accounted bytes are its key and value
//!   plus its meta key and meta as first written; they are released when the pack's last
//!   record is gone (the pack is then deleted).
//! - **Budget.** After each append (and at open) the queue evicts, while over budget, the
//!   oldest pack of the lowest non-empty priority (bulk, then normal, then critical).
//!   Eviction is per pack, so it may drop up to one pack more than strictly needed. The
//!   count of evicted records is kept per stream.
//! - **Removal only on acknowledgement.** The uploader removes records only after the
//!   broker's PUBACK ([`Queue::remove`] with the [`Span`]s it sent); a crash before that
//!   means the record is sent again (at least once). Removal marks records dead in the
//!   pack's meta (any subset, any order) and deletes the pack once all its records are dead;
//!   readers skip dead records.
//! - **Old layouts.** A queue written by layout 1 (one sled value per record, keys
//!   `<prio><counter>`) is migrated on open, in chunks that are each one atomic batch (old
//!   records removed, packs written), so a crash mid-migration resumes where it stopped.
//!   Order, seq and boot ids are kept. A layout newer than this code is refused with
//!   [`Error::Layout`].
//! - sled calls here are synchronous; callers run them off the async workers, on the one
//!   [`super::queue_io`] thread (flushes in particular).

mod migrate;
mod pack;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use self::migrate::{load_state, migrate_v1_chunk};
use self::pack::{key, key_counter, key_end, key_prio, with_kind, PackMeta, PackWriter, META};
pub use self::pack::{Pack, PackError};
use self::txn::{Reason, Txn};
use super::{Priority, Record};

/// Name of the sled tree holding the queue.
pub const TREE: &str = "telemetry";
/// On-disk layout version written by this code.
pub const LAYOUT: u8 = 2;
/// Default records per pack: big enough that a 4096-record append is a few dozen inserts,
/// small enough that a pack stays a few KiB at agent-sized records.
pub const DEFAULT_PACK_MAX_RECORDS: u32 = 256;
/// Default pack size: sled writes a leaf node (up to 16 values) over ~128 KiB as a separate
/// blob file, so packs stay well under 8 KiB and leaves inline in sled's log.
pub const DEFAULT_PACK_MAX_BYTES: usize = 6 * 1024;
/// Old (layout 1) records migrated per atomic batch.
const MIGRATE_CHUNK: usize = 4096;

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
    /// The queue was written by a newer fleetlet.
    #[error("telemetry queue: on-disk layout {found} is newer than this agent's layout {LAYOUT} (downgraded agent?)")]
    Layout {
        /// The layout byte found.
        found: u8,
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
    /// Records stored (not yet acknowledged, evicted or expired).
    pub records: u64,
    /// Accounted bytes of the packs holding them.
    pub bytes: u64,
}

/// Tunables of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The disk budget in accounted bytes.
    pub budget: u64,
    /// Records per pack at most.
    pub pack_max_records: u32,
    /// A pack is closed once its value reaches this many bytes.
    pub pack_max_bytes: usize,
}

impl Options {
    /// Default pack sizes with the given budget.
    pub fn with_budget(budget: u64) -> Self {
        Self {
            budget,
            pack_max_records: DEFAULT_PACK_MAX_RECORDS,
            pack_max_bytes: DEFAULT_PACK_MAX_BYTES,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    next_counter: u64,
    seqs: HashMap<String, u64>,
    lanes: BTreeMap<(Priority, String), Lane>,
    bytes: u64,
    drops: BTreeMap<String, Drops>,
}

/// A snapshot of the queue's accounting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Accounted bytes of stored packs.
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

/// Where a reader stopped in one priority: the next record to read is record `next` of the
/// pack with counter `counter` (or any later pack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Pack counter.
    pub counter: u64,
    /// Record index inside that pack.
    pub next: u32,
}

/// Records of one pack as read for upload.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The pack's key.
    pub key: sled::IVec,
    /// The pack value.
    pub value: sled::IVec,
    /// Records the pack holds (live and dead), from its meta.
    pub pack_records: u32,
    /// The indices read (live, after the cursor, in order).
    pub indices: Vec<u32>,
}

impl Entry {
    /// The pack counter in the key.
    pub fn counter(&self) -> u64 {
        key_counter(&self.key)
    }

    /// The cursor just after this entry's last record.
    pub fn cursor_after(&self) -> Cursor {
        Cursor {
            counter: self.counter(),
            next: self.indices.last().map_or(0, |i| i + 1),
        }
    }

    /// Decodes the pack, checking it holds as many records as its meta says.
    ///
    /// # Errors
    /// [`PackError`] for a damaged pack.
    pub fn pack(&self) -> Result<Pack<'_>, PackError> {
        let p = Pack::decode(&self.value)?;
        if p.records.len() != self.pack_records as usize {
            return Err(PackError {
                at: self.value.len(),
            });
        }
        Ok(p)
    }

    /// A span naming some of this entry's records (for [`Queue::remove`]).
    pub fn span(&self, indices: Vec<u32>) -> Span {
        Span {
            key: self.key.clone(),
            indices,
        }
    }
}

/// Records of one pack to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The pack's key.
    pub key: sled::IVec,
    /// Record indices inside the pack.
    pub indices: Vec<u32>,
}

/// A stored record, owned (tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Stream.
    pub stream: String,
    /// Per-stream sequence number.
    pub seq: u64,
    /// Producer time.
    pub ts_ms: u64,
    /// Boot id of the agent start that accepted it.
    pub boot: String,
    /// Payload (JSON text).
    pub payload: Vec<u8>,
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
    opts: Options,
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
    /// Opens (or creates) the queue in `db` with default pack sizes. `boot` is stamped on
    /// records appended from now on.
    ///
    /// # Errors
    /// As [`Queue::open_with`].
    pub fn open(db: &sled::Db, boot: &str, budget: u64) -> Result<Self, Error> {
        Self::open_with(db, boot, Options::with_budget(budget))
    }

    /// Opens (or creates) the queue: reads the persisted accounting (no scan of the
    /// records), migrates a layout-1 queue, then evicts if over the budget.
    ///
    /// # Errors
    /// [`Error::Db`] when sled fails; [`Error::Layout`] for a layout newer than this code.
    /// Undecodable layout-1 records are removed and counted as `corrupt` drops instead.
    pub fn open_with(db: &sled::Db, boot: &str, opts: Options) -> Result<Self, Error> {
        let tree = db.open_tree(TREE).map_err(db_err("open tree"))?;
        let layout = tree.get(pack::FORMAT_KEY).map_err(db_err("read layout"))?;
        if let Some(found) = layout.as_ref().and_then(|v| v.first().copied()) {
            if found > LAYOUT {
                return Err(Error::Layout { found });
            }
        }
        let mut st = load_state(&tree)?;
        if layout.is_none() {
            while migrate_v1_chunk(&tree, &mut st, &opts, MIGRATE_CHUNK)? > 0 {}
            tree.insert(pack::FORMAT_KEY, &[LAYOUT][..])
                .map_err(db_err("write layout"))?;
        }
        let q = Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                boot: boot.to_owned(),
                opts,
                state: Mutex::new(st),
                appended: tokio::sync::Notify::new(),
            }),
        };
        {
            let mut st = q.state();
            q.evict(&mut st)?;
        }
        Ok(q)
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
        self.inner.opts.budget
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
        // Serialise payloads before taking the lock (the uploader shares it).
        let mut text = Vec::with_capacity(records.len() * 64);
        let mut ends = Vec::with_capacity(records.len());
        for r in records {
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut text, &r.payload);
            ends.push(text.len());
        }
        let opts = self.inner.opts;
        let evicted = {
            let mut st = self.state();
            let mut tx = Txn::new();
            let mut seqs: HashMap<&str, u64> = HashMap::new();
            // Open packs by (priority, stream), with their counters, in first-seen order.
            let mut open: Vec<(Priority, &str, u64, PackWriter)> = Vec::new();
            let mut done: Vec<(Priority, u64, PackWriter, &str)> = Vec::new();
            let mut next_counter = st.next_counter;
            let mut start = 0;
            for (r, end) in records.iter().zip(ends) {
                let payload = &text[start..end];
                start = end;
                let seq = match seqs.get(r.stream.as_str()) {
                    Some(s) => *s,
                    None => st.seqs.get(&r.stream).copied().unwrap_or(0),
                };
                seqs.insert(&r.stream, seq + 1);
                let at = match open
                    .iter()
                    .position(|(p, s, _, _)| *p == r.priority && *s == r.stream)
                {
                    Some(i) => i,
                    None => {
                        let cap = opts.pack_max_bytes.min(payload.len() * 2 + 256);
                        open.push((
                            r.priority,
                            &r.stream,
                            next_counter,
                            PackWriter::new(&r.stream, &self.inner.boot, cap),
                        ));
                        next_counter += 1;
                        open.len() - 1
                    }
                };
                let w = &mut open[at].3;
                w.push(seq, r.ts_ms, payload);
                if w.records() >= opts.pack_max_records || w.len() >= opts.pack_max_bytes {
                    let (p, s, c, w) = open.swap_remove(at);
                    done.push((p, c, w, s));
                }
            }
            done.extend(open.into_iter().map(|(p, s, c, w)| (p, c, w, s)));
            for (p, counter, w, stream) in done {
                let n = w.records();
                let (value, meta) = w.finish(stream, 10);
                let lane = tx.lane(&st, p, stream);
                lane.records += u64::from(n);
                lane.bytes += meta.bytes;
                tx.batch.insert(&key(pack::PACK, p, counter)[..], value);
                tx.batch.insert(&key(META, p, counter)[..], meta.encode());
            }
            for (stream, next) in &seqs {
                let mut k = pack::SEQ_PREFIX.to_vec();
                k.extend_from_slice(stream.as_bytes());
                tx.batch.insert(k, &next.to_be_bytes()[..]);
            }
            tx.apply(&self.inner.tree, &mut st, "append")?;
            st.next_counter = next_counter;
            for (stream, next) in seqs {
                st.seqs.insert(stream.to_owned(), next);
            }
            self.evict(&mut st)?
        };
        self.inner.appended.notify_waiters();
        Ok(evicted)
    }

    /// Evicts whole packs while over budget, oldest first from the lowest priority that has
    /// records. Runs under the state lock, so no snapshot ever sees the queue over budget.
    fn evict(&self, st: &mut State) -> Result<u64, Error> {
        let budget = self.inner.opts.budget;
        let mut evicted = 0;
        while st.bytes > budget {
            let Some(p) = PRIORITIES
                .iter()
                .rev()
                .copied()
                .find(|p| st.lanes.keys().any(|(lp, _)| lp == p))
            else {
                return Ok(evicted);
            };
            let mut tx = Txn::new();
            let mut freed = 0u64;
            let (mut any, mut damaged) = (false, false);
            let tree = &self.inner.tree;
            for item in tree.range(meta_range(p, 0)) {
                let (mk, mv) = item.map_err(db_err("scan metas"))?;
                any = true;
                let bytes = PackMeta::decode(&mv).map_or(0, |m| m.bytes);
                if PackMeta::decode(&mv).is_none() {
                    // A damaged meta: drop the pack; the lane accounting is rebuilt below.
                    tx.batch.remove(&with_kind(&mk, pack::PACK)[..]);
                    tx.batch.remove(&mk[..]);
                    tx.drops.push(("<corrupt>".into(), Reason::Corrupt, 1));
                    damaged = true;
                    continue;
                }
                evicted += tx.kill(st, tree, &with_kind(&mk, pack::PACK), None, Reason::Evicted)?;
                freed += bytes;
                if st.bytes.saturating_sub(freed) <= budget {
                    break;
                }
            }
            tx.apply(tree, st, "evict")?;
            if !any || damaged {
                // Accounting says records exist but sled has none, or a meta was damaged:
                // resynchronise.
                self.rebuild_accounting(st)?;
            }
        }
        Ok(evicted)
    }

    /// Recomputes the lane accounting from the metas (a scan of the small meta keys; only
    /// after damage was found).
    fn rebuild_accounting(&self, st: &mut State) -> Result<(), Error> {
        let tree = &self.inner.tree;
        let mut lanes: BTreeMap<(Priority, String), Lane> = BTreeMap::new();
        for item in tree.scan_prefix([META]) {
            let (k, v) = item.map_err(db_err("scan metas"))?;
            let (Some(p), Some(m)) = (key_prio(&k), PackMeta::decode(&v)) else {
                continue;
            };
            let l = lanes.entry((p, m.stream.clone())).or_default();
            l.records += u64::from(m.live());
            l.bytes += m.bytes;
        }
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix([pack::LANE]).keys() {
            batch.remove(item.map_err(db_err("scan lanes"))?);
        }
        for ((p, s), l) in &lanes {
            batch.insert(pack::lane_key(*p, s), pack::encode_lane(l));
        }
        tree.apply_batch(batch)
            .map_err(db_err("rebuild accounting"))?;
        st.bytes = lanes.values().map(|l| l.bytes).sum();
        st.lanes = lanes;
        tracing::warn!("telemetry queue accounting rebuilt after damage");
        Ok(())
    }

    /// Makes everything appended so far durable (blocking, an fsync).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.db.flush().map_err(db_err("flush"))?;
        Ok(())
    }

    /// Reads up to `max_records` records (and about `max_bytes` of pack values, always at
    /// least one record) of the highest priority that has records after its cursor
    /// (`after[i]` is the cursor of priority `PRIORITIES[i]`, `None` = from the oldest).
    /// Loads only the packs it returns, so memory is bounded by the chunk. Packs whose meta
    /// is damaged are removed and counted as corrupt.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn read(
        &self,
        after: &[Option<Cursor>; 3],
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<(Priority, Vec<Entry>)>, Error> {
        let tree = &self.inner.tree;
        let mut damaged = Vec::new();
        let mut found = None;
        'prio: for p in PRIORITIES {
            let cur = after[prio_index(p)];
            let mut out = Vec::new();
            let (mut n, mut bytes) = (0usize, 0usize);
            for item in tree.range(meta_range(p, cur.map_or(0, |c| c.counter))) {
                let (mk, mv) = item.map_err(db_err("read"))?;
                let Some(meta) = PackMeta::decode(&mv) else {
                    damaged.push(mk);
                    continue;
                };
                let from = match cur {
                    Some(c) if c.counter == key_counter(&mk) => c.next,
                    _ => 0,
                };
                let indices: Vec<u32> = meta
                    .live_from(from)
                    .take(max_records.saturating_sub(n).max(1))
                    .collect();
                if indices.is_empty() {
                    continue;
                }
                let pk = with_kind(&mk, pack::PACK);
                let Some(value) = tree.get(pk).map_err(db_err("read"))? else {
                    continue; // evicted since the meta was read
                };
                n += indices.len();
                bytes += value.len() * indices.len() / meta.records.max(1) as usize;
                out.push(Entry {
                    key: sled::IVec::from(&pk[..]),
                    value,
                    pack_records: meta.records,
                    indices,
                });
                if n >= max_records || bytes >= max_bytes {
                    break;
                }
            }
            if !out.is_empty() {
                found = Some((p, out));
                break 'prio;
            }
        }
        if !damaged.is_empty() {
            let mut st = self.state();
            let mut batch = sled::Batch::default();
            for mk in &damaged {
                batch.remove(&with_kind(mk, pack::PACK)[..]);
                batch.remove(mk);
            }
            tree.apply_batch(batch).map_err(db_err("remove damaged"))?;
            st.drops.entry("<corrupt>".into()).or_default().corrupt += damaged.len() as u64;
            self.rebuild_accounting(&mut st)?;
        }
        Ok(found)
    }

    /// Removes acknowledged records. Records already gone (evicted meanwhile) are skipped.
    /// Returns the number of records removed.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn remove(&self, spans: &[Span]) -> Result<u64, Error> {
        self.kill_spans(spans, Reason::Acked)
    }

    /// Removes records that exceeded their stream's maximum age, counting them as expired.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn expire(&self, spans: &[Span]) -> Result<u64, Error> {
        self.kill_spans(spans, Reason::Expired)
    }

    /// Removes whole packs that cannot be decoded, counting their records as corrupt.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn discard_corrupt(&self, pack_keys: &[sled::IVec]) -> Result<u64, Error> {
        let mut st = self.state();
        let mut tx = Txn::new();
        let mut n = 0;
        for k in pack_keys {
            n += tx.kill(&st, &self.inner.tree, k, None, Reason::Corrupt)?;
        }
        tx.apply(&self.inner.tree, &mut st, "discard corrupt")?;
        Ok(n)
    }

    fn kill_spans(&self, spans: &[Span], reason: Reason) -> Result<u64, Error> {
        if spans.is_empty() {
            return Ok(0);
        }
        let mut st = self.state();
        let mut tx = Txn::new();
        let mut n = 0;
        for s in spans {
            n += tx.kill(&st, &self.inner.tree, &s.key, Some(&s.indices), reason)?;
        }
        tx.apply(&self.inner.tree, &mut st, "remove")?;
        Ok(n)
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> Stats {
        let st = self.state();
        Stats {
            bytes: st.bytes,
            budget: self.inner.opts.budget,
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

    /// Producer timestamp of the oldest stored record (any priority). Reads one meta per
    /// priority, and a pack only when its first record is already gone.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn oldest_ts_ms(&self) -> Result<Option<u64>, Error> {
        let tree = &self.inner.tree;
        let mut oldest: Option<u64> = None;
        for p in PRIORITIES {
            let first = tree
                .range(meta_range(p, 0))
                .next()
                .transpose()
                .map_err(db_err("scan"))?;
            let Some((mk, mv)) = first else { continue };
            let Some(meta) = PackMeta::decode(&mv) else {
                continue;
            };
            let ts = if !meta.is_dead(0) {
                Some(meta.first_ts)
            } else {
                let v = tree
                    .get(with_kind(&mk, pack::PACK))
                    .map_err(db_err("read"))?;
                let i = meta.live_from(0).next();
                v.as_deref()
                    .and_then(|v| Pack::decode(v).ok())
                    .zip(i)
                    .and_then(|(pk, i)| pk.get(i).map(|r| r.ts_ms))
            };
            if let Some(ts) = ts {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
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

    /// All stored records of one priority, oldest first (tests and tools; loads them all).
    ///
    /// # Errors
    /// [`Error::Db`].
    pub fn records(&self, p: Priority) -> Result<Vec<Queued>, Error> {
        let mut out = Vec::new();
        let mut cur = [None; 3];
        while let Some((rp, entries)) = self.read(&cur, 4096, usize::MAX)? {
            if prio_index(rp) > prio_index(p) {
                break;
            }
            if rp != p {
                // Higher priorities are skipped by pretending they were read.
                cur[prio_index(rp)] = entries.last().map(Entry::cursor_after);
                continue;
            }
            for e in &entries {
                if let Ok(pack) = e.pack() {
                    for &i in &e.indices {
                        if let Some(r) = pack.get(i) {
                            out.push(Queued {
                                stream: r.stream.to_owned(),
                                seq: r.seq,
                                ts_ms: r.ts_ms,
                                boot: r.boot.to_owned(),
                                payload: r.payload.to_vec(),
                            });
                        }
                    }
                }
            }
            cur[prio_index(p)] = entries.last().map(Entry::cursor_after);
        }
        Ok(out)
    }

    /// The next sequence number of `stream`.
    pub fn next_seq(&self, stream: &str) -> u64 {
        self.state().seqs.get(stream).copied().unwrap_or(0)
    }
}

/// The keys of the metas of priority `p` from pack counter `from` on.
fn meta_range(p: Priority, from: u64) -> std::ops::Range<Vec<u8>> {
    key(META, p, from).to_vec()..key_end(META, p).to_vec()
}

fn db_err(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Db { op, source }
}

#[cfg(test)]
mod tests;
