//! Encodings of the queue's sled keys and values (layout 2): packs of records, their
//! metadata and the per-lane accounting.
//!
//! ```text
//! pack value  = 0x02 str(stream) str(boot) record*          (records until the end)
//! record      = varint(seq) varint(ts_ms) bytes(payload)    (payload: JSON text)
//! str, bytes  = varint(len) data
//! varint      = unsigned LEB128 (the same as postcard's)
//! meta value  = postcard(PackMeta)
//! lane value  = postcard(Lane)
//! ```

use serde::{Deserialize, Serialize};

use super::super::record::Stored;
use super::super::Priority;
use super::{prio_byte, Lane};

/// First byte of a pack value: its format.
pub const PACK_TAG: u8 = 2;
/// Key prefix of packs: `[PACK][priority][counter u64 BE]`.
pub const PACK: u8 = b'p';
/// Key prefix of pack metadata: `[META][priority][counter u64 BE]`.
pub const META: u8 = b'm';
/// Key prefix of lane accounting: `[LANE][priority]<stream>`.
pub const LANE: u8 = b'l';
/// Key of the layout version (one byte value, [`super::LAYOUT`]).
pub const FORMAT_KEY: &[u8] = b"\xfeformat";
/// Key prefix of per-stream sequence counters (unchanged since layout 1).
pub const SEQ_PREFIX: &[u8] = b"\xffseq/";

/// A pack or meta key.
pub type Key = [u8; 10];

/// The key of a pack (`kind` [`PACK`]) or of its metadata (`kind` [`META`]).
pub fn key(kind: u8, p: Priority, counter: u64) -> Key {
    let mut k = [0u8; 10];
    k[0] = kind;
    k[1] = prio_byte(p);
    k[2..].copy_from_slice(&counter.to_be_bytes());
    k
}

/// First key after every key of `kind` and `p`.
pub fn key_end(kind: u8, p: Priority) -> [u8; 2] {
    [kind, prio_byte(p) + 1]
}

/// The counter of a pack or meta key (0 for a malformed key).
pub fn key_counter(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() == 10 {
        b.copy_from_slice(&k[2..]);
    }
    u64::from_be_bytes(b)
}

/// The priority of a pack or meta key.
pub fn key_prio(k: &[u8]) -> Option<Priority> {
    match k.get(1) {
        Some(0) => Some(Priority::Critical),
        Some(1) => Some(Priority::Normal),
        Some(2) => Some(Priority::Bulk),
        _ => None,
    }
}

/// Converts a pack key into its meta key or back.
pub fn with_kind(k: &[u8], kind: u8) -> Key {
    let mut out = [0u8; 10];
    if k.len() == 10 {
        out.copy_from_slice(k);
    }
    out[0] = kind;
    out
}

/// The key of a lane's accounting.
pub fn lane_key(p: Priority, stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + stream.len());
    k.push(LANE);
    k.push(prio_byte(p));
    k.extend_from_slice(stream.as_bytes());
    k
}

/// Encodes lane accounting.
pub fn encode_lane(l: &Lane) -> Vec<u8> {
    postcard::to_allocvec(&(l.records, l.bytes)).unwrap_or_default()
}

/// Decodes lane accounting.
pub fn decode_lane(v: &[u8]) -> Option<Lane> {
    postcard::from_bytes::<(u64, u64)>(v)
        .ok()
        .map(|(records, bytes)| Lane { records, bytes })
}

/// Metadata kept next to each pack, so that acknowledging, expiring, evicting and accounting
/// never load the pack itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackMeta {
    /// Stream of every record in the pack.
    pub stream: String,
    /// Records in the pack (live and dead).
    pub records: u32,
    /// Accounted bytes: pack key + value + meta key + this meta as first written.
    pub bytes: u64,
    /// Producer time of the pack's first record.
    pub first_ts: u64,
    /// Records that are gone (acknowledged, expired), as sorted, disjoint, non-adjacent
    /// half-open index ranges.
    pub dead: Vec<(u32, u32)>,
}

