//! The link protocol between the fleetlet agent and the safety MCU, shared by the firmware
//! (`no_std`, no allocator) and the agent (`features = ["std"]`).
//!
//! # Frame layout
//!
//! ```text
//! wire   = COBS( body || crc16_le(body) ) || 0x00
//! body   = postcard( Frame { seq: u32 (varint), msg: HostMsg | McuMsg | RigCmd | RigEvent } )
//! crc16  = CRC-16/IBM-3740 (CCITT-FALSE: poly 0x1021, init 0xFFFF) over `body`, little endian
//! ```
//!
//! - `0x00` only ever appears as the frame delimiter (COBS), so a receiver that joins
//!   mid-stream or sees line noise drops bytes until the next `0x00` and is in sync again.
//! - The CRC catches corruption COBS alone would pass through (a flipped bit inside a frame).
//! - Every frame carries a sequence number chosen by its sender (monotonic, wrapping). The
//!   MCU echoes a heartbeat's `seq` in its [`McuMsg::HeartbeatAck`], which gives the agent a
//!   round-trip time and lets both sides count lost frames.
//! - Frames are at most [`MAX_FRAME`] bytes on the wire including the delimiter.
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] changes whenever a message's wire form changes. The agent opens
//! with [`HostMsg::Hello`]; the MCU answers [`McuMsg::HelloAck`] with its own protocol and
//! firmware versions. Either side refusing the other's protocol means the MCU never
//! enables motor power on that link.
//!
//! # Invariants
//! - Decoding never panics, whatever the input (property-tested).
//! - Enum variants are only ever appended; reordering them is a protocol version change.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![warn(missing_docs)]

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Wire-format version. Bump on any change to a message's encoding.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame on the wire, delimiter included. Every message fits with room to spare;
/// a larger run of bytes without a delimiter is garbage and is dropped.
pub const MAX_FRAME: usize = 96;

/// Largest un-encoded body (postcard + CRC) that still fits in [`MAX_FRAME`] after COBS.
pub const MAX_BODY: usize = MAX_FRAME - 1 - (MAX_FRAME / 254) - 1;

/// The CRC used on every frame: CRC-16/IBM-3740 (a.k.a. CCITT-FALSE).
pub const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// Default MCU heartbeat timeout: motor power is cut when no heartbeat arrived for this long.
/// 300 ms is three missed heartbeats at the agent's default 10 Hz, well under the ~0.5 s a
/// robot at walking speed needs to cover a safety margin.
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: u16 = 300;

/// A semantic version triple (firmware or agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Patch.
    pub patch: u16,
}

impl Version {
    /// Builds a version.
    pub const fn new(major: u8, minor: u8, patch: u16) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Which board the firmware runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Board {
    /// QEMU `lm3s6965evb` (firmware-in-the-loop rig).
    QemuLm3s6965,
    /// Raspberry Pi Pico (RP2040) bench/real board.
    Rp2040,
}

impl Board {
    /// Stable lowercase name for telemetry.
    pub const fn name(self) -> &'static str {
        match self {
            Self::QemuLm3s6965 => "qemu-lm3s6965",
            Self::Rp2040 => "rp2040",
        }
    }
}

/// Latched fault bits. A latched fault keeps motor power off until the agent sends
/// [`HostMsg::ClearFault`] (the arm flow); it never clears by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Faults(pub u8);

impl Faults {
    /// No fault.
    pub const NONE: Self = Self(0);
    /// The e-stop was pressed.
    pub const ESTOP: Self = Self(1 << 0);
    /// Heartbeats stopped while the host held motor enable (or after a link was up).
    pub const HEARTBEAT_TIMEOUT: Self = Self(1 << 1);

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// Names of the set bits, for telemetry.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (Self::ESTOP, "estop"),
            (Self::HEARTBEAT_TIMEOUT, "heartbeat_timeout"),
        ]
        .into_iter()
        .filter(move |(f, _)| self.contains(*f))
        .map(|(_, n)| n)
    }
}

/// Agent → MCU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Opens a session: the agent's protocol and version. Answered by [`McuMsg::HelloAck`].
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        protocol: u16,
        /// The agent's version.
        agent: Version,
    },
    /// "The agent is alive and the motion stack is healthy." Answered by
    /// [`McuMsg::HeartbeatAck`] echoing this frame's `seq`.
    Heartbeat,
    /// Enable motor power. Refused unless the session is open, heartbeats are fresh, the
    /// e-stop is released and no fault is latched.
    RequestEnable,
    /// Disable motor power now (no fault latched).
    Disarm,
    /// The arm flow: clear latched faults. Refused while the e-stop is still pressed. Does
    /// not enable power by itself; send [`HostMsg::RequestEnable`] after it.
    ClearFault,
    /// Ask for a [`McuMsg::Status`] now.
    GetStatus,
}

