//! The task that owns the rumqttc `EventLoop`.
//!
//! Invariants:
//! - The event loop is polled continuously; after a connection error the task sleeps a
//!   jittered backoff (cancellable) and polls again, which reconnects.
//! - rumqttc would replay unacknowledged publishes after a reconnect; we drop them instead
//!   (`EventLoop::pending` is cleared) and bump [`Handle::epoch`]: the owner of a tracked
//!   publish (the telemetry uploader) re-sends from its durable queue. That keeps the
//!   pkid→token mapping exact and the at-least-once guarantee in one place.
//! - pkid→token mapping: tracked publishes are handed to rumqttc and their token pushed on a
//!   FIFO under one lock; rumqttc emits `Outgoing::Publish(pkid)` in the same order, so the
//!   front of the FIFO is the token of that pkid. The uploader keeps fewer publishes in
//!   flight than rumqttc's inflight limit, so pkids never collide.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::codec::{self, Downlink, Presence};
use super::topics::Topics;
use super::{Config, Error};
use crate::status::{Metric, Reporter, SubsystemState};

/// rumqttc inflight limit; the uploader's window must stay below it.
pub const MAX_INFLIGHT: u16 = 100;
const RECENT_DELAYS: usize = 64;

/// Something the link tells the owner of tracked publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker acknowledged the publish with this token.
    Acked(u64),
}

/// Why a publish was not handed to the link.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request queue is full; retry shortly.
    #[error("mqtt request queue is full")]
    Full(Vec<u8>),
    /// The link task has stopped.
    #[error("mqtt link has stopped")]
    Closed,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    downlink_ok: AtomicU64,
    downlink_bad: AtomicU64,
    downlink_dropped: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
    published_bytes: AtomicU64,
}

struct Shared {
    client: AsyncClient,
    topics: Topics,
    order: Mutex<VecDeque<Option<u64>>>,
    next_token: AtomicU64,
    acks: Mutex<Option<mpsc::Receiver<LinkEvent>>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    delays: Mutex<VecDeque<u64>>,
}

