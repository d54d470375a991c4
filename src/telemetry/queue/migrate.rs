//! Opening: the persisted state, and the migration of layout-1 queues.

use super::pack::{self, key, key_counter, key_prio, PackWriter, META};
use super::txn::{Reason, Txn};
use super::{db_err, meta_range, Error, Options, State, PRIORITIES};
use crate::telemetry::record::Stored;
use crate::telemetry::Priority;

/// Reads the persisted accounting, sequence counters and next pack counter.
pub(super) fn load_state(tree: &sled::Tree) -> Result<State, Error> {
    let mut st = State::default();
    for item in tree.scan_prefix([pack::LANE]) {
        let (k, v) = item.map_err(db_err("scan lanes"))?;
        let (Some(p), Some(l)) = (key_prio(&k), pack::decode_lane(&v)) else {
            continue;
        };
        let stream = String::from_utf8_lossy(&k[2..]).into_owned();
        st.bytes += l.bytes;
        st.lanes.insert((p, stream), l);
    }
    for item in tree.scan_prefix(pack::SEQ_PREFIX) {
        let (k, v) = item.map_err(db_err("scan seqs"))?;
        let stream = String::from_utf8_lossy(&k[pack::SEQ_PREFIX.len()..]).into_owned();
        let mut b = [0u8; 8];
        if v.len() == 8 {
            b.copy_from_slice(&v);
        }
        st.seqs.insert(stream, u64::from_be_bytes(b));
    }
    for p in PRIORITIES {
        let last = tree
            .range(meta_range(p, 0))
            .keys()
            .next_back()
            .transpose()
            .map_err(db_err("scan metas"))?;
        if let Some(k) = last {
            st.next_counter = st.next_counter.max(key_counter(&k) + 1);
        }
    }
    Ok(st)
}

/// Migrates up to `max` layout-1 records (key `[prio][counter u64 BE]`, value a postcard
/// [`Stored`]) into packs, in one atomic batch. Returns how many old keys it consumed
/// (0 = nothing left).
pub(super) fn migrate_v1_chunk(
    tree: &sled::Tree,
    st: &mut State,
    opts: &Options,
    max: usize,
) -> Result<usize, Error> {
    let mut tx = Txn::new();
    let mut consumed = 0;
    let mut corrupt = 0u64;
    // The open pack: (priority, stream, boot, counter, writer).
    let mut open: Option<(Priority, String, String, u64, PackWriter)> = None;
    let mut packs = Vec::new();
    for item in tree.range([0u8]..[3u8]).take(max) {
        let (k, v) = item.map_err(db_err("migrate scan"))?;
        consumed += 1;
        tx.batch.remove(k.clone());
        let p = match k.first() {
            Some(0) => Priority::Critical,
            Some(1) => Priority::Normal,
            _ => Priority::Bulk,
        };
        let Ok(r) = Stored::decode(&v) else {
            corrupt += 1;
            continue;
        };
        let same = open.as_ref().is_some_and(|(op, os, ob, _, w)| {
            *op == p
                && os == r.stream
                && ob == r.boot
                && w.records() < opts.pack_max_records
                && w.len() < opts.pack_max_bytes
        });
        if !same {
            packs.extend(open.take());
            open = Some((
                p,
                r.stream.to_owned(),
                r.boot.to_owned(),
                st.next_counter,
                PackWriter::new(r.stream, r.boot, opts.pack_max_bytes),
            ));
            st.next_counter += 1;
        }
        if let Some((_, _, _, _, w)) = open.as_mut() {
            w.push(r.seq, r.ts_ms, r.payload);
        }
    }
    packs.extend(open);
    for (p, stream, _, counter, w) in packs {
        let n = w.records();
        let (value, meta) = w.finish(&stream, 10);
        let lane = tx.lane(st, p, &stream);
        lane.records += u64::from(n);
        lane.bytes += meta.bytes;
        tx.batch.insert(&key(pack::PACK, p, counter)[..], value);
        tx.batch.insert(&key(META, p, counter)[..], meta.encode());
    }
    if corrupt > 0 {
        tx.drops
            .push(("<corrupt>".into(), Reason::Corrupt, corrupt));
    }
    if consumed > 0 {
        tx.apply(tree, st, "migrate")?;
        tracing::info!(
            records = consumed,
            "migrated layout-1 telemetry records into packs"
        );
    }
    Ok(consumed)
}
