//! `fleetlet tail`: a cloud-side helper that subscribes to devices' telemetry and prints it
//! decoded, one record per line, with duplicates (at-least-once re-sends) removed.
//!
//! Output: `<device> <stream> #<seq> <RFC 3339 time> <payload JSON>`; with `--json`, one
//! JSON object per record: `{"device","boot","stream","seq","ts","payload"}`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use super::link::Backoff;
use super::topics::{self, Topics};
use crate::telemetry::record::Batch;

/// How many sequence numbers per (device, stream) are remembered for dedup.
const DEDUP_WINDOW: usize = 100_000;

/// `fleetlet tail` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Broker address, `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: String,
    /// Only this device (default: all devices).
    #[arg(long)]
    pub device: Option<String>,
    /// Only this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Topic prefix.
    #[arg(long, default_value = topics::DEFAULT_PREFIX)]
    pub prefix: String,
    /// CA certificate (PEM) of the broker: enables TLS.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// MQTT username (the password comes from the MQTT_PASSWORD environment variable).
    #[arg(long)]
    pub username: Option<String>,
    /// Print one JSON object per record.
    #[arg(long)]
    pub json: bool,
    /// Exit after printing this many (unique) records.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Errors of `fleetlet tail`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--broker` is not `host:port`.
    #[error("--broker {0:?} must be host:port")]
    Broker(String),
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Writing the output failed (closed pipe).
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.clone(),
        source,
    })
}

/// Runs until interrupted (or `--count` records were printed), writing to stdout.
///
/// # Errors
/// [`Error`] for bad arguments or a closed output.
pub async fn run(args: TailArgs) -> Result<std::process::ExitCode, Error> {
    let mut out = std::io::stdout().lock();
    run_to(args, &mut out).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Like [`run`], writing to `out`.
///
/// # Errors
/// As [`run`].
pub async fn run_to(args: TailArgs, out: &mut impl Write) -> Result<(), Error> {
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| Error::Broker(args.broker.clone()))?;
    let mut opts = MqttOptions::new(
        format!("fleetlet-tail-{:08x}", rand::random::<u32>()),
        host,
        port,
    );
    opts.set_max_packet_size(64 << 20, 64 << 20)
        .set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &args.username {
        opts.set_credentials(
            user.clone(),
            std::env::var("MQTT_PASSWORD").unwrap_or_default(),
        );
    }
    if let Some(ca) = &args.ca {
        let client_auth = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: read(ca)?,
                alpn: None,
                client_auth,
            },
        ));
    }
    let filter = match &args.stream {
        Some(s) => format!(
            "{}/{}/telemetry/{s}",
            args.prefix.trim_end_matches('/'),
            args.device.as_deref().unwrap_or("+")
        ),
        None => Topics::telemetry_filter(&args.prefix, args.device.as_deref()),
    };
    let (client, mut el) = AsyncClient::new(opts, 16);
    let mut seen: HashMap<(String, String), BTreeSet<u64>> = HashMap::new();
    let mut printed = 0u64;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let batch = match Batch::decode(&p.payload) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(topic = %p.topic, error = %e, "undecodable telemetry message");
                        continue;
                    }
                };
                let set = seen
                    .entry((batch.device.clone(), batch.stream.clone()))
                    .or_default();
                for r in batch.records {
                    if !set.insert(r.seq) {
                        continue;
                    }
                    if set.len() > DEDUP_WINDOW {
                        set.pop_first();
                    }
                    let line = if args.json {
                        serde_json::json!({"device": batch.device, "boot": batch.boot, "stream": batch.stream, "seq": r.seq, "ts": r.ts, "payload": r.payload}).to_string()
                    } else {
                        let ts = humantime::format_rfc3339_millis(
                            UNIX_EPOCH + Duration::from_millis(r.ts),
                        );
                        format!(
                            "{} {} #{} {ts} {}",
                            batch.device, batch.stream, r.seq, r.payload
                        )
                    };
                    writeln!(out, "{line}").map_err(Error::Output)?;
                    printed += 1;
                    if args.count.is_some_and(|c| printed >= c) {
                        out.flush().map_err(Error::Output)?;
                        return Ok(());
                    }
                }
                out.flush().map_err(Error::Output)?;
            }
            Ok(_) => {}
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "broker connection failed");
                eprintln!("fleetlet tail: {e}; retrying in {} ms", d.as_millis());
                tokio::time::sleep(d).await;
            }
        }
    }
}
