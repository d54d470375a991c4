//! One atomic change of the queue: a sled batch plus the accounting it implies.

use std::collections::{BTreeMap, HashMap};

use super::pack::{self, key_prio, with_kind, PackMeta, META};
use super::{db_err, Error, Lane, State};
use crate::telemetry::Priority;

/// Why records are removed (for the drop counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Acked,
    Expired,
    Evicted,
    Corrupt,
}

/// One atomic change: a sled batch plus the accounting it implies, applied to [`State`]
/// only after sled accepted the batch.
pub(super) struct Txn {
    pub batch: sled::Batch,
    metas: HashMap<pack::Key, Option<PackMeta>>,
    lanes: BTreeMap<(Priority, String), Lane>,
    pub drops: Vec<(String, Reason, u64)>,
}

impl Txn {
    pub fn new() -> Self {
        Self {
            batch: sled::Batch::default(),
            metas: HashMap::new(),
            lanes: BTreeMap::new(),
            drops: Vec::new(),
        }
    }

    pub fn lane(&mut self, st: &State, p: Priority, stream: &str) -> &mut Lane {
        self.lanes.entry((p, stream.to_owned())).or_insert_with(|| {
            st.lanes
                .get(&(p, stream.to_owned()))
                .copied()
                .unwrap_or_default()
        })
    }

    /// The meta of `meta_key` as this transaction sees it.
    pub fn meta(
        &mut self,
        tree: &sled::Tree,
        meta_key: pack::Key,
    ) -> Result<Option<PackMeta>, Error> {
        if let Some(m) = self.metas.get(&meta_key) {
            return Ok(m.clone());
        }
        let m = tree
            .get(meta_key)
            .map_err(db_err("read meta"))?
            .and_then(|v| PackMeta::decode(&v));
        self.metas.insert(meta_key, m.clone());
        Ok(m)
    }

    /// Marks `indices` of the pack dead (all of them when `None`), deleting the pack when
    /// nothing is left. Returns the records that were live before.
    pub fn kill(
        &mut self,
        st: &State,
        tree: &sled::Tree,
        pack_key: &[u8],
        indices: Option<&[u32]>,
        reason: Reason,
    ) -> Result<u64, Error> {
        let Some(p) = key_prio(pack_key) else {
            return Ok(0);
        };
        let mk = with_kind(pack_key, META);
        let Some(mut meta) = self.meta(tree, mk)? else {
            return Ok(0);
        };
        let newly = match indices {
            Some(ix) => meta.kill(ix),
            None => {
                let live = meta.live();
                meta.dead = vec![(0, meta.records)];
                live
            }
        };
        if newly == 0 && meta.live() > 0 {
            return Ok(0);
        }
        let gone = meta.live() == 0;
        let lane = self.lane(st, p, &meta.stream);
        lane.records = lane.records.saturating_sub(u64::from(newly));
        if gone {
            lane.bytes = lane.bytes.saturating_sub(meta.bytes);
            self.batch.remove(&with_kind(pack_key, pack::PACK)[..]);
            self.batch.remove(&mk[..]);
            self.metas.insert(mk, None);
        } else {
            self.batch.insert(&mk[..], meta.encode());
            self.metas.insert(mk, Some(meta.clone()));
        }
        if newly > 0 && reason != Reason::Acked {
            self.drops.push((meta.stream, reason, u64::from(newly)));
        }
        Ok(u64::from(newly))
    }

    pub fn apply(
        mut self,
        tree: &sled::Tree,
        st: &mut State,
        op: &'static str,
    ) -> Result<(), Error> {
        for ((p, s), l) in &self.lanes {
            let k = pack::lane_key(*p, s);
            if l.records == 0 && l.bytes == 0 {
                self.batch.remove(k);
            } else {
                self.batch.insert(k, pack::encode_lane(l));
            }
        }
        tree.apply_batch(self.batch).map_err(db_err(op))?;
        for (k, l) in self.lanes {
            let old = st.lanes.get(&k).map_or(0, |l| l.bytes);
            st.bytes = st.bytes.saturating_sub(old) + l.bytes;
            if l.records == 0 && l.bytes == 0 {
                st.lanes.remove(&k);
            } else {
                st.lanes.insert(k, l);
            }
        }
        for (stream, reason, n) in self.drops {
            let d = st.drops.entry(stream).or_default();
            match reason {
                Reason::Acked => {}
                Reason::Expired => d.expired += n,
                Reason::Evicted => d.evicted += n,
                Reason::Corrupt => d.corrupt += n,
            }
        }
        Ok(())
    }
}
