//! The safety MCU's motor-power state machine, independent of any board.
//!
//! The board's main loop feeds it decoded [`HostMsg`]s, the e-stop input and the time
//! (`now`, integer milliseconds since boot, wrapping), and writes [`SafetyCore::tick`]'s
//! result to the motor-enable pin. Everything here is host-testable.
//!
//! # Invariants
//! - Motor power is on only while **all** of these hold: a session is open with a matching
//!   protocol version, the host requested enable, a heartbeat arrived less than
//!   `heartbeat_timeout_ms` ago, the e-stop is released, and no fault is latched.
//! - Pressing the e-stop latches [`Faults::ESTOP`]; heartbeats stopping while enable is
//!   requested latches [`Faults::HEARTBEAT_TIMEOUT`]. Both also drop the enable request.
//! - Nothing clears a latched fault except [`HostMsg::ClearFault`] with the e-stop
//!   released, and nothing enables power except a later [`HostMsg::RequestEnable`]: motion
//!   never resumes by itself when heartbeats come back or the e-stop is released.
//! - A new [`HostMsg::Hello`] starts a new session disarmed.
//! - Time arithmetic wraps (`u32` milliseconds roll over after ~49.7 days).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub use fleetlet_proto::{
    Board, Faults, HostMsg, McuMsg, Refusal, Status, Version, DEFAULT_HEARTBEAT_TIMEOUT_MS,
    PROTOCOL_VERSION,
};

/// Board-specific constants.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Motor power is cut when the last heartbeat is this old.
    pub heartbeat_timeout_ms: u16,
    /// The protocol version this firmware speaks (normally [`PROTOCOL_VERSION`]; the QEMU
    /// rig's mismatch build reports another one).
    pub protocol: u16,
    /// Firmware version.
    pub firmware: Version,
    /// Board.
    pub board: Board,
}

impl Config {
    /// Defaults for `board` at `firmware` version.
    pub const fn new(board: Board, firmware: Version) -> Self {
        Self {
            heartbeat_timeout_ms: DEFAULT_HEARTBEAT_TIMEOUT_MS,
            protocol: PROTOCOL_VERSION,
            firmware,
            board,
        }
    }
}

/// Session state of the host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// No `Hello` yet.
    None,
    /// `Hello` with a matching protocol.
    Open,
    /// `Hello` with another protocol: nothing but `Hello` and heartbeats are answered
    /// usefully, and power is never enabled.
    Mismatch,
}

/// The state machine. See the crate docs for the invariants.
#[derive(Debug, Clone)]
pub struct SafetyCore {
    cfg: Config,
    session: Session,
    last_heartbeat_ms: Option<u32>,
    enable_requested: bool,
    estop_pressed: bool,
    faults: Faults,
    battery_mv: u16,
    rx_errors: u16,
    now_ms: u32,
}

impl SafetyCore {
    /// A core at boot: no session, power off, no fault.
    pub const fn new(cfg: Config) -> Self {
        Self {
            cfg,
            session: Session::None,
            last_heartbeat_ms: None,
            enable_requested: false,
            estop_pressed: false,
            faults: Faults::NONE,
            battery_mv: 0,
            rx_errors: 0,
            now_ms: 0,
        }
    }

    /// The configuration.
    pub const fn config(&self) -> &Config {
        &self.cfg
    }

    /// The session state.
    pub const fn session(&self) -> Session {
        self.session
    }

    /// Latched faults.
    pub const fn faults(&self) -> Faults {
        self.faults
    }

    fn heartbeat_fresh(&self, now: u32) -> bool {
        self.last_heartbeat_ms
            .is_some_and(|t| now.wrapping_sub(t) < u32::from(self.cfg.heartbeat_timeout_ms))
    }

    /// Whether motor power is on as of the last call that passed `now`.
    pub fn motor_enabled(&self) -> bool {
        self.session == Session::Open
            && self.enable_requested
            && !self.estop_pressed
            && self.faults.is_empty()
            && self.heartbeat_fresh(self.now_ms)
    }

    /// Advances time; latches a heartbeat timeout when due. Returns the motor-enable output.
    pub fn tick(&mut self, now: u32) -> bool {
        self.now_ms = now;
        if self.enable_requested && !self.heartbeat_fresh(now) {
            self.faults = self.faults.with(Faults::HEARTBEAT_TIMEOUT);
            self.enable_requested = false;
        }
        self.motor_enabled()
    }