impl PackMeta {
    /// Encodes for sled.
    pub fn encode(&self) -> Vec<u8> {
        // postcard into a Vec cannot fail for these field types.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a stored meta.
    pub fn decode(v: &[u8]) -> Option<Self> {
        postcard::from_bytes(v).ok()
    }

    /// Records not yet gone.
    pub fn live(&self) -> u32 {
        let dead: u32 = self.dead.iter().map(|(a, b)| b - a).sum();
        self.records.saturating_sub(dead)
    }

    /// Whether record `i` is gone.
    pub fn is_dead(&self, i: u32) -> bool {
        self.dead.iter().any(|&(a, b)| a <= i && i < b)
    }

    /// Marks the records at `indices` gone; returns how many were live before.
    pub fn kill(&mut self, indices: &[u32]) -> u32 {
        let mut newly = 0;
        for &i in indices {
            if i >= self.records || self.is_dead(i) {
                continue;
            }
            newly += 1;
            self.dead.push((i, i + 1));
        }
        if newly > 0 {
            self.dead.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.dead.len());
            for (a, b) in self.dead.drain(..) {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            self.dead = merged;
        }
        newly
    }

    /// Live record indices from `from` on.
    pub fn live_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        (from..self.records).filter(|i| !self.is_dead(*i))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Builds one pack value.
#[derive(Debug)]
pub struct PackWriter {
    buf: Vec<u8>,
    records: u32,
    first_ts: u64,
}

impl PackWriter {
    /// Starts a pack of `stream` records accepted by agent start `boot`.
    pub fn new(stream: &str, boot: &str, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(PACK_TAG);
        put_bytes(&mut buf, stream.as_bytes());
        put_bytes(&mut buf, boot.as_bytes());
        Self {
            buf,
            records: 0,
            first_ts: 0,
        }
    }

    /// Appends one record.
    pub fn push(&mut self, seq: u64, ts_ms: u64, payload: &[u8]) {
        if self.records == 0 {
            self.first_ts = ts_ms;
        }
        put_varint(&mut self.buf, seq);
        put_varint(&mut self.buf, ts_ms);
        put_bytes(&mut self.buf, payload);
        self.records += 1;
    }

    /// Encoded size so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Records so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// The value and its meta (with `bytes` accounted for keys of `key_len` bytes).
    pub fn finish(self, stream: &str, key_len: usize) -> (Vec<u8>, PackMeta) {
        let mut meta = PackMeta {
            stream: stream.to_owned(),
            records: self.records,
            bytes: 0,
            first_ts: self.first_ts,
            dead: Vec::new(),
        };
        // The accounted size includes the meta's own encoding, which includes `bytes`
        // (a varint): iterate until the width is stable (at most twice in practice).
        let base = (2 * key_len + self.buf.len()) as u64;
        meta.bytes = base;
        loop {
            let total = base + meta.encode().len() as u64;
            if total == meta.bytes {
                break;
            }
            meta.bytes = total;
        }
        (self.buf, meta)
    }
}

/// A malformed pack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("damaged telemetry pack at byte {at}")]
pub struct PackError {
    /// Offset where decoding failed.
    pub at: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, PackError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or(PackError { at: self.at })?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackError { at: self.at })
    }

    fn bytes(&mut self) -> Result<&'a [u8], PackError> {
        let len = usize::try_from(self.varint()?).map_err(|_| PackError { at: self.at })?;
        let end = self
            .at
            .checked_add(len)
            .filter(|e| *e <= self.b.len())
            .ok_or(PackError { at: self.at })?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn str(&mut self) -> Result<&'a str, PackError> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?).map_err(|_| PackError { at })
    }
}

/// A decoded pack (borrowing the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack<'a> {
    /// Stream of every record.
    pub stream: &'a str,
    /// Boot id of the agent start that accepted the records.
    pub boot: &'a str,
    /// `(seq, ts_ms, payload)` of each record, in order.
    pub records: Vec<(u64, u64, &'a [u8])>,
}

