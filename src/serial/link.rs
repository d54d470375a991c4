//! The link task: owns the port, runs sessions (handshake → heartbeats/status), reconnects.
//! See the module docs of [`crate::serial`] for the invariants.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::proto::{self, Faults, HostMsg, McuMsg, Refusal, Status, PROTOCOL_VERSION};
use super::{Command, Config, Deps, Error, Io, LinkState, Port, Workload};
use crate::estop::Source;
use crate::status::{Metric, SubsystemState};
use crate::telemetry::Priority;

/// Round-trip samples kept for the percentiles.
const RTT_SAMPLES: usize = 512;
/// Heartbeats awaiting their ack (older ones count as lost).
const IN_FLIGHT: usize = 32;
/// A write that takes longer than this means the port is wedged.
const WRITE_TIMEOUT: Duration = Duration::from_millis(250);
/// Auto-enable is re-requested at most this often while the motors stay off.
const ENABLE_RETRY: Duration = Duration::from_secs(1);
/// How long an operator command waits for the MCU's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Detail/metrics in the status registry are refreshed at most this often.
const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// Telemetry stream of the periodic MCU record.
const STREAM: &str = "mcu";

/// An operator command waiting for the MCU's answer.
struct Pending {
    kind: PendingKind,
    seqs: Vec<u32>,
    reply: oneshot::Sender<Result<LinkState, Error>>,
    deadline: tokio::time::Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PendingKind {
    Arm,
    Clear,
    Disarm,
}

impl PendingKind {
    fn done(self, s: &Status) -> bool {
        match self {
            Self::Arm => s.motor_enabled,
            Self::Clear => s.faults.is_empty(),
            Self::Disarm => !s.motor_enabled,
        }
    }
}

/// The link task's state. Counters survive reconnects.
pub struct Link {
    deps: Deps,
    cfg: Config,
    port: Arc<dyn Port>,
    workload: Arc<dyn Workload>,
    commands: mpsc::Receiver<Command>,
    state_tx: watch::Sender<LinkState>,
    state: LinkState,
    seq: u32,
    rtts: VecDeque<u64>,
    in_flight: VecDeque<(u32, Instant)>,
    /// The MCU's e-stop level last reported to the e-stop engine.
    estop_engaged: bool,
    /// The e-stop engine's levels (the board's e-stop input among them).
    estop: watch::Receiver<crate::estop::State>,
    /// Input presses an operator has cleared (`mcu.clear_estop` / `mcu.arm`); motor power
    /// stays off while the engine has counted more.
    input_presses_cleared: u64,
    /// Input presses the link has sent `Disarm` for.
    input_presses_disarmed: u64,
    operator_disarmed: bool,
    healthy: bool,
    last_enable_request: Option<Instant>,
    last_status_refresh: Option<Instant>,
    last_reported_error: Option<String>,
}

impl Link {
    pub(crate) fn new(
        deps: Deps,
        cfg: Config,
        port: Arc<dyn Port>,
        workload: Arc<dyn Workload>,
        commands: mpsc::Receiver<Command>,
        state_tx: watch::Sender<LinkState>,
    ) -> Self {
        let estop = deps.estop.subscribe();
        Self {
            deps,
            cfg,
            port,
            workload,
            commands,
            state_tx,
            state: LinkState::default(),
            seq: 0,
            rtts: VecDeque::with_capacity(RTT_SAMPLES),
            in_flight: VecDeque::with_capacity(IN_FLIGHT),
            estop_engaged: false,
            estop,
            input_presses_cleared: 0,
            input_presses_disarmed: 0,
            operator_disarmed: false,
            healthy: true,
            last_enable_request: None,
            last_status_refresh: None,
            last_reported_error: None,
        }
    }