/// Why the MCU refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No successful [`HostMsg::Hello`] on this link yet.
    NoSession,
    /// The agent's protocol version is not the firmware's.
    ProtocolMismatch,
    /// The e-stop is pressed.
    EstopPressed,
    /// A fault is latched; clear it first.
    FaultLatched,
    /// No fresh heartbeat.
    HeartbeatStale,
}

impl Refusal {
    /// Stable lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoSession => "no_session",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::EstopPressed => "estop_pressed",
            Self::FaultLatched => "fault_latched",
            Self::HeartbeatStale => "heartbeat_stale",
        }
    }
}

/// A full MCU status report. Sent on every change and periodically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The motor-enable output is on.
    pub motor_enabled: bool,
    /// The e-stop input is pressed right now.
    pub estop_pressed: bool,
    /// Latched faults.
    pub faults: Faults,
    /// Battery voltage in millivolts.
    pub battery_mv: u16,
    /// Milliseconds since MCU boot (wraps after ~49 days).
    pub uptime_ms: u32,
    /// Frames the MCU dropped (bad CRC, bad COBS, undecodable) since boot.
    pub rx_errors: u16,
    /// Firmware version.
    pub firmware: Version,
}

/// MCU → agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum McuMsg {
    /// Answer to [`HostMsg::Hello`]. `accepted` is false when the protocols differ.
    HelloAck {
        /// The firmware's [`PROTOCOL_VERSION`].
        protocol: u16,
        /// Whether the firmware accepted the agent's protocol.
        accepted: bool,
        /// Firmware version.
        firmware: Version,
        /// Which board.
        board: Board,
        /// The firmware's heartbeat timeout.
        heartbeat_timeout_ms: u16,
    },
    /// Answer to [`HostMsg::Heartbeat`].
    HeartbeatAck {
        /// `seq` of the heartbeat frame being answered.
        echo: u32,
        /// Motor power state right after processing the heartbeat.
        motor_enabled: bool,
    },
    /// Status report.
    Status(Status),
    /// A request was refused.
    Refused {
        /// `seq` of the refused frame.
        request: u32,
        /// Why.
        reason: Refusal,
    },
}

/// Rig → MCU, on the QEMU build's second UART only (never compiled into a real board's
/// agent link). How the HIL rig presses the e-stop and sets the battery voltage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RigCmd {
    /// Press (`true`) or release the simulated e-stop input.
    SetEstop(bool),
    /// Set the simulated battery voltage (mV).
    SetBatteryMv(u16),
    /// Ask for a [`RigEvent::Pins`] now.
    GetPins,
    /// Send this many bytes of line noise (pseudo-random, zeros included) on the agent
    /// link, as a bad cable would.
    InjectNoise(u16),
}

/// MCU → rig, on the QEMU build's second UART only: the simulated pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RigEvent {
    /// Pin state. Sent on every change of the motor-enable output and on request.
    Pins {
        /// The motor-enable output.
        motor_enabled: bool,
        /// The e-stop input.
        estop_pressed: bool,
        /// Latched faults.
        faults: Faults,
        /// MCU uptime at the change.
        uptime_ms: u32,
    },
}

/// One decoded frame: the sender's sequence number and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<M> {
    /// Sender's sequence number (wrapping).
    pub seq: u32,
    /// The message.
    pub msg: M,
}

/// Coarse error categories (embedded-hal `kind()` style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The bytes between two delimiters were not a valid frame.
    Corrupt,
    /// A frame did not fit the buffer.
    Overflow,
    /// The message could not be encoded.
    Encode,
}