/// Cloneable handle on the link.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    connected: watch::Receiver<bool>,
    epoch: watch::Receiver<u64>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mqtt::Handle")
            .field("connected", &*self.connected.borrow())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Handle {
    /// Topic builder of this device.
    pub fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// Link state (true between CONNACK and the next error).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Incremented on every connection loss: tracked publishes not acknowledged by then
    /// are void and must be sent again.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.clone()
    }

    /// Takes the receiver of acknowledgements (only one owner: the uploader).
    pub fn take_acks(&self) -> Option<mpsc::Receiver<LinkEvent>> {
        lock(&self.shared.acks).take()
    }

    /// Hands a QoS 1 publish to the link and returns its token; a [`LinkEvent::Acked`] with
    /// that token follows the broker's PUBACK (unless the connection drops first, see
    /// [`Handle::epoch`]). Never blocks.
    ///
    /// # Errors
    /// [`PublishError::Full`] (payload returned) or [`PublishError::Closed`].
    pub fn publish_tracked(&self, topic: &str, payload: Vec<u8>) -> Result<u64, PublishError> {
        let len = payload.len() as u64;
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        self.push(topic, payload, false, Some(token))?;
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .counters
            .published_bytes
            .fetch_add(len, Ordering::Relaxed);
        Ok(token)
    }

    /// Publishes a QoS 1 message without tracking its acknowledgement (reported deployment
    /// state, command results). Never blocks.
    ///
    /// # Errors
    /// As [`Handle::publish_tracked`].
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), PublishError> {
        self.push(topic, payload, retain, None)
    }

    fn push(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        token: Option<u64>,
    ) -> Result<(), PublishError> {
        let mut order = lock(&self.shared.order);
        match self
            .shared
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                order.push_back(token);
                Ok(())
            }
            Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                Err(PublishError::Full(p.payload.to_vec()))
            }
            Err(_) => Err(PublishError::Closed),
        }
    }

    /// Messages handed to the link / acknowledged / bytes handed (since start).
    pub fn counters(&self) -> (u64, u64, u64) {
        let c = &self.shared.counters;
        (
            c.published.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.published_bytes.load(Ordering::Relaxed),
        )
    }

    /// Downlink messages accepted / refused as invalid / dropped because the channel was full.
    pub fn downlink_counters(&self) -> (u64, u64, u64) {
        let c = &self.shared.counters;
        (
            c.downlink_ok.load(Ordering::Relaxed),
            c.downlink_bad.load(Ordering::Relaxed),
            c.downlink_dropped.load(Ordering::Relaxed),
        )
    }

    /// The last connection error, in words.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// The most recent reconnect delays in milliseconds (oldest first).
    pub fn recent_reconnect_delays_ms(&self) -> Vec<u64> {
        lock(&self.shared.delays).iter().copied().collect()
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, min_delay * 2^n)]` (AWS architecture blog "Exponential Backoff and Jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The cap of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = cap.as_millis() as u64;
        // Never zero: a tight reconnect loop must still yield.
        Duration::from_millis(rand::random::<u64>() % (ms.max(1) + 1))
            .max(Duration::from_millis(10))
    }

    /// After a successful connect.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Validity window (unix seconds) of the first certificate in a PEM file.
pub fn cert_validity(pem: &[u8]) -> Option<(i64, i64)> {
    let der = rustls_pemfile::certs(&mut std::io::Cursor::new(pem))
        .next()?
        .ok()?;
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&l0, rest) = rest.split_first()?;
        let (len, rest) = if l0 < 0x80 {
            (l0 as usize, rest)
        } else {
            let n = (l0 & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (
                rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize),
                &rest[n..],
            )
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?;
        let (year, rest) = match tag {
            0x17 => {
                let y: i64 = s.get(0..2)?.parse().ok()?;
                (if y < 50 { 2000 + y } else { 1900 + y }, s.get(2..)?)
            }
            0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let n = |i: usize| rest.get(i..i + 2).and_then(|x| x.parse::<i64>().ok());
        let (m, d, hh, mm, ss) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8).unwrap_or(0));
        // Days from civil (H. Hinnant).
        let y = if m <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
    }
    let (_, cert, _) = tlv(&der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = tlv(rest)?;
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Some((time(t1, v1)?, time(t2, v2)?))
}

fn describe(
    e: &rumqttc::ConnectionError,
    cfg: &Config,
    client_validity: Option<(i64, i64)>,
) -> String {
    let text = e.to_string();
    let now = (crate::telemetry::now_ms() / 1000) as i64;
    let fmt = |t: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64),
        )
    };
    let cert_hint;
    let hint = if let Some((_, after)) = client_validity.filter(|(_, a)| now > *a) {
        cert_hint = format!(
            " (the client certificate mqtt.tls.client_cert expired at {})",
            fmt(after)
        );
        cert_hint.as_str()
    } else if let Some((before, _)) = client_validity.filter(|(b, _)| now < *b) {
        cert_hint = format!(
            " (the client certificate mqtt.tls.client_cert is not valid before {})",
            fmt(before)
        );
        cert_hint.as_str()
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        " (the broker's certificate is not signed by the CA in mqtt.tls.ca)"
    } else if text.to_ascii_lowercase().contains("expired") {
        " (a certificate has expired: check mqtt.tls.client_cert and the broker's certificate)"
    } else if text.contains("NotValidForName") {
        " (the broker's certificate does not name mqtt.host)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        " (the broker requires a client certificate: set mqtt.tls.client_cert and client_key)"
    } else if matches!(e, rumqttc::ConnectionError::ConnectionRefused(_)) {
        " (check mqtt.username / mqtt.password and the broker's ACL)"
    } else {
        ""
    };
    format!(
        "connection to {}:{} failed: {text}{hint}",
        cfg.host, cfg.port
    )
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(super) fn start(
    svc: &crate::runtime::Services,
    cfg: &Config,
) -> Result<(Handle, mpsc::Receiver<Downlink>), Error> {
    let device = svc.config.device.id.clone();
    if !super::topics::is_valid_segment(&device) {
        return Err(Error::DeviceId(device));
    }
    let topics = Topics::new(&cfg.prefix, &device);
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let mut opts = MqttOptions::new(device.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(cfg.keepalive)
        .set_clean_session(true)
        .set_inflight(MAX_INFLIGHT)
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_request_channel_capacity(MAX_INFLIGHT as usize * 2)
        .set_last_will(LastWill::new(
            topics.status(),
            Presence {
                state: "offline".into(),
                version: version.clone(),
                boot: svc.boot_id.clone(),
            }
            .to_bytes(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &cfg.username {
        let pass = cfg
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        opts.set_credentials(user.clone(), pass);
    }
    let mut client_validity = None;
    if let Some(tls) = &cfg.tls {
        let ca = read_file("mqtt.tls.ca", &tls.ca)?;
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((
                read_file("mqtt.tls.client_cert", c)?,
                read_file("mqtt.tls.client_key", k)?,
            )),
            _ => None,
        };
        client_validity = client_auth.as_ref().and_then(|(c, _)| cert_validity(c));
        let now = (crate::telemetry::now_ms() / 1000) as i64;
        if client_validity.is_some_and(|(b, a)| now < b || now > a) {
            tracing::error!(cert = ?tls.client_cert, "the client certificate is outside its validity period; the broker will refuse it");
        }
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            },
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_INFLIGHT as usize * 2);
    let mut netopts = eventloop.network_options();
    netopts.set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(netopts);

    let (acks_tx, acks_rx) = mpsc::channel(MAX_INFLIGHT as usize * 4);
    let (conn_tx, conn_rx) = watch::channel(false);
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let (down_tx, down_rx) = mpsc::channel(super::DEFAULT_DOWNLINK_CAPACITY);
    let shared = Arc::new(Shared {
        client,
        topics,
        order: Mutex::new(VecDeque::new()),
        next_token: AtomicU64::new(1),
        acks: Mutex::new(Some(acks_rx)),
        counters: Counters::default(),
        last_error: Mutex::new(None),
        delays: Mutex::new(VecDeque::new()),
    });
    let handle = Handle {
        shared: shared.clone(),
        connected: conn_rx,
        epoch: epoch_rx,
    };
    let reporter = svc.status.register("mqtt");
    reporter.set_state(SubsystemState::Degraded);
    let task = Task {
        client_validity,
        shared,
        cfg: cfg.clone(),
        groups: svc.config.device.groups.clone(),
        presence: Presence {
            state: "online".into(),
            version,
            boot: svc.boot_id.clone(),
        },
        acks_tx,
        conn_tx,
        epoch_tx,
        down_tx,
        reporter,
        handle: handle.clone(),
    };
    svc.tracker
        .spawn(task.run(eventloop, svc.cancel.child_token()));
    Ok((handle, down_rx))
}

struct Task {
    client_validity: Option<(i64, i64)>,
    shared: Arc<Shared>,
    cfg: Config,
    groups: Vec<String>,
    presence: Presence,
    acks_tx: mpsc::Sender<LinkEvent>,
    conn_tx: watch::Sender<bool>,
    epoch_tx: watch::Sender<u64>,
    down_tx: mpsc::Sender<Downlink>,
    reporter: Reporter,
    handle: Handle,
}

impl Task {
    async fn run(self, mut eventloop: EventLoop, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        let mut pkids: HashMap<u16, u64> = HashMap::new();
        let mut report = tokio::time::interval(Duration::from_secs(1));
        'run: loop {
            // One `poll` future lives across report ticks: rumqttc's poll is not cancel-safe
            // while it connects, and dropping it there abandons a connection whose CONNECT
            // the broker already accepted, so the broker publishes our Last Will ("offline")
            // when the next attempt takes the session over.
            let event = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break 'run,
                        _ = report.tick() => self.report(),
                        ev = &mut poll => break ev,
                    }
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    self.shared
                        .counters
                        .connects
                        .fetch_add(1, Ordering::Relaxed);
                    let filters = self.shared.topics.downlink_filters(&self.groups);
                    let subs = filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                    if let Err(e) = self.shared.client.try_subscribe_many(subs) {
                        tracing::warn!(error = %e, "cannot queue downlink subscriptions");
                    }
                    if let Err(e) = self.handle.publish(
                        &self.shared.topics.status(),
                        self.presence.to_bytes(),
                        true,
                    ) {
                        tracing::warn!(error = %e, "cannot queue online presence");
                    }
                    let _ = self.conn_tx.send(true);
                    *lock(&self.shared.last_error) = None;
                    self.reporter.set_state(SubsystemState::Running);
                    tracing::info!(host = %self.cfg.host, port = self.cfg.port, "mqtt connected");
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    if let Some(Some(token)) = lock(&self.shared.order).pop_front() {
                        pkids.insert(pkid, token);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(token) = pkids.remove(&ack.pkid) {
                        self.shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                        // Capacity exceeds the inflight limit, so this cannot be full.
                        let _ = self.acks_tx.try_send(LinkEvent::Acked(token));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.downlink(&p.topic, &p.payload),
                Ok(_) => {}
                Err(e) => {
                    let was_connected = *self.conn_tx.borrow();
                    let _ = self.conn_tx.send(false);
                    {
                        // Drop what rumqttc would replay; the owners re-send from durable state.
                        let mut order = lock(&self.shared.order);
                        eventloop.clean();
                        eventloop.pending.clear();
                        order.clear();
                    }
                    pkids.clear();
                    self.epoch_tx.send_modify(|e| *e += 1);
                    let text = describe(&e, &self.cfg, self.client_validity);
                    if was_connected {
                        self.shared
                            .counters
                            .disconnects
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    *lock(&self.shared.last_error) = Some(text.clone());
                    self.reporter.set_state(SubsystemState::Degraded);
                    let delay = backoff.next_delay();
                    {
                        let mut d = lock(&self.shared.delays);
                        if d.len() >= RECENT_DELAYS {
                            d.pop_front();
                        }
                        d.push_back(delay.as_millis() as u64);
                    }
                    tracing::warn!(error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt link down; telemetry keeps buffering");
                    self.report();
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Graceful stop: say goodbye (the Last Will only fires on unexpected loss).
        if *self.conn_tx.borrow() {
            let offline = Presence {
                state: "offline".into(),
                ..self.presence.clone()
            };
            let _ = self
                .handle
                .publish(&self.shared.topics.status(), offline.to_bytes(), true);
            let _ = self.shared.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = self.conn_tx.send(false);
        self.reporter.set_state(SubsystemState::Stopped);
    }

    fn downlink(&self, topic: &str, payload: &[u8]) {
        let c = &self.shared.counters;
        let Some(kind) = self.shared.topics.parse_downlink(topic) else {
            c.downlink_bad.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, "message on an unexpected topic ignored");
            return;
        };
        match codec::decode(kind, payload, self.cfg.downlink_max_bytes) {
            Ok(msg) => {
                c.downlink_ok.fetch_add(1, Ordering::Relaxed);
                if self.down_tx.try_send(msg).is_err() {
                    c.downlink_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic, "downlink channel full; message dropped");
                }
            }
            Err(e) => {
                c.downlink_bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, error = %e, "bad downlink payload ignored");
            }
        }
    }

    fn report(&self) {
        let c = &self.shared.counters;
        let connected = *self.conn_tx.borrow();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.reporter.set_detail(json!({
            "broker": format!("{}:{}", self.cfg.host, self.cfg.port),
            "tls": self.cfg.tls.is_some(),
            "connected": connected,
            "connects": get(&c.connects),
            "disconnects": get(&c.disconnects),
            "last_error": lock(&self.shared.last_error).clone(),
            "published": get(&c.published),
            "acked": get(&c.acked),
            "downlink": { "ok": get(&c.downlink_ok), "bad": get(&c.downlink_bad), "dropped": get(&c.downlink_dropped) },
            "recent_reconnect_delays_ms": lock(&self.shared.delays).iter().rev().take(8).collect::<Vec<_>>(),
        }));
        self.reporter.set_metrics(vec![
            Metric::gauge(
                "fleetlet_mqtt_connected",
                "1 when the MQTT link is up",
                if connected { 1.0 } else { 0.0 },
            ),
            Metric::counter(
                "fleetlet_mqtt_connects_total",
                "successful MQTT connects",
                get(&c.connects) as f64,
            ),
            Metric::counter(
                "fleetlet_mqtt_disconnects_total",
                "MQTT connection losses",
                get(&c.disconnects) as f64,
            ),
            Metric::counter(
                "fleetlet_mqtt_published_total",
                "tracked publishes handed to the link",
                get(&c.published) as f64,
            ),
            Metric::counter(
                "fleetlet_mqtt_acked_total",
                "tracked publishes acknowledged by the broker",
                get(&c.acked) as f64,
            ),
            Metric::counter(
                "fleetlet_mqtt_downlink_total",
                "downlink messages by outcome",
                get(&c.downlink_ok) as f64,
            )
            .label("outcome", "ok"),
            Metric::counter(
                "fleetlet_mqtt_downlink_total",
                "downlink messages by outcome",
                get(&c.downlink_bad) as f64,
            )
            .label("outcome", "bad"),
            Metric::counter(
                "fleetlet_mqtt_downlink_total",
                "downlink messages by outcome",
                get(&c.downlink_dropped) as f64,
            )
            .label("outcome", "dropped"),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_validity_is_read_from_pem() {
        // openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1
        //   -subj /CN=t  (generated 2026-12-02, valid one day)
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=t",
                "-keyout",
            ])
            .arg(dir.path().join("k.pem"))
            .arg("-out")
            .arg(dir.path().join("c.pem"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            panic!("openssl is required for this test (apt openssl)");
        }
        let (before, after) =
            cert_validity(&std::fs::read(dir.path().join("c.pem")).unwrap()).unwrap();
        let now = (crate::telemetry::now_ms() / 1000) as i64;
        assert!(
            (before - now).abs() < 120,
            "notBefore {before} vs now {now}"
        );
        assert_eq!(after - before, 86_400);
        assert!(cert_validity(b"not a pem").is_none());
    }

    #[test]
    fn backoff_grows_to_the_cap_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let caps: Vec<_> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay();
                c.as_millis()
            })
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        let delays: std::collections::HashSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(
            delays.len() > 10,
            "full jitter must spread delays: {delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
