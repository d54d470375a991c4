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
    records: impl Iterator<Item = Stored<'a>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
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
        out.extend_from_slice(r.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(r.ts_ms.to_string().as_bytes());
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
    }
}
