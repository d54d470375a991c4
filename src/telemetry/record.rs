//! Record encodings: how a record is stored in the sled queue, and the JSON batch that goes
//! over MQTT.
//!
//! # Wire schema (topic `<prefix>/<device>/telemetry/<stream>`, QoS 1, JSON)
//! ```json
//! {"device":"robot-7","boot":"9f1c…","stream":"metrics",
//!  "records":[{"seq":41,"ts":1764635000123,"payload":{…}}, …]}
//! ```
//! - `seq` is per stream, starts at 0, increases by one per record and survives restarts.
//! - `boot` is the id of the agent start that wrote the record (a batch never mixes boots).
//! - Delivery is at least once: consumers dedup on `(device, boot, stream, seq)` (or simply
//!   `(device, stream, seq)`, since `seq` never repeats within a stream) and may reorder by
//!   `seq`.

use serde::{Deserialize, Serialize};

/// A record as stored in the queue (postcard-encoded value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored<'a> {
    /// Stream name.
    #[serde(borrow)]
    pub stream: &'a str,
    /// Per-stream sequence number.
    pub seq: u64,
    /// Producer wall-clock time (ms since the Unix epoch).
    pub ts_ms: u64,
    /// Boot id of the agent start that accepted the record.
    #[serde(borrow)]
    pub boot: &'a str,
    /// The payload as JSON text.
    #[serde(borrow)]
    pub payload: &'a [u8],
}

impl<'a> Stored<'a> {
    /// Encodes for sled.
    pub fn encode(&self) -> Vec<u8> {
        // postcard into a Vec cannot fail for these field types.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a stored value.
    ///
    /// # Errors
    /// postcard's error when the bytes are not a stored record.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Builds one wire batch from stored records of one stream and boot. The payloads are
/// embedded verbatim (they are JSON already), so building costs one copy.
pub fn encode_batch<'a>(
    device: &str,
    boot: &str,
    stream: &str,
    records: impl Iterator<Item = Stored<'a>> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch_len(device, boot, stream, records.clone()));
    out.extend_from_slice(b"{\"device\":");
    push_json_str(&mut out, device);
    out.extend_from_slice(b",\"boot\":");
    push_json_str(&mut out, boot);
    out.extend_from_slice(b",\"stream\":");
    push_json_str(&mut out, stream);
    out.extend_from_slice(b",\"records\":[");
    let mut first = true;
    for r in records {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(b"{\"seq\":");
        push_u64(&mut out, r.seq);
        out.extend_from_slice(b",\"ts\":");
        push_u64(&mut out, r.ts_ms);
        out.extend_from_slice(b",\"payload\":");
        if r.payload.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.extend_from_slice(r.payload);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The exact length of the batch [`encode_batch`] builds, so its buffer is allocated once
/// at its final size: a message in flight holds no spare capacity.
fn batch_len<'a>(
    device: &str,
    boot: &str,
    stream: &str,
    records: impl Iterator<Item = Stored<'a>>,
) -> usize {
    let (mut n, mut len) = (0usize, 0usize);
    for r in records {
        n += 1;
        len += RECORD_OVERHEAD
            + decimal_len(r.seq)
            + decimal_len(r.ts_ms)
            + if r.payload.is_empty() {
                4
            } else {
                r.payload.len()
            };
    }
    BATCH_OVERHEAD
        + json_str_len(device)
        + json_str_len(boot)
        + json_str_len(stream)
        + len
        + n.saturating_sub(1)
}

/// `{"device":` `,"boot":` `,"stream":` `,"records":[` `]}`
const BATCH_OVERHEAD: usize = 10 + 8 + 10 + 12 + 2;
/// `{"seq":` `,"ts":` `,"payload":` `}`
const RECORD_OVERHEAD: usize = 7 + 6 + 11 + 1;

fn json_str_len(s: &str) -> usize {
    let mut counter = ByteCount(0);
    let _ = serde_json::to_writer(&mut counter, s);
    counter.0
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn decimal_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{v}");
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json string escaping; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A decoded wire batch (cloud side, `fleetlet tail`, tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Device id.
    pub device: String,
    /// Boot id of the agent start that accepted these records.
    pub boot: String,
    /// Stream name.
    pub stream: String,
    /// The records, in sequence order.
    pub records: Vec<WireRecord>,
}

/// One record in a wire batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRecord {
    /// Per-stream sequence number.
    pub seq: u64,
    /// Producer time, ms since the Unix epoch.
    pub ts: u64,
    /// The record body.
    pub payload: serde_json::Value,
}

impl Batch {
    /// Parses a wire batch.
    ///
    /// # Errors
    /// serde_json's error naming the bad field.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stored_records_round_trip(stream in "[a-z/._-]{1,20}", seq: u64, ts: u64, boot in "[0-9a-f]{32}", n: i64) {
            let payload = serde_json::to_vec(&serde_json::json!({"n": n})).unwrap();
            let r = Stored { stream: &stream, seq, ts_ms: ts, boot: &boot, payload: &payload };
            let bytes = r.encode();
            prop_assert_eq!(Stored::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn wire_batches_decode_to_what_was_stored(device in "[a-zA-Z0-9_.-]{1,12}", stream in "[a-z\"\\\\/]{1,10}", seqs in proptest::collection::vec(any::<u64>(), 0..20), text in ".{0,20}") {
            let payload = serde_json::to_vec(&serde_json::json!({"t": text})).unwrap();
            let stored: Vec<_> = seqs.iter().map(|s| Stored { stream: &stream, seq: *s, ts_ms: 7, boot: "b", payload: &payload }).collect();
            let bytes = encode_batch(&device, "b", &stream, stored.iter().cloned());
            let batch = Batch::decode(&bytes).unwrap();
            prop_assert_eq!(&batch.device, &device);
            prop_assert_eq!(&batch.stream, &stream);
            prop_assert_eq!(batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
            for r in &batch.records {
                prop_assert_eq!(&r.payload["t"], &serde_json::Value::String(text.clone()));
            }
        }

        #[test]
        fn a_wire_batch_is_built_in_a_buffer_of_exactly_its_size(device in "[a-zA-Z0-9_.-]{1,12}", boot in "[a-f0-9\"]{0,8}", stream in "[a-z\"\\/\u{1}]{1,10}", recs in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<bool>()), 0..20)) {
            let payloads: Vec<Vec<u8>> = recs.iter().map(|(s, _, empty)| if *empty { Vec::new() } else { s.to_string().into_bytes() }).collect();
            let stored: Vec<_> = recs.iter().zip(&payloads).map(|((seq, ts, _), p)| Stored { stream: &stream, seq: *seq, ts_ms: *ts, boot: &boot, payload: p }).collect();
            let bytes = encode_batch(&device, &boot, &stream, stored.iter().cloned());
            prop_assert_eq!(bytes.len(), batch_len(&device, &boot, &stream, stored.iter().cloned()));
            prop_assert_eq!(bytes.capacity(), bytes.len());
            prop_assert_eq!(Batch::decode(&bytes).unwrap().records.len(), recs.len());
        }
    }

    #[test]
    fn decimal_lengths_match_the_printed_numbers() {
        for v in [0, 9, 10, 99, 100, 1_764_635_000_123, u64::MAX] {
            assert_eq!(decimal_len(v), v.to_string().len(), "{v}");
        }
    }
}
