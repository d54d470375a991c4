//! The uploader: reads the queue in priority order, publishes batches over the MQTT link
//! with QoS 1 and deletes records only after the broker's PUBACK.
//!
//! Invariants:
//! - A record is removed from the queue only when the PUBACK of a message containing it
//!   arrived (or it expired / was evicted, which is counted). So every accepted record is
//!   delivered at least once unless dropped and counted.
//! - At most `inflight` messages are unacknowledged (plus the batches of one read chunk),
//!   bounding the duplicates a crash or connection loss can cause to about
//!   `inflight * batch_records` records.
//! - On a connection loss ([`crate::mqtt::Handle::epoch`]) every unacknowledged batch is
//!   forgotten and the queue is read again from its oldest record.
//! - A message carries records of one stream and one boot id, in queue order. It remembers
//!   the records it carries as [`Span`]s (pack key + record indices); the PUBACK removes
//!   exactly those, so acknowledgements may arrive in any order and cover part of a pack.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::queue::{prio_byte, Cursor, Entry, Queue, Span};
use super::queue_io::QueueIo;
use super::record::encode_batch;
use super::writer::Config;
use super::{now_ms, Priority};
use crate::mqtt::link::{LinkEvent, PublishError};

/// Upload counters.
#[derive(Debug, Default)]
pub struct Stats {
    acked_records: AtomicU64,
    acked_messages: AtomicU64,
    sent_records: AtomicU64,
    sent_messages: AtomicU64,
}

impl Stats {
    /// Records acknowledged by the broker (and removed from the queue).
    pub fn acked_records(&self) -> u64 {
        self.acked_records.load(Ordering::Relaxed)
    }
    /// Records handed to the link (including re-sends).
    pub fn sent_records(&self) -> u64 {
        self.sent_records.load(Ordering::Relaxed)
    }
    /// Messages acknowledged.
    pub fn acked_messages(&self) -> u64 {
        self.acked_messages.load(Ordering::Relaxed)
    }
    /// Messages handed to the link.
    pub fn sent_messages(&self) -> u64 {
        self.sent_messages.load(Ordering::Relaxed)
    }
}

/// (stream, boot) of a message.
type StreamBoot = (String, String);
/// Records of one entry going into a message: (entry index, record indices).
type Part = (usize, Vec<u32>);

struct InFlight {
    /// The records the message carries, pack by pack.
    spans: Vec<Span>,
    records: u64,
}

/// The uploader task state.
pub struct Uploader {
    io: QueueIo,
    queue: Queue,
    link: crate::mqtt::Handle,
    cfg: Config,
    device: String,
    stats: Arc<Stats>,
}