    /// Sets the e-stop input level (`true` = pressed). Pressing latches [`Faults::ESTOP`].
    /// Returns the motor-enable output.
    pub fn set_estop(&mut self, now: u32, pressed: bool) -> bool {
        self.estop_pressed = pressed;
        if pressed {
            self.faults = self.faults.with(Faults::ESTOP);
            self.enable_requested = false;
        }
        self.tick(now)
    }

    /// Sets the measured battery voltage.
    pub fn set_battery_mv(&mut self, mv: u16) {
        self.battery_mv = mv;
    }

    /// Counts a frame the board's decoder dropped.
    pub fn note_rx_error(&mut self) {
        self.rx_errors = self.rx_errors.wrapping_add(1);
    }

    /// The current status report.
    pub fn status(&self) -> Status {
        Status {
            motor_enabled: self.motor_enabled(),
            estop_pressed: self.estop_pressed,
            faults: self.faults,
            battery_mv: self.battery_mv,
            uptime_ms: self.now_ms,
            rx_errors: self.rx_errors,
            firmware: self.cfg.firmware,
        }
    }

    fn session_refusal(&self) -> Option<Refusal> {
        match self.session {
            Session::None => Some(Refusal::NoSession),
            Session::Mismatch => Some(Refusal::ProtocolMismatch),
            Session::Open => None,
        }
    }