/// Framing errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// More than [`MAX_FRAME`] bytes arrived without a delimiter; they were dropped.
    FrameTooLong,
    /// The COBS encoding was invalid.
    Cobs,
    /// Fewer bytes than a CRC plus one byte of message.
    TooShort {
        /// Decoded length.
        len: u8,
    },
    /// The CRC did not match.
    Crc {
        /// CRC carried by the frame.
        received: u16,
        /// CRC computed over the body.
        computed: u16,
    },
    /// The body was not a valid message.
    Decode,
    /// The message does not fit in a frame.
    Encode,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl Error {
    /// The error's category.
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::FrameTooLong | Self::BufferTooSmall => ErrorKind::Overflow,
            Self::Cobs | Self::TooShort { .. } | Self::Crc { .. } | Self::Decode => {
                ErrorKind::Corrupt
            }
            Self::Encode => ErrorKind::Encode,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::FrameTooLong => {
                write!(f, "more than {MAX_FRAME} bytes without a frame delimiter")
            }
            Self::Cobs => write!(f, "invalid cobs encoding"),
            Self::TooShort { len } => write!(f, "frame of {len} bytes is too short"),
            Self::Crc { received, computed } => {
                write!(
                    f,
                    "crc mismatch: frame says {received:#06x}, body gives {computed:#06x}"
                )
            }
            Self::Decode => write!(f, "frame body is not a valid message"),
            Self::Encode => write!(f, "message does not fit in a {MAX_FRAME}-byte frame"),
            Self::BufferTooSmall => write!(f, "output buffer smaller than {MAX_FRAME} bytes"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Encodes `msg` with sequence number `seq` into `out` (COBS, delimiter included) and
/// returns the number of bytes written.
///
/// # Errors
/// [`Error::BufferTooSmall`] when `out` is shorter than [`MAX_FRAME`]; [`Error::Encode`]
/// when the message does not fit.
pub fn encode<M: Serialize>(seq: u32, msg: &M, out: &mut [u8]) -> Result<usize, Error> {
    if out.len() < MAX_FRAME {
        return Err(Error::BufferTooSmall);
    }
    let mut body = [0u8; MAX_BODY];
    let frame = Frame { seq, msg };
    let used = postcard::to_slice(&frame, &mut body[..MAX_BODY - 2])
        .map_err(|_| Error::Encode)?
        .len();
    let crc = CRC.checksum(&body[..used]);
    body[used..used + 2].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::try_encode(&body[..used + 2], &mut out[..MAX_FRAME - 1])
        .map_err(|_| Error::Encode)?;
    out[n] = 0;
    Ok(n + 1)
}

/// Decodes one frame's bytes (COBS-encoded, without the trailing delimiter) in place.
///
/// # Errors
/// [`Error::Cobs`], [`Error::TooShort`], [`Error::Crc`] or [`Error::Decode`].
pub fn decode_in_place<M: DeserializeOwned>(buf: &mut [u8]) -> Result<Frame<M>, Error> {
    let n = cobs::decode_in_place(buf).map_err(|_| Error::Cobs)?;
    if n < 3 {
        return Err(Error::TooShort { len: n as u8 });
    }
    let (body, crc) = buf[..n].split_at(n - 2);
    let received = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = CRC.checksum(body);
    if received != computed {
        return Err(Error::Crc { received, computed });
    }
    let (frame, rest) = postcard::take_from_bytes::<Frame<M>>(body).map_err(|_| Error::Decode)?;
    if !rest.is_empty() {
        return Err(Error::Decode);
    }
    Ok(frame)
}

/// A streaming decoder: feed it bytes as they arrive; it yields a frame (or an error) at
/// every delimiter, and resynchronises on the next delimiter after garbage.
///
/// Empty frames (two delimiters in a row) are skipped silently: senders may emit a
/// leading `0x00` to flush a receiver that holds a partial frame.
pub struct Decoder<M> {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflowed: bool,
    _msg: core::marker::PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> Default for Decoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: DeserializeOwned> Decoder<M> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_FRAME],
            len: 0,
            overflowed: false,
            _msg: core::marker::PhantomData,
        }
    }

    /// Drops any partial frame.
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Feeds one byte; returns `Some` at the end of a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame<M>, Error>> {
        if byte != 0 {
            if self.len < MAX_FRAME {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return None;
        }
        let len = core::mem::replace(&mut self.len, 0);
        if core::mem::replace(&mut self.overflowed, false) {
            return Some(Err(Error::FrameTooLong));
        }
        if len == 0 {
            return None;
        }
        Some(decode_in_place(&mut self.buf[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes<M: Serialize>(seq: u32, msg: &M) -> ([u8; MAX_FRAME], usize) {
        let mut out = [0u8; MAX_FRAME];
        let n = encode(seq, msg, &mut out).unwrap();
        (out, n)
    }

    fn decode_all<M: DeserializeOwned>(bytes: &[u8]) -> Vec<Result<Frame<M>, Error>> {
        let mut d = Decoder::<M>::new();
        bytes.iter().filter_map(|b| d.push(*b)).collect()
    }

    const STATUS: Status = Status {
        motor_enabled: true,
        estop_pressed: false,
        faults: Faults::HEARTBEAT_TIMEOUT,
        battery_mv: 24_100,
        uptime_ms: u32::MAX,
        rx_errors: 7,
        firmware: Version::new(1, 2, 300),
    };

    #[test]
    fn heartbeat_frame_has_expected_wire_bytes() {
        let (out, n) = frame_bytes(5, &HostMsg::Heartbeat);
        // body: seq varint 0x05, variant index 1 (Heartbeat); crc16 little endian; then COBS.
        let body = [0x05, 0x01];
        let crc = CRC.checksum(&body).to_le_bytes();
        let mut raw = vec![0x05, 0x01, crc[0], crc[1]];
        let mut enc = vec![0u8; 16];
        let m = cobs::encode(&raw, &mut enc);
        enc.truncate(m);
        enc.push(0);
        assert_eq!(&out[..n], &enc[..]);
        assert_eq!(
            out[..n].iter().filter(|b| **b == 0).count(),
            1,
            "only the delimiter is zero"
        );
        raw.clear();
    }

    #[test]
    fn every_message_round_trips() {
        let host = [
            HostMsg::Hello {
                protocol: PROTOCOL_VERSION,
                agent: Version::new(0, 1, 0),
            },
            HostMsg::Heartbeat,
            HostMsg::RequestEnable,
            HostMsg::Disarm,
            HostMsg::ClearFault,
            HostMsg::GetStatus,
        ];
        for (i, m) in host.iter().enumerate() {
            let (out, n) = frame_bytes(i as u32, m);
            assert_eq!(
                decode_all::<HostMsg>(&out[..n]),
                vec![Ok(Frame {
                    seq: i as u32,
                    msg: *m
                })]
            );
        }
        let mcu = [
            McuMsg::HelloAck {
                protocol: PROTOCOL_VERSION,
                accepted: true,
                firmware: Version::new(1, 0, 0),
                board: Board::Rp2040,
                heartbeat_timeout_ms: 300,
            },
            McuMsg::HeartbeatAck {
                echo: u32::MAX,
                motor_enabled: true,
            },
            McuMsg::Status(STATUS),
            McuMsg::Refused {
                request: 9,
                reason: Refusal::EstopPressed,
            },
        ];
        for m in mcu {
            let (out, n) = frame_bytes(u32::MAX, &m);
            assert!(n <= MAX_FRAME);
            assert_eq!(
                decode_all::<McuMsg>(&out[..n]),
                vec![Ok(Frame {
                    seq: u32::MAX,
                    msg: m
                })]
            );
        }
    }

    #[test]
    fn flipped_bit_is_a_crc_error_and_next_frame_still_decodes() {
        let (a, na) = frame_bytes(1, &McuMsg::Status(STATUS));
        let (b, nb) = frame_bytes(
            2,
            &McuMsg::HeartbeatAck {
                echo: 1,
                motor_enabled: false,
            },
        );
        let mut wire = a[..na].to_vec();
        wire[3] ^= 0x10;
        wire.extend_from_slice(&b[..nb]);
        let got = decode_all::<McuMsg>(&wire);
        assert_eq!(got.len(), 2);
        assert!(
            matches!(got[0], Err(e) if e.kind() == ErrorKind::Corrupt),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            Ok(Frame {
                seq: 2,
                msg: McuMsg::HeartbeatAck {
                    echo: 1,
                    motor_enabled: false
                }
            })
        );
    }

    #[test]
    fn garbage_without_delimiter_overflows_then_resyncs() {
        let mut wire = vec![0x55u8; MAX_FRAME * 3];
        wire.push(0);
        let (b, nb) = frame_bytes(3, &HostMsg::Disarm);
        wire.extend_from_slice(&b[..nb]);
        let got = decode_all::<HostMsg>(&wire);
        assert_eq!(
            got,
            vec![
                Err(Error::FrameTooLong),
                Ok(Frame {
                    seq: 3,
                    msg: HostMsg::Disarm
                })
            ]
        );
        assert_eq!(Error::FrameTooLong.kind(), ErrorKind::Overflow);
    }

    #[test]
    fn empty_frames_are_skipped() {
        let (b, nb) = frame_bytes(4, &HostMsg::GetStatus);
        let mut wire = vec![0, 0, 0];
        wire.extend_from_slice(&b[..nb]);
        assert_eq!(
            decode_all::<HostMsg>(&wire),
            vec![Ok(Frame {
                seq: 4,
                msg: HostMsg::GetStatus
            })]
        );
    }

    #[test]
    fn short_and_wrong_type_frames_are_errors() {
        assert_eq!(
            decode_all::<HostMsg>(&[0x02, 0x01, 0x00]),
            vec![Err(Error::TooShort { len: 1 })]
        );
        // A valid CRC over a body that is not a HostMsg (variant 200).
        let body = [0x01, 200];
        let crc = CRC.checksum(&body).to_le_bytes();
        let raw = [body[0], body[1], crc[0], crc[1]];
        let mut enc = [0u8; 8];
        let n = cobs::encode(&raw, &mut enc);
        let mut wire = enc[..n].to_vec();
        wire.push(0);
        assert_eq!(decode_all::<HostMsg>(&wire), vec![Err(Error::Decode)]);
    }

    #[test]
    fn every_single_bit_flip_in_a_status_frame_is_detected() {
        let (a, na) = frame_bytes(0x1234_5678, &McuMsg::Status(STATUS));
        for byte in 0..na - 1 {
            for bit in 0..8 {
                let mut wire = a[..na].to_vec();
                wire[byte] ^= 1 << bit;
                let got = decode_all::<McuMsg>(&wire);
                assert!(
                    got.iter().all(|r| r.is_err()),
                    "flip {byte}.{bit} decoded: {got:?}"
                );
            }
        }
    }

    #[test]
    fn encode_refuses_small_buffers() {
        let mut out = [0u8; 8];
        assert_eq!(
            encode(0, &HostMsg::Heartbeat, &mut out),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn fault_names_list_set_bits() {
        let f = Faults::ESTOP.with(Faults::HEARTBEAT_TIMEOUT);
        assert_eq!(
            f.names().collect::<Vec<_>>(),
            vec!["estop", "heartbeat_timeout"]
        );
        assert!(Faults::NONE.is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_status() -> impl Strategy<Value = Status> {
            (
                any::<bool>(),
                any::<bool>(),
                any::<u8>(),
                any::<u16>(),
                any::<u32>(),
                any::<u16>(),
                any::<(u8, u8, u16)>(),
            )
                .prop_map(|(m, e, f, b, u, r, (ma, mi, pa))| Status {
                    motor_enabled: m,
                    estop_pressed: e,
                    faults: Faults(f),
                    battery_mv: b,
                    uptime_ms: u,
                    rx_errors: r,
                    firmware: Version::new(ma, mi, pa),
                })
        }

        fn arb_mcu() -> impl Strategy<Value = McuMsg> {
            prop_oneof![
                (any::<u16>(), any::<bool>(), any::<u16>()).prop_map(|(p, a, t)| {
                    McuMsg::HelloAck {
                        protocol: p,
                        accepted: a,
                        firmware: Version::new(1, 2, 3),
                        board: Board::QemuLm3s6965,
                        heartbeat_timeout_ms: t,
                    }
                }),
                (any::<u32>(), any::<bool>()).prop_map(|(e, m)| McuMsg::HeartbeatAck {
                    echo: e,
                    motor_enabled: m
                }),
                arb_status().prop_map(McuMsg::Status),
                any::<u32>().prop_map(|r| McuMsg::Refused {
                    request: r,
                    reason: Refusal::FaultLatched
                }),
            ]
        }

        proptest! {
            #[test]
            fn any_message_sequence_round_trips(msgs in proptest::collection::vec((any::<u32>(), arb_mcu()), 1..20)) {
                let mut wire = Vec::new();
                for (seq, m) in &msgs {
                    let (out, n) = frame_bytes(*seq, m);
                    wire.extend_from_slice(&out[..n]);
                }
                let got = decode_all::<McuMsg>(&wire);
                let want: Vec<_> = msgs.iter().map(|(s, m)| Ok(Frame { seq: *s, msg: *m })).collect();
                prop_assert_eq!(got, want);
            }

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = decode_all::<McuMsg>(&bytes);
                let _ = decode_all::<HostMsg>(&bytes);
            }

            #[test]
            fn corruption_never_panics_and_decoder_resyncs(
                msg in arb_mcu(),
                noise in proptest::collection::vec(any::<u8>(), 0..300),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            ) {
                // A corrupted frame, then noise, then a delimiter, then a good frame.
                let (a, na) = frame_bytes(1, &msg);
                let mut wire = a[..na].to_vec();
                for (i, x) in &flips {
                    let at = i.index(na - 1); // never touch the delimiter
                    wire[at] ^= x;
                    if wire[at] == 0 { wire[at] = 1; }
                }
                wire.extend_from_slice(&noise);
                wire.push(0);
                let (b, nb) = frame_bytes(77, &msg);
                wire.extend_from_slice(&b[..nb]);
                let got = decode_all::<McuMsg>(&wire);
                prop_assert_eq!(got.last().cloned(), Some(Ok(Frame { seq: 77, msg })));
            }
        }
    }
}