impl<'a> Pack<'a> {
    /// Decodes a pack value.
    ///
    /// # Errors
    /// [`PackError`] when the value is not a complete pack.
    pub fn decode(v: &'a [u8]) -> Result<Self, PackError> {
        if v.first() != Some(&PACK_TAG) {
            return Err(PackError { at: 0 });
        }
        let mut r = Reader { b: v, at: 1 };
        let stream = r.str()?;
        let boot = r.str()?;
        let mut records = Vec::new();
        while r.at < v.len() {
            let seq = r.varint()?;
            let ts = r.varint()?;
            let payload = r.bytes()?;
            records.push((seq, ts, payload));
        }
        Ok(Self {
            stream,
            boot,
            records,
        })
    }

    /// Record `i` as a [`Stored`] view.
    pub fn get(&self, i: u32) -> Option<Stored<'a>> {
        self.records
            .get(i as usize)
            .map(|&(seq, ts_ms, payload)| Stored {
                stream: self.stream,
                seq,
                ts_ms,
                boot: self.boot,
                payload,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pack_bytes_are_laid_out_as_documented() {
        let mut w = PackWriter::new("ab", "b", 64);
        w.push(300, 1, b"{}");
        let (v, meta) = w.finish("ab", 10);
        assert_eq!(
            v,
            [
                0x02, // format tag
                2, b'a', b'b', // stream
                1, b'b', // boot
                0xac, 0x02, // seq 300 as LEB128
                1,    // ts 1
                2, b'{', b'}', // payload
            ]
        );
        assert_eq!(meta.bytes, 20 + v.len() as u64 + meta.encode().len() as u64);
    }

    #[test]
    fn kill_merges_ranges_and_counts_only_live_records() {
        let mut m = PackMeta {
            stream: "s".into(),
            records: 10,
            bytes: 0,
            first_ts: 0,
            dead: vec![],
        };
        assert_eq!(m.kill(&[3, 4, 9]), 3);
        assert_eq!(m.kill(&[4, 5, 11]), 1);
        assert_eq!(m.dead, [(3, 6), (9, 10)]);
        assert_eq!(m.live(), 6);
        assert_eq!(m.live_from(2).collect::<Vec<_>>(), [2, 6, 7, 8]);
        assert_eq!(m.kill(&[0, 1, 2, 6, 7, 8]), 6);
        assert_eq!((m.dead.as_slice(), m.live()), (&[(0, 10)][..], 0));
    }

    proptest! {
        #[test]
        fn packs_round_trip(stream in "[a-z/]{1,20}", boot in "[0-9a-f]{0,32}",
                            recs in proptest::collection::vec((any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut w = PackWriter::new(&stream, &boot, 0);
            for (s, t, p) in &recs {
                w.push(*s, *t, p);
            }
            let (v, meta) = w.finish(&stream, 10);
            prop_assert_eq!(meta.records as usize, recs.len());
            let pack = Pack::decode(&v).unwrap();
            prop_assert_eq!(pack.stream, stream.as_str());
            prop_assert_eq!(pack.boot, boot.as_str());
            let got: Vec<(u64, u64, Vec<u8>)> = pack.records.iter().map(|(s, t, p)| (*s, *t, p.to_vec())).collect();
            prop_assert_eq!(got, recs);
            prop_assert_eq!(PackMeta::decode(&meta.encode()), Some(meta));
        }

        #[test]
        fn truncated_packs_are_errors_not_panics(cut in 0usize..40) {
            let mut w = PackWriter::new("s", "b", 0);
            w.push(1, 2, b"\"hello world\"");
            w.push(2, 3, b"\"again\"");
            let (v, _) = w.finish("s", 10);
            let cut = cut.min(v.len() - 1);
            // A cut inside the header or a record is an error; a cut between records is a
            // shorter valid pack.
            if let Ok(p) = Pack::decode(&v[..cut]) {
                prop_assert!(p.records.len() < 2);
            }
        }
    }
}
