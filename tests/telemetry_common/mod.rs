//! Shared helpers of the telemetry integration tests: a real mosquitto on a free loopback
//! port, a collecting subscriber, and an in-process agent (queue + link + uploader).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetlet::telemetry::record::Batch;

#[path = "../agent_common/mod.rs"]
mod agent_common;
// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use agent_common::{free_port, status};

pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// A mosquitto process with its own config and persistence directory.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Writes the config (listener on 127.0.0.1:port plus `extra`) without starting.
    pub fn new(dir: &Path, port: u16, extra: &str) -> Self {
        let bdir = dir.join(format!("broker-{port}"));
        std::fs::create_dir_all(&bdir).unwrap();
        let conf = bdir.join("mosquitto.conf");
        // Run as ourselves: as root, mosquitto would switch to user `mosquitto`, which cannot
        // read the test's private temp dir (keys, persistence).
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        std::fs::write(
            &conf,
            format!(
                "user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n{extra}\n",
                bdir.display()
            ),
        )
        .unwrap();
        Self {
            port,
            dir: bdir,
            conf,
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt mosquitto)");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything a subscriber received, decoded.
#[derive(Default)]
pub struct Received {
    /// (device, stream) -> seqs in arrival order (with duplicates).
    pub seqs: BTreeMap<(String, String), Vec<u64>>,
    pub records: BTreeMap<(String, String), BTreeMap<u64, serde_json::Value>>,
    /// (device, stream, seq) -> boot id the record arrived with.
    pub boots: BTreeMap<(String, String, u64), String>,
    pub messages: u64,
    pub undecodable: u64,
    pub other: Vec<(String, Vec<u8>)>,
}

impl Received {
    pub fn unique(&self, stream: &str) -> usize {
        self.records
            .iter()
            .filter(|((_, s), _)| s == stream)
            .map(|(_, r)| r.len())
            .sum()
    }
    pub fn total(&self, stream: &str) -> usize {
        self.seqs
            .iter()
            .filter(|((_, s), _)| s == stream)
            .map(|(_, r)| r.len())
            .sum()
    }
    /// Newly seen seqs of each stream arrive in increasing order and are exactly 0..n.
    pub fn assert_complete_and_ordered(&self, stream: &str, n: u64) {
        let mut seen = HashSet::new();
        let mut last: Option<u64> = None;
        for ((_, s), seqs) in &self.seqs {
            if s != stream {
                continue;
            }
            for q in seqs {
                if seen.insert(*q) {
                    if let Some(l) = last {
                        assert!(*q > l, "stream {stream}: new seq {q} arrived after {l}");
                    }
                    last = Some(*q);
                }
            }
        }
        let missing: Vec<u64> = (0..n).filter(|q| !seen.contains(q)).take(10).collect();
        assert!(
            missing.is_empty(),
            "stream {stream}: missing seqs (first 10) {missing:?} of {n}; got {}",
            seen.len()
        );
        assert_eq!(
            seen.len() as u64,
            n,
            "stream {stream}: unexpected extra seqs"
        );
    }
}

/// A persistent-session QoS 1 subscriber on `filter` running on its own thread.
pub struct Collector {
    pub got: Arc<Mutex<Received>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(port: u16, filters: &[&str]) -> Self {
        let got = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut o = rumqttc::MqttOptions::new(
                    format!("collector-{}", rand::random::<u32>()),
                    "127.0.0.1",
                    port,
                );
                o.set_clean_session(false)
                    .set_max_packet_size(64 << 20, 64 << 20)
                    .set_keep_alive(Duration::from_secs(5));
                let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
                let mut ready = Some(ready_tx);
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), el.poll()).await {
                        Err(_) => {}
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                            for f in &filters {
                                c.subscribe(f.clone(), rumqttc::QoS::AtLeastOnce)
                                    .await
                                    .unwrap();
                            }
                        }
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                            let mut g = g.lock().unwrap();
                            if p.topic.contains("/telemetry/") {
                                g.messages += 1;
                                match Batch::decode(&p.payload) {
                                    Ok(b) => {
                                        let k = (b.device.clone(), b.stream.clone());
                                        for r in b.records {
                                            g.seqs.entry(k.clone()).or_default().push(r.seq);
                                            g.boots.insert(
                                                (k.0.clone(), k.1.clone(), r.seq),
                                                b.boot.clone(),
                                            );
                                            g.records
                                                .entry(k.clone())
                                                .or_default()
                                                .insert(r.seq, r.payload);
                                        }
                                    }
                                    Err(_) => g.undecodable += 1,
                                }
                            } else {
                                g.other.push((p.topic.clone(), p.payload.to_vec()));
                            }
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("collector subscribed");
        Self {
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.got.lock().unwrap())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An agent inside the test process: queue, writer, uploader and link on a tokio runtime.
pub struct Harness {
    pub svc: fleetlet::runtime::Services,
    pub sink: fleetlet::telemetry::Sink,
    pub telemetry: fleetlet::telemetry::Handle,
    pub link: Option<fleetlet::mqtt::Handle>,
    pub downlink: Option<tokio::sync::mpsc::Receiver<fleetlet::mqtt::codec::Downlink>>,
}

pub fn mqtt_config(port: u16) -> fleetlet::mqtt::Config {
    fleetlet::mqtt::Config {
        enabled: true,
        host: "127.0.0.1".into(),
        port,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        ..Default::default()
    }
}

impl Harness {
    pub async fn start(
        dir: &Path,
        device: &str,
        tcfg: fleetlet::telemetry::Config,
        mcfg: Option<fleetlet::mqtt::Config>,
        intake: usize,
    ) -> Self {
        let mut config = fleetlet::config::Config::default();
        config.device.id = device.into();
        config.device.groups = vec!["eu".into()];
        let data = fleetlet::datadir::DataDir::new(dir.join("data"));
        data.create().unwrap();
        let (db, quarantine) = data.open_db(8 << 20, Some(500)).unwrap();
        let (sink, rx) = fleetlet::telemetry::Sink::channel(intake);
        let svc = fleetlet::runtime::Services {
            config: Arc::new(config),
            data,
            db,
            cancel: tokio_util::sync::CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
            status: fleetlet::status::Registry::new(),
            telemetry: sink.clone(),
            boot_id: fleetlet::runtime::new_boot_id(),
            liveness: fleetlet::liveness::Liveness::new(),
            ops: Default::default(),
        };
        let (link, downlink) = match mcfg {
            Some(m) => {
                let (h, d) = fleetlet::mqtt::start(&svc, &m).unwrap();
                (Some(h), Some(d))
            }
            None => (None, None),
        };
        let telemetry = fleetlet::telemetry::start(
            &svc,
            &tcfg,
            fleetlet::telemetry::Inputs {
                intake: rx,
                link: link.clone(),
                quarantine,
            },
        )
        .await
        .unwrap();
        Self {
            svc,
            sink,
            telemetry,
            link,
            downlink,
        }
    }

    pub async fn stop(self) {
        self.svc.cancel.cancel();
        self.svc.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.svc.tracker.wait())
            .await
            .expect("tasks stop");
    }
}

pub fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({ "i": i })
}

/// Async wait with a deadline.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}
