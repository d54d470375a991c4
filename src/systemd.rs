//! systemd integration without libsystemd: `sd_notify` datagrams to `$NOTIFY_SOCKET`
//! (READY, STOPPING, STATUS, WATCHDOG) and a watchdog pinger that only pings while the
//! event loop is live, so a wedged agent is restarted by systemd (`WatchdogSec=`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::liveness::Liveness;

/// A connection to the service manager, if we run under one with `Type=notify`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: String,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET`; `None` when not under systemd (or it is unusable).
    pub fn from_env() -> Option<Self> {
        let addr = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        let socket = UnixDatagram::unbound().ok()?;
        Some(Self { socket, addr })
    }

    /// Sends one state string (`READY=1`, `WATCHDOG=1`, `STATUS=…`). Errors are logged:
    /// a failing notify must never take the agent down.
    pub fn notify(&self, state: &str) {
        let res = if let Some(name) = self.addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| self.socket.send_to_addr(state.as_bytes(), &a))
        } else {
            self.socket.send_to(state.as_bytes(), &self.addr)
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, socket = %self.addr, "sd_notify failed");
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`), if it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval from a dedicated OS thread, but only while
/// `liveness` shows the tokio event loop ticking. Runs until `stop` is set.
pub fn spawn_watchdog(
    notifier: Notifier,
    interval: Duration,
    liveness: Liveness,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sd-watchdog".into())
        .spawn(move || {
            let period = interval / 2;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if liveness.is_live() {
                    notifier.notify("WATCHDOG=1");
                } else {
                    tracing::error!(
                        stalled_ms = liveness.since_last_tick().as_millis() as u64,
                        "event loop stalled; withholding watchdog ping"
                    );
                }
                std::thread::sleep(period);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: path.to_string_lossy().into_owned(),
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn watchdog_pings_only_while_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: path.to_string_lossy().into_owned(),
        };
        let live = Liveness::new();
        live.tick();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = spawn_watchdog(n, Duration::from_millis(100), live.clone(), stop.clone()).unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        // No more ticks: after the stale threshold the pings stop.
        std::thread::sleep(crate::liveness::STALE_AFTER + Duration::from_millis(100));
        while server.recv(&mut buf).is_ok() {}
        assert!(
            server.recv(&mut buf).is_err(),
            "pinged while the event loop was stalled"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
    }
}