    /// Runs sessions until cancelled, reconnecting with capped exponential backoff.
    ///
    /// # Cancel safety
    /// Meant to be spawned; on cancel it sends `Disarm` (best effort) and returns.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.deps.status.set_state(SubsystemState::Starting);
        let mut backoff = self.cfg.reconnect_min;
        loop {
            let sessions_before = self.state.sessions;
            let result = self.session(&cancel).await;
            self.state.connected = false;
            self.state.motor_enabled = false;
            self.in_flight.clear();
            if cancel.is_cancelled() {
                self.deps.status.set_state(SubsystemState::Stopped);
                self.publish(true);
                return;
            }
            if let Err(e) = result {
                self.report_session_error(&e);
            }
            if self.state.sessions != sessions_before {
                backoff = self.cfg.reconnect_min;
            }
            self.publish(true);
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.deps.status.set_state(SubsystemState::Stopped);
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.cfg.reconnect_max);
            // Commands sent while disconnected fail fast instead of timing out.
            while let Ok(cmd) = self.commands.try_recv() {
                reply_of(cmd).send(Err(Error::NotConnected)).ok();
            }
        }
    }

    fn report_session_error(&mut self, e: &Error) {
        let text = e.to_string();
        let mismatch = matches!(e, Error::ProtocolMismatch { .. });
        self.deps.status.set_state(if mismatch {
            SubsystemState::Failed
        } else {
            SubsystemState::Degraded
        });
        self.state.last_error = Some(text.clone());
        if self.last_reported_error.as_deref() == Some(text.as_str()) {
            return; // a port that stays missing is reported once, not every backoff
        }
        self.last_reported_error = Some(text.clone());
        let was_up = self.state.heartbeats_sent > 0 && !mismatch;
        tracing::warn!(port = %self.port.name(), error = %text, "mcu link down");
        let kind = if mismatch {
            "mcu_protocol_mismatch"
        } else {
            "mcu_link_lost"
        };
        self.deps.telemetry.event(
            Priority::Critical,
            kind,
            json!({ "port": self.port.name(), "error": text, "was_up": was_up }),
        );
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    async fn send(&mut self, wr: &mut WriteHalf<Box<dyn Io>>, msg: HostMsg) -> Result<u32, Error> {
        let seq = self.next_seq();
        let mut out = [0u8; proto::MAX_FRAME];
        let n = proto::encode(seq, &msg, &mut out).map_err(|e| Error::Io {
            port: self.port.name(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let port = self.port.name();
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out[..n])).await {
            Ok(Ok(())) => Ok(seq),
            Ok(Err(source)) => Err(Error::Io { port, source }),
            Err(_) => Err(Error::Io {
                port,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"),
            }),
        }
    }

    /// One session: open, handshake, then serve until the port fails or cancel.
    async fn session(&mut self, cancel: &CancellationToken) -> Result<(), Error> {
        let io = self.port.open().map_err(|source| Error::Open {
            port: self.port.name(),
            source,
        })?;
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut decoder = proto::Decoder::<McuMsg>::new();
        let mut buf = [0u8; 256];

        // A lone delimiter makes the MCU drop any half frame it holds; then Hello.
        wr.write_all(&[0]).await.map_err(|source| Error::Io {
            port: self.port.name(),
            source,
        })?;
        self.send(
            &mut wr,
            HostMsg::Hello {
                protocol: PROTOCOL_VERSION,
                agent: agent_version(),
            },
        )
        .await?;
        let deadline = tokio::time::Instant::now() + self.cfg.handshake_timeout;
        let ack = loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::HandshakeTimeout { port: self.port.name(), timeout: self.cfg.handshake_timeout });
                }
                r = rd.read(&mut buf) => self.read_result(r)?,
            };
            let mut found = None;
            for b in &buf[..n] {
                match decoder.push(*b) {
                    Some(Ok(f)) => {
                        if let McuMsg::HelloAck { .. } = f.msg {
                            found = Some(f.msg);
                        }
                    }
                    Some(Err(_)) => self.state.rx_errors += 1,
                    None => {}
                }
            }
            if let Some(a) = found {
                break a;
            }
        };
        let McuMsg::HelloAck {
            protocol,
            accepted,
            firmware,
            board,
            heartbeat_timeout_ms,
        } = ack
        else {
            return Ok(());
        };
        self.state.firmware = Some(firmware.to_string());
        self.state.board = Some(board.name());
        self.state.mcu_protocol = Some(protocol);
        if protocol != PROTOCOL_VERSION || !accepted {
            return Err(Error::ProtocolMismatch {
                agent: PROTOCOL_VERSION,
                mcu: protocol,
                firmware: firmware.to_string(),
            });
        }
        self.state.connected = true;
        self.state.sessions += 1;
        self.state.last_error = None;
        self.last_reported_error = None;
        self.last_enable_request = None;
        // A new session starts disarmed: presses so far need no Disarm of their own.
        self.input_presses_disarmed = self.estop.borrow_and_update().input_presses;
        self.deps.status.set_state(SubsystemState::Running);
        tracing::info!(port = %self.port.name(), %firmware, board = board.name(), protocol, "mcu link up");
        self.deps.telemetry.event(
            Priority::Normal,
            "mcu_connected",
            json!({
                "port": self.port.name(),
                "firmware": firmware.to_string(),
                "board": board.name(),
                "protocol": protocol,
                "agent_protocol": PROTOCOL_VERSION,
                "heartbeat_timeout_ms": heartbeat_timeout_ms,
            }),
        );
        if self.cfg.heartbeat_period.as_millis() * 2 > u128::from(heartbeat_timeout_ms) {
            tracing::warn!(period = ?self.cfg.heartbeat_period, heartbeat_timeout_ms, "heartbeat period is more than half the mcu timeout; motors may drop out on jitter");
        }
        self.publish(true);

        let mut hb = tokio::time::interval(self.cfg.heartbeat_period);
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tele = tokio::time::interval(self.cfg.telemetry_period);
        tele.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut pending: Option<Pending> = None;
        self.send(&mut wr, HostMsg::GetStatus).await?;

        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Clean shutdown: disarm so the MCU does not latch a heartbeat fault.
                    let _ = self.send(&mut wr, HostMsg::Disarm).await;
                    let _ = wr.flush().await;
                    return Ok(());
                }
                _ = hb.tick() => {
                    if last_rx.elapsed() > self.cfg.mcu_silence_timeout {
                        return Err(Error::Silent(self.cfg.mcu_silence_timeout));
                    }
                    self.heartbeat(&mut wr).await?;
                    if let Some(p) = pending.take() {
                        if tokio::time::Instant::now() >= p.deadline {
                            let msg = match p.kind {
                                PendingKind::Arm => "the mcu did not enable motor power in time",
                                PendingKind::Clear => "the mcu did not clear its faults in time",
                                PendingKind::Disarm => "the mcu did not disarm in time",
                            };
                            p.reply.send(Err(Error::Refused(msg))).ok();
                        } else {
                            pending = Some(p);
                        }
                    }
                    self.publish(false);
                }
                _ = tele.tick() => self.emit_record(),
                r = rd.read(&mut buf) => {
                    let n = self.read_result(r)?;
                    last_rx = Instant::now();
                    for b in &buf[..n] {
                        match decoder.push(*b) {
                            Some(Ok(f)) => self.on_frame(f.msg, &mut pending),
                            Some(Err(e)) => {
                                self.state.rx_errors += 1;
                                tracing::debug!(error = %e, "dropped a corrupt frame from the mcu");
                            }
                            None => {}
                        }
                    }
                }
                Some(cmd) = self.commands.recv(), if pending.is_none() => {
                    pending = self.command(&mut wr, cmd).await?;
                }
                r = self.estop.changed() => {
                    if r.is_ok() {
                        self.on_estop_input(&mut wr).await?;
                    }
                }
            }
        }
    }

    fn read_result(&self, r: std::io::Result<usize>) -> Result<usize, Error> {
        match r {
            Ok(0) => Err(Error::Io {
                port: self.port.name(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "port closed"),
            }),
            Ok(n) => Ok(n),
            Err(source) => Err(Error::Io {
                port: self.port.name(),
                source,
            }),
        }
    }

    /// One heartbeat tick: send only while healthy; request enable when due.
    async fn heartbeat(&mut self, wr: &mut WriteHalf<Box<dyn Io>>) -> Result<(), Error> {
        // The input's level as of now, even if its change is not handled yet: enable is
        // never requested in the gap between a press and its `Disarm`.
        self.sync_input_state();
        let live = self.deps.liveness.is_live();
        let motion_ok = self.workload.motion_ok(&self.cfg.motion_critical);
        let healthy = live && motion_ok;
        if healthy != self.healthy {
            self.healthy = healthy;
            let reason = if !live {
                "agent event loop stalled"
            } else if !motion_ok {
                "a motion-critical process is not healthy"
            } else {
                "healthy again"
            };
            tracing::warn!(
                reason,
                "mcu heartbeats {}",
                if healthy { "resumed" } else { "withheld" }
            );
            self.deps.telemetry.event(
                Priority::Critical,
                if healthy {
                    "mcu_heartbeats_resumed"
                } else {
                    "mcu_heartbeats_withheld"
                },
                json!({ "reason": reason, "processes": self.cfg.motion_critical }),
            );
        }
        if !healthy {
            self.state.heartbeats_withheld += 1;
            return Ok(());
        }
        if self.state.estop_input_pressed && self.state.motor_enabled {
            // The Disarm sent on the press was lost or raced an enable: send it again.
            self.send(wr, HostMsg::Disarm).await?;
        }
        let seq = self.send(wr, HostMsg::Heartbeat).await?;
        if self.in_flight.len() == IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((seq, Instant::now()));
        self.state.heartbeats_sent += 1;

        let due = self
            .last_enable_request
            .map_or(true, |t| t.elapsed() >= ENABLE_RETRY);
        if self.cfg.auto_enable
            && !self.operator_disarmed
            && !self.state.estop_input_uncleared
            && due
            && !self.state.motor_enabled
            && !self.state.estop_pressed
            && self.state.faults.is_empty()
            && self.state.battery_mv.is_some()
            && self.workload.motion_ready(&self.cfg.enable_after_ready)
        {
            self.last_enable_request = Some(Instant::now());
            self.send(wr, HostMsg::RequestEnable).await?;
        }
        Ok(())
    }

    async fn command(
        &mut self,
        wr: &mut WriteHalf<Box<dyn Io>>,
        cmd: Command,
    ) -> Result<Option<Pending>, Error> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        self.sync_input_state();
        if self.state.estop_input_pressed && !matches!(cmd, Command::Disarm(_)) {
            reply_of(cmd).send(Err(Error::EstopInputPressed)).ok();
            return Ok(None);
        }
        let pending = match cmd {
            Command::Arm(reply) => {
                if !self.workload.motion_ready(&self.cfg.enable_after_ready) {
                    reply
                        .send(Err(Error::Refused(
                            "the processes in serial.enable_after_ready are not ready",
                        )))
                        .ok();
                    return Ok(None);
                }
                self.operator_disarmed = false;
                self.clear_input_presses();
                let a = self.send(wr, HostMsg::ClearFault).await?;
                let b = self.send(wr, HostMsg::RequestEnable).await?;
                self.last_enable_request = Some(Instant::now());
                Pending {
                    kind: PendingKind::Arm,
                    seqs: vec![a, b],
                    reply,
                    deadline,
                }
            }
            Command::ClearFault(reply) => {
                self.clear_input_presses();
                let a = self.send(wr, HostMsg::ClearFault).await?;
                Pending {
                    kind: PendingKind::Clear,
                    seqs: vec![a],
                    reply,
                    deadline,
                }
            }
            Command::Disarm(reply) => {
                self.operator_disarmed = true;
                let a = self.send(wr, HostMsg::Disarm).await?;
                Pending {
                    kind: PendingKind::Disarm,
                    seqs: vec![a],
                    reply,
                    deadline,
                }
            }
        };
        self.deps.telemetry.event(
            Priority::Critical,
            "mcu_operator_command",
            json!({ "command": format!("{:?}", pending.kind).to_lowercase() }),
        );
        Ok(Some(pending))
    }

    fn on_frame(&mut self, msg: McuMsg, pending: &mut Option<Pending>) {
        match msg {
            McuMsg::HelloAck { .. } => {}
            McuMsg::HeartbeatAck {
                echo,
                motor_enabled,
            } => {
                if let Some(i) = self.in_flight.iter().position(|(s, _)| *s == echo) {
                    let (_, sent) = self.in_flight[i];
                    self.in_flight.drain(..=i);
                    if self.rtts.len() == RTT_SAMPLES {
                        self.rtts.pop_front();
                    }
                    self.rtts.push_back(sent.elapsed().as_micros() as u64);
                }
                if motor_enabled != self.state.motor_enabled {
                    self.on_motor(motor_enabled);
                }
            }
            McuMsg::Status(s) => {
                self.on_status(&s);
                if let Some(p) = pending.take() {
                    if p.kind.done(&s) {
                        p.reply.send(Ok(self.state.clone())).ok();
                    } else {
                        *pending = Some(p);
                    }
                }
            }
            McuMsg::Refused { request, reason } => {
                tracing::info!(reason = reason.name(), "mcu refused a request");
                if reason == Refusal::ProtocolMismatch || reason == Refusal::NoSession {
                    self.state.connected = false;
                }
                self.deps.telemetry.event(
                    Priority::Normal,
                    "mcu_refused",
                    json!({ "reason": reason.name() }),
                );
                if let Some(p) = pending.take() {
                    if p.seqs.contains(&request) {
                        p.reply.send(Err(Error::Refused(reason.name()))).ok();
                    } else {
                        *pending = Some(p);
                    }
                }
            }
        }
    }

    fn on_motor(&mut self, on: bool) {
        self.state.motor_enabled = on;
        self.deps.telemetry.event(
            Priority::Normal,
            if on {
                "motors_enabled"
            } else {
                "motors_disabled"
            },
            json!({ "faults": self.state.faults, "estop_pressed": self.state.estop_pressed }),
        );
    }

    fn on_status(&mut self, s: &Status) {
        if s.motor_enabled != self.state.motor_enabled {
            self.on_motor(s.motor_enabled);
        }
        let old_faults: Vec<&'static str> = std::mem::take(&mut self.state.faults);
        let new_faults: Vec<&'static str> = s.faults.names().collect();
        for f in &new_faults {
            if !old_faults.contains(f) && *f != "estop" {
                self.deps
                    .telemetry
                    .event(Priority::Critical, "mcu_fault", json!({ "fault": f }));
            }
        }
        if !old_faults.is_empty() && new_faults.is_empty() {
            self.deps.telemetry.event(
                Priority::Critical,
                "mcu_faults_cleared",
                json!({ "cleared": old_faults }),
            );
        }
        self.state.faults = new_faults;
        self.state.estop_pressed = s.estop_pressed;
        self.state.battery_mv = Some(s.battery_mv);
        self.state.mcu_rx_errors = s.rx_errors;

        let estop_active = s.estop_pressed || s.faults.contains(Faults::ESTOP);
        if estop_active != self.estop_engaged {
            self.estop_engaged = estop_active;
            self.deps.estop.report(
                Source::Mcu,
                estop_active,
                json!({ "pressed": s.estop_pressed, "faults": self.state.faults }),
            );
        }
    }

    /// Follows the board's e-stop input (through the e-stop engine): on a press, tell the
    /// MCU to cut motor power now (`Disarm`: no fault is latched on the MCU, the agent
    /// itself holds enable back until an operator clears the press).
    async fn on_estop_input(&mut self, wr: &mut WriteHalf<Box<dyn Io>>) -> Result<(), Error> {
        let e = *self.estop.borrow_and_update();
        self.sync_input_state();
        if e.input && e.input_presses != self.input_presses_disarmed {
            self.input_presses_disarmed = e.input_presses;
            let motor_was_enabled = self.state.motor_enabled;
            let r = self.send(wr, HostMsg::Disarm).await;
            self.deps.telemetry.event(
                Priority::Critical,
                "estop_mcu_disarm",
                json!({ "source": Source::Input.name(), "motor_was_enabled": motor_was_enabled,
                        "ok": r.is_ok(), "error": r.as_ref().err().map(ToString::to_string) }),
            );
            r?;
        }
        self.publish(false);
        Ok(())
    }

    /// Copies the engine's input level into the link state.
    fn sync_input_state(&mut self) {
        let e = *self.estop.borrow();
        self.state.estop_input_pressed = e.input;
        self.state.estop_input_uncleared = e.input || e.input_presses > self.input_presses_cleared;
    }

    /// An operator cleared the e-stop: input presses so far no longer hold enable back.
    fn clear_input_presses(&mut self) {
        self.input_presses_cleared = self.estop.borrow().input_presses;
        self.sync_input_state();
    }

    fn percentiles(&self) -> (Option<u64>, Option<u64>) {
        if self.rtts.is_empty() {
            return (None, None);
        }
        let mut v: Vec<u64> = self.rtts.iter().copied().collect();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (Some(at(0.5)), Some(at(0.99)))
    }

    /// Publishes the state on the watch; refreshes detail and metrics when `force` or due.
    fn publish(&mut self, force: bool) {
        self.sync_input_state();
        self.state_tx.send_replace(self.state.clone());
        let due = self
            .last_status_refresh
            .map_or(true, |t| t.elapsed() >= STATUS_REFRESH);
        if !(force || due) {
            return;
        }
        self.last_status_refresh = Some(Instant::now());
        let (p50, p99) = self.percentiles();
        self.state.rtt_p50_us = p50;
        self.state.rtt_p99_us = p99;
        self.state_tx.send_replace(self.state.clone());
        let s = &self.state;
        self.deps
            .status
            .set_detail(json!({ "port": self.port.name(), "link": s }));
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let mut m = vec![
            Metric::gauge(
                "fleetlet_mcu_connected",
                "1 while a session with the safety MCU is open",
                b(s.connected),
            ),
            Metric::gauge(
                "fleetlet_mcu_motor_enabled",
                "1 while the MCU reports motor power on",
                b(s.motor_enabled),
            ),
            Metric::gauge(
                "fleetlet_mcu_estop_pressed",
                "1 while the e-stop is pressed",
                b(s.estop_pressed),
            ),
            Metric::gauge(
                "fleetlet_mcu_faults_latched",
                "number of latched MCU faults",
                s.faults.len() as f64,
            ),
            Metric::counter(
                "fleetlet_mcu_rx_errors_total",
                "corrupt frames dropped by the agent",
                s.rx_errors as f64,
            ),
            Metric::counter(
                "fleetlet_mcu_heartbeats_sent_total",
                "heartbeats sent",
                s.heartbeats_sent as f64,
            ),
            Metric::counter(
                "fleetlet_mcu_heartbeats_withheld_total",
                "heartbeat ticks skipped because the agent or motion stack was unhealthy",
                s.heartbeats_withheld as f64,
            ),
            Metric::counter(
                "fleetlet_mcu_sessions_total",
                "MCU sessions opened",
                s.sessions as f64,
            ),
        ];
        if let Some(mv) = s.battery_mv {
            m.push(Metric::gauge(
                "fleetlet_mcu_battery_volts",
                "battery voltage reported by the MCU",
                f64::from(mv) / 1000.0,
            ));
        }
        for (q, v) in [("0.5", p50), ("0.99", p99)] {
            if let Some(us) = v {
                m.push(
                    Metric::gauge(
                        "fleetlet_mcu_rtt_seconds",
                        "heartbeat round trip",
                        us as f64 / 1e6,
                    )
                    .label("quantile", q),
                );
            }
        }
        self.deps.status.set_metrics(m);
    }

    fn emit_record(&mut self) {
        self.publish(true);
        let s = &self.state;
        self.deps.telemetry.emit(
            STREAM,
            Priority::Normal,
            json!({
                "connected": s.connected,
                "firmware": s.firmware,
                "board": s.board,
                "motor_enabled": s.motor_enabled,
                "estop_pressed": s.estop_pressed,
                "faults": s.faults,
                "battery_mv": s.battery_mv,
                "rx_errors": s.rx_errors,
                "mcu_rx_errors": s.mcu_rx_errors,
                "heartbeats_sent": s.heartbeats_sent,
                "heartbeats_withheld": s.heartbeats_withheld,
                "rtt_p50_us": s.rtt_p50_us,
                "rtt_p99_us": s.rtt_p99_us,
            }),
        );
    }
}

fn reply_of(cmd: Command) -> oneshot::Sender<Result<LinkState, Error>> {
    match cmd {
        Command::Arm(r) | Command::ClearFault(r) | Command::Disarm(r) => r,
    }
}

fn agent_version() -> proto::Version {
    let p = |s: &str| s.parse::<u16>().unwrap_or(0);
    proto::Version::new(
        p(env!("CARGO_PKG_VERSION_MAJOR")) as u8,
        p(env!("CARGO_PKG_VERSION_MINOR")) as u8,
        p(env!("CARGO_PKG_VERSION_PATCH")),
    )
}