impl Uploader {
    /// A new uploader (run it with [`Uploader::run`]).
    pub fn new(
        io: QueueIo,
        queue: Queue,
        link: crate::mqtt::Handle,
        cfg: Config,
        device: String,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            io,
            queue,
            link,
            cfg,
            device,
            stats,
        }
    }

    /// Runs until cancelled.
    ///
    /// # Cancel safety
    /// Cancelling loses nothing: unacknowledged records stay in the queue.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(mut acks) = self.link.take_acks() else {
            tracing::error!("mqtt acknowledgements already taken; telemetry uploader not started");
            return;
        };
        let mut epoch = self.link.epoch();
        let mut connected = self.link.connected();
        let mut cursors: [Option<Cursor>; 3] = [None; 3];
        let mut inflight: HashMap<u64, InFlight> = HashMap::new();
        let window = usize::from(self.cfg.inflight);
        loop {
            if epoch.has_changed().unwrap_or(false) {
                epoch.borrow_and_update();
                if !inflight.is_empty() {
                    tracing::debug!(
                        batches = inflight.len(),
                        "connection lost; unacknowledged batches will be sent again"
                    );
                }
                inflight.clear();
                cursors = [None; 3];
            }
            if !*connected.borrow_and_update() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = connected.changed() => if r.is_err() { return },
                }
                continue;
            }
            if inflight.len() >= window {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    a = acks.recv() => match a { Some(a) => self.on_ack(a, &mut acks, &mut inflight).await, None => return },
                    _ = epoch.changed() => {}
                }
                continue;
            }
            let appended = self.queue.appended().notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let q = self.queue.clone();
            let (n, bytes) = (self.cfg.batch_records, self.cfg.batch_bytes);
            let c = cursors;
            let chunk = match self.io.run(move || q.read(&c, n, bytes)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "telemetry queue read failed");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "telemetry uploader stops");
                    return;
                }
            };
            let Some((prio, entries)) = chunk else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut appended => {}
                    a = acks.recv() => match a { Some(a) => self.on_ack(a, &mut acks, &mut inflight).await, None => return },
                    _ = epoch.changed() => {}
                    _ = connected.changed() => {}
                }
                continue;
            };
            // Linger: wait for a fuller batch while the oldest record is young.
            let size: usize = entries.iter().map(|e| e.value.len()).sum();
            let count: usize = entries.iter().map(|e| e.indices.len()).sum();
            if count < n && size < bytes && !self.cfg.batch_linger.is_zero() {
                let oldest = entries
                    .first()
                    .and_then(|e| Some(e.pack().ok()?.get(*e.indices.first()?)?.ts_ms))
                    .unwrap_or(0);
                let age = Duration::from_millis(now_ms().saturating_sub(oldest));
                if age < self.cfg.batch_linger {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.cfg.batch_linger - age) => {}
                        _ = &mut appended => {}
                        a = acks.recv() => match a { Some(a) => self.on_ack(a, &mut acks, &mut inflight).await, None => return },
                        _ = epoch.changed() => {}
                    }
                    continue;
                }
            }
            if let Some(last) = entries.last() {
                cursors[prio_byte(prio) as usize] = Some(last.cursor_after());
            }
            if !self.send_chunk(prio, entries, &mut inflight, &cancel).await {
                return;
            }
        }
    }

    /// Handles one acknowledgement plus any others already waiting, then removes their
    /// records and makes the removal durable with one flush, so a crash right after can
    /// only resend what was in flight.
    async fn on_ack(
        &self,
        ev: LinkEvent,
        acks: &mut tokio::sync::mpsc::Receiver<LinkEvent>,
        inflight: &mut HashMap<u64, InFlight>,
    ) {
        let mut spans = Vec::new();
        let mut messages = 0u64;
        let mut n = 0u64;
        let mut next = Some(ev);
        while let Some(LinkEvent::Acked(token)) = next {
            if let Some(f) = inflight.remove(&token) {
                spans.extend(f.spans);
                n += f.records;
                messages += 1;
            }
            next = acks.try_recv().ok();
        }
        if spans.is_empty() {
            return;
        }
        let q = self.queue.clone();
        match self
            .io
            .run(move || {
                q.remove(&spans)?;
                q.flush()
            })
            .await
        {
            Ok(Ok(())) => {
                self.stats.acked_records.fetch_add(n, Ordering::Relaxed);
                self.stats
                    .acked_messages
                    .fetch_add(messages, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot remove acknowledged records; they will be sent again")
            }
            Err(e) => tracing::error!(error = %e, "cannot remove acknowledged records"),
        }
    }

    /// Groups a chunk into messages (one stream and boot each, queue order kept), drops
    /// expired and damaged records, and hands the messages to the link. False when the link
    /// is gone or we are cancelled.
    async fn send_chunk(
        &self,
        _prio: Priority,
        entries: Vec<Entry>,
        inflight: &mut HashMap<u64, InFlight>,
        cancel: &CancellationToken,
    ) -> bool {
        let now = now_ms();
        let mut expired = Vec::new();
        let mut corrupt = Vec::new();
        // (stream, boot) -> (entry, live indices to send) in first-seen order. A pack holds
        // one stream and boot, so each entry goes to one group.
        let mut groups: Vec<(StreamBoot, Vec<Part>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let pack = match e.pack() {
                Ok(p) => p,
                Err(_) => {
                    corrupt.push(e.key.clone());
                    continue;
                }
            };
            let max_age = self
                .cfg
                .streams
                .get(pack.stream)
                .and_then(|s| s.max_age)
                .map(|d| d.as_millis() as u64);
            let (mut send, mut old) = (Vec::new(), Vec::new());
            for &ix in &e.indices {
                let ts = pack.records.get(ix as usize).map_or(0, |r| r.1);
                if max_age.is_some_and(|max| now.saturating_sub(ts) > max) {
                    old.push(ix);
                } else {
                    send.push(ix);
                }
            }
            if !old.is_empty() {
                expired.push(e.span(old));
            }
            if send.is_empty() {
                continue;
            }
            match groups
                .iter_mut()
                .find(|((s, b), _)| s == pack.stream && b == pack.boot)
            {
                Some((_, v)) => v.push((i, send)),
                None => groups.push((
                    (pack.stream.to_owned(), pack.boot.to_owned()),
                    vec![(i, send)],
                )),
            }
        }
        if !expired.is_empty() || !corrupt.is_empty() {
            let q = self.queue.clone();
            let _ = self
                .io
                .run(move || {
                    q.expire(&expired)?;
                    q.discard_corrupt(&corrupt)
                })
                .await;
        }
        for ((stream, boot), parts) in groups {
            let decoded: Vec<_> = parts
                .iter()
                .filter_map(|(i, ix)| Some((entries[*i].pack().ok()?, ix)))
                .collect();
            let records = decoded
                .iter()
                .flat_map(|(p, ix)| ix.iter().filter_map(|i| p.get(*i)));
            let mut payload = encode_batch(&self.device, &boot, &stream, records);
            drop(decoded);
            let topic = self.link.topics().telemetry(&stream);
            let token = loop {
                match self.link.publish_tracked(&topic, payload) {
                    Ok(t) => break t,
                    Err(PublishError::Full(p)) => {
                        payload = p;
                        tokio::select! {
                            _ = cancel.cancelled() => return false,
                            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                        }
                    }
                    Err(PublishError::Closed) => return false,
                }
            };
            let n: u64 = parts.iter().map(|(_, ix)| ix.len() as u64).sum();
            self.stats.sent_records.fetch_add(n, Ordering::Relaxed);
            self.stats.sent_messages.fetch_add(1, Ordering::Relaxed);
            inflight.insert(
                token,
                InFlight {
                    spans: parts
                        .into_iter()
                        .map(|(i, ix)| entries[i].span(ix))
                        .collect(),
                    records: n,
                },
            );
        }
        true
    }
}