    /// Handles one message from the host received at `now` in a frame numbered `seq`;
    /// returns the reply.
    pub fn handle(&mut self, now: u32, seq: u32, msg: HostMsg) -> McuMsg {
        self.tick(now);
        let refused = |reason| McuMsg::Refused {
            request: seq,
            reason,
        };
        match msg {
            HostMsg::Hello { protocol, .. } => {
                let accepted = protocol == self.cfg.protocol;
                self.session = if accepted {
                    Session::Open
                } else {
                    Session::Mismatch
                };
                self.enable_requested = false;
                self.last_heartbeat_ms = None;
                McuMsg::HelloAck {
                    protocol: self.cfg.protocol,
                    accepted,
                    firmware: self.cfg.firmware,
                    board: self.cfg.board,
                    heartbeat_timeout_ms: self.cfg.heartbeat_timeout_ms,
                }
            }
            HostMsg::Heartbeat => {
                if self.session == Session::Open {
                    self.last_heartbeat_ms = Some(now);
                }
                McuMsg::HeartbeatAck {
                    echo: seq,
                    motor_enabled: self.tick(now),
                }
            }
            HostMsg::RequestEnable => {
                if let Some(r) = self.session_refusal() {
                    return refused(r);
                }
                if self.estop_pressed {
                    return refused(Refusal::EstopPressed);
                }
                if !self.faults.is_empty() {
                    return refused(Refusal::FaultLatched);
                }
                if !self.heartbeat_fresh(now) {
                    return refused(Refusal::HeartbeatStale);
                }
                self.enable_requested = true;
                self.tick(now);
                McuMsg::Status(self.status())
            }
            HostMsg::Disarm => {
                self.enable_requested = false;
                self.tick(now);
                McuMsg::Status(self.status())
            }
            HostMsg::ClearFault => {
                if let Some(r) = self.session_refusal() {
                    return refused(r);
                }
                if self.estop_pressed {
                    return refused(Refusal::EstopPressed);
                }
                self.faults = Faults::NONE;
                self.tick(now);
                McuMsg::Status(self.status())
            }
            HostMsg::GetStatus => McuMsg::Status(self.status()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FW: Version = Version::new(1, 0, 0);
    const T: u32 = DEFAULT_HEARTBEAT_TIMEOUT_MS as u32;

    fn core() -> SafetyCore {
        SafetyCore::new(Config::new(Board::QemuLm3s6965, FW))
    }

    fn hello(c: &mut SafetyCore, now: u32) -> McuMsg {
        c.handle(
            now,
            0,
            HostMsg::Hello {
                protocol: PROTOCOL_VERSION,
                agent: Version::new(0, 1, 0),
            },
        )
    }

    /// Hello + heartbeat + enable at `now`; asserts power is on.
    fn armed(now: u32) -> SafetyCore {
        let mut c = core();
        c.tick(now);
        hello(&mut c, now);
        c.handle(now, 1, HostMsg::Heartbeat);
        assert!(
            matches!(c.handle(now, 2, HostMsg::RequestEnable), McuMsg::Status(s) if s.motor_enabled)
        );
        assert!(c.tick(now));
        c
    }

    #[test]
    fn boots_with_power_off_and_no_session() {
        let mut c = core();
        assert!(!c.tick(0));
        assert_eq!(c.session(), Session::None);
        assert!(c.faults().is_empty());
    }

    #[test]
    fn hello_with_matching_protocol_opens_session_and_reports_versions() {
        let mut c = core();
        let ack = hello(&mut c, 5);
        assert_eq!(
            ack,
            McuMsg::HelloAck {
                protocol: PROTOCOL_VERSION,
                accepted: true,
                firmware: FW,
                board: Board::QemuLm3s6965,
                heartbeat_timeout_ms: 300
            }
        );
        assert_eq!(c.session(), Session::Open);
    }

    #[test]
    fn protocol_mismatch_never_enables_power() {
        let mut c = core();
        let ack = c.handle(
            0,
            0,
            HostMsg::Hello {
                protocol: PROTOCOL_VERSION + 1,
                agent: FW,
            },
        );
        assert!(matches!(
            ack,
            McuMsg::HelloAck {
                accepted: false,
                protocol: PROTOCOL_VERSION,
                ..
            }
        ));
        assert_eq!(c.session(), Session::Mismatch);
        for now in 0..50 {
            c.handle(now, 1, HostMsg::Heartbeat);
            assert_eq!(
                c.handle(now, 2, HostMsg::RequestEnable),
                McuMsg::Refused {
                    request: 2,
                    reason: Refusal::ProtocolMismatch
                }
            );
            assert_eq!(
                c.handle(now, 3, HostMsg::ClearFault),
                McuMsg::Refused {
                    request: 3,
                    reason: Refusal::ProtocolMismatch
                }
            );
            assert!(!c.tick(now));
        }
    }

    #[test]
    fn firmware_reporting_another_protocol_refuses_current_hosts() {
        let mut cfg = Config::new(Board::QemuLm3s6965, FW);
        cfg.protocol = PROTOCOL_VERSION + 100;
        let mut c = SafetyCore::new(cfg);
        assert!(matches!(
            hello(&mut c, 0),
            McuMsg::HelloAck {
                accepted: false,
                ..
            }
        ));
        c.handle(0, 1, HostMsg::Heartbeat);
        assert!(matches!(
            c.handle(0, 2, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::ProtocolMismatch,
                ..
            }
        ));
    }

    #[test]
    fn enable_without_session_is_refused() {
        let mut c = core();
        c.handle(0, 1, HostMsg::Heartbeat);
        assert_eq!(
            c.handle(0, 7, HostMsg::RequestEnable),
            McuMsg::Refused {
                request: 7,
                reason: Refusal::NoSession
            }
        );
        assert!(!c.tick(0));
    }

    #[test]
    fn enable_without_fresh_heartbeat_is_refused() {
        let mut c = core();
        hello(&mut c, 0);
        assert!(matches!(
            c.handle(0, 1, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::HeartbeatStale,
                ..
            }
        ));
        c.handle(10, 2, HostMsg::Heartbeat);
        assert!(matches!(
            c.handle(10 + T, 3, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::HeartbeatStale,
                ..
            }
        ));
        assert!(!c.tick(10 + T));
        assert!(
            c.faults().is_empty(),
            "no enable was held, so no timeout fault"
        );
    }

    #[test]
    fn heartbeat_ack_echoes_sequence_number() {
        let mut c = core();
        hello(&mut c, 0);
        assert_eq!(
            c.handle(1, 0xdead_beef, HostMsg::Heartbeat),
            McuMsg::HeartbeatAck {
                echo: 0xdead_beef,
                motor_enabled: false
            }
        );
        c.handle(1, 2, HostMsg::RequestEnable);
        assert_eq!(
            c.handle(2, 3, HostMsg::Heartbeat),
            McuMsg::HeartbeatAck {
                echo: 3,
                motor_enabled: true
            }
        );
    }

    #[test]
    fn power_stays_on_just_before_timeout_and_cuts_exactly_at_it() {
        let mut c = armed(1000);
        assert!(c.tick(1000 + T - 1));
        assert!(!c.tick(1000 + T));
        assert!(c.faults().contains(Faults::HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn heartbeats_keep_power_on_indefinitely() {
        let mut c = armed(0);
        for now in (0..10_000).step_by(100) {
            c.handle(now, now, HostMsg::Heartbeat);
            assert!(c.tick(now + 99), "at {now}");
        }
        assert!(c.faults().is_empty());
    }

    #[test]
    fn heartbeat_timeout_latches_and_returning_heartbeats_do_not_resume() {
        let mut c = armed(0);
        assert!(!c.tick(T + 5));
        for now in (T + 10..T + 2000).step_by(50) {
            c.handle(now, 9, HostMsg::Heartbeat);
            assert!(!c.tick(now), "resumed by itself at {now}");
        }
        assert!(matches!(
            c.handle(2500, 10, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::FaultLatched,
                ..
            }
        ));
        // The arm flow: clear, then enable.
        c.handle(2500, 11, HostMsg::Heartbeat);
        assert!(
            matches!(c.handle(2500, 12, HostMsg::ClearFault), McuMsg::Status(s) if s.faults.is_empty() && !s.motor_enabled)
        );
        assert!(!c.tick(2500), "clear alone does not enable");
        assert!(
            matches!(c.handle(2500, 13, HostMsg::RequestEnable), McuMsg::Status(s) if s.motor_enabled)
        );
    }

    #[test]
    fn estop_cuts_power_immediately_and_latches() {
        let mut c = armed(0);
        assert!(!c.set_estop(10, true));
        c.handle(20, 3, HostMsg::Heartbeat);
        assert!(!c.set_estop(30, false), "release does not resume");
        assert!(c.faults().contains(Faults::ESTOP));
        assert!(matches!(
            c.handle(40, 4, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::FaultLatched,
                ..
            }
        ));
    }

    #[test]
    fn clear_is_refused_while_estop_pressed() {
        let mut c = armed(0);
        c.set_estop(1, true);
        assert_eq!(
            c.handle(2, 5, HostMsg::ClearFault),
            McuMsg::Refused {
                request: 5,
                reason: Refusal::EstopPressed
            }
        );
        assert!(matches!(
            c.handle(2, 6, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::EstopPressed,
                ..
            }
        ));
        c.set_estop(3, false);
        c.handle(4, 7, HostMsg::Heartbeat);
        assert!(
            matches!(c.handle(4, 8, HostMsg::ClearFault), McuMsg::Status(s) if s.faults.is_empty())
        );
        assert!(
            matches!(c.handle(4, 9, HostMsg::RequestEnable), McuMsg::Status(s) if s.motor_enabled)
        );
    }

    #[test]
    fn estop_pressed_before_any_session_is_latched() {
        let mut c = core();
        c.set_estop(0, true);
        c.set_estop(1, false);
        hello(&mut c, 2);
        c.handle(2, 1, HostMsg::Heartbeat);
        assert!(matches!(
            c.handle(2, 2, HostMsg::RequestEnable),
            McuMsg::Refused {
                reason: Refusal::FaultLatched,
                ..
            }
        ));
        assert!(
            matches!(c.handle(2, 3, HostMsg::GetStatus), McuMsg::Status(s) if s.faults == Faults::ESTOP && !s.estop_pressed)
        );
    }

    #[test]
    fn disarm_cuts_power_without_fault_and_stops_the_watchdog() {
        let mut c = armed(0);
        assert!(matches!(c.handle(1, 3, HostMsg::Disarm), McuMsg::Status(s) if !s.motor_enabled));
        assert!(!c.tick(10_000));
        assert!(c.faults().is_empty(), "heartbeats may stop after a disarm");
    }

    #[test]
    fn new_hello_starts_a_disarmed_session() {
        let mut c = armed(0);
        hello(&mut c, 50);
        assert!(!c.tick(50));
        assert!(c.faults().is_empty());
        assert!(
            matches!(
                c.handle(50, 1, HostMsg::RequestEnable),
                McuMsg::Refused {
                    reason: Refusal::HeartbeatStale,
                    ..
                }
            ),
            "heartbeats of the old session do not count"
        );
    }

    #[test]
    fn timeout_is_measured_across_u32_wraparound() {
        let start = u32::MAX - 100;
        let mut c = armed(start);
        assert!(c.tick(start.wrapping_add(T - 1)));
        assert!(!c.tick(start.wrapping_add(T)));
        assert!(c.faults().contains(Faults::HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn status_reports_battery_errors_and_version() {
        let mut c = core();
        c.set_battery_mv(24_000);
        c.note_rx_error();
        c.note_rx_error();
        c.tick(1234);
        assert_eq!(
            c.status(),
            Status {
                motor_enabled: false,
                estop_pressed: false,
                faults: Faults::NONE,
                battery_mv: 24_000,
                uptime_ms: 1234,
                rx_errors: 2,
                firmware: FW
            }
        );
    }
}
