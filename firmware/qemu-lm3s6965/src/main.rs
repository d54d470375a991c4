//! Safety MCU firmware for QEMU's `lm3s6965evb` (firmware-in-the-loop rig).
//!
//! - **UART0** is the agent link: the safety core speaks `fleetlet-proto` (`HostMsg` in,
//!   `McuMsg` out) exactly as on a real board.
//! - **UART1** is the rig port, standing in for the wires a bench rig connects to a real
//!   board's pins: the rig sends [`RigCmd`] (press/release e-stop, set battery voltage) and
//!   receives [`RigEvent::Pins`] on every change of the motor-enable output. The agent
//!   never sees this port.
//! - SysTick counts milliseconds; the main loop sleeps in `wfi` between interrupts, so an
//!   idle firmware costs QEMU almost no host CPU.
//!
//! Start it with `qemu-system-arm -M lm3s6965evb -nographic -monitor none -serial pty
//! -serial pty -kernel fleetlet-fw-qemu`: QEMU prints one "char device redirected to
//! /dev/pts/N" line per UART, UART0 first.
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::{syst::SystClkSource, NVIC};
use cortex_m_rt::{entry, exception};
use critical_section::Mutex;
use fleetlet_proto::{self as proto, Board, HostMsg, McuMsg, RigCmd, RigEvent, Version, MAX_FRAME};
use fleetlet_safety_core::{Config, SafetyCore};
use panic_halt as _;

/// QEMU's Stellaris system clock at reset: 200 MHz / (SYSDIV 15 + 1) = 12.5 MHz.
const SYSCLK_HZ: u32 = 12_500_000;
/// Simulated battery voltage at boot, until the rig sets one.
const DEFAULT_BATTERY_MV: u16 = 24_000;
/// A full status report goes out at least this often even when nothing changes.
const STATUS_PERIOD_MS: u32 = 250;

const FIRMWARE: Version = Version::new(
    parse_u8(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u8(env!("CARGO_PKG_VERSION_MINOR")),
    parse_u8(env!("CARGO_PKG_VERSION_PATCH")) as u16,
);

const fn parse_u8(s: &str) -> u8 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u8 = 0;
    while i < b.len() {
        v = v.wrapping_mul(10).wrapping_add(b[i] - b'0');
        i += 1;
    }
    v
}

static MILLIS: AtomicU32 = AtomicU32::new(0);

/// A PL011-style Stellaris UART, driven through its registers.
#[derive(Clone, Copy)]
struct Uart {
    base: usize,
    irq: Irq,
}

const UART0: Uart = Uart {
    base: 0x4000_C000,
    irq: Irq::Uart0,
};
const UART1: Uart = Uart {
    base: 0x4000_D000,
    irq: Irq::Uart1,
};

const DR: usize = 0x000;
const FR: usize = 0x018;
const IBRD: usize = 0x024;
const FBRD: usize = 0x028;
const LCRH: usize = 0x02C;
const CTL: usize = 0x030;
const IM: usize = 0x038;
const ICR: usize = 0x044;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// SYSCTL RCGC1: UART clock gates (bit 0 = UART0, bit 1 = UART1).
const RCGC1: usize = 0x400F_E104;

#[derive(Clone, Copy)]
#[repr(u16)]
enum Irq {
    Uart0 = 5,
    Uart1 = 6,
}

// SAFETY: the numbers are the LM3S6965's UART0/UART1 interrupt positions in the vector table.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self as u16
    }
}

fn reg_write(addr: usize, v: u32) {
    // SAFETY: only called with addresses of the LM3S6965's memory-mapped UART and SYSCTL
    // registers, which are always mapped, 4-byte aligned and valid for volatile access.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn reg_read(addr: usize) -> u32 {
    // SAFETY: as in `reg_write`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

impl Uart {
    fn init(self) {
        reg_write(self.base + CTL, 0);
        // 115200 baud at 12.5 MHz (QEMU ignores the rate; a real LM3S wants it right).
        reg_write(self.base + IBRD, 6);
        reg_write(self.base + FBRD, 50);
        reg_write(self.base + LCRH, 0x70); // 8N1, FIFOs on
        reg_write(self.base + IM, 1 << 4); // RX interrupt
        reg_write(self.base + CTL, (1 << 9) | (1 << 8) | 1); // RXE | TXE | UARTEN
    }

    fn write(self, bytes: &[u8]) {
        for b in bytes {
            while reg_read(self.base + FR) & FR_TXFF != 0 {}
            reg_write(self.base + DR, u32::from(*b));
        }
    }

    /// Moves everything in the RX FIFO into `ring`; bytes that do not fit are dropped
    /// (the decoder then sees a corrupt frame and resyncs).
    fn drain_into(self, ring: &mut Ring) {
        while reg_read(self.base + FR) & FR_RXFE == 0 {
            ring.push(reg_read(self.base + DR) as u8);
        }
        reg_write(self.base + ICR, 0x7F0);
    }
}

/// Fixed-size byte ring between an interrupt handler and the main loop.
struct Ring {
    buf: [u8; 512],
    head: usize,
    len: usize,
}

impl Ring {
    const fn new() -> Self {
        Self {
            buf: [0; 512],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[(self.head + self.len) % self.buf.len()] = b;
            self.len += 1;
        }
    }
    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        Some(b)
    }
}

static RX0: Mutex<RefCell<Ring>> = Mutex::new(RefCell::new(Ring::new()));
static RX1: Mutex<RefCell<Ring>> = Mutex::new(RefCell::new(Ring::new()));

fn pop(ring: &'static Mutex<RefCell<Ring>>) -> Option<u8> {
    critical_section::with(|cs| ring.borrow_ref_mut(cs).pop())
}

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    critical_section::with(|cs| match irqn {
        5 => UART0.drain_into(&mut RX0.borrow_ref_mut(cs)),
        6 => UART1.drain_into(&mut RX1.borrow_ref_mut(cs)),
        _ => {}
    });
}

struct Tx {
    uart: Uart,
    seq: u32,
}

impl Tx {
    fn send<M: serde::Serialize>(&mut self, msg: &M) {
        let mut out = [0u8; MAX_FRAME];
        if let Ok(n) = proto::encode(self.seq, msg, &mut out) {
            self.uart.write(&out[..n]);
        }
        self.seq = self.seq.wrapping_add(1);
    }
}

fn pins(core: &SafetyCore, now: u32) -> RigEvent {
    let s = core.status();
    RigEvent::Pins {
        motor_enabled: s.motor_enabled,
        estop_pressed: s.estop_pressed,
        faults: s.faults,
        uptime_ms: now,
    }
}

#[entry]
fn main() -> ! {
    let (mut cp, mut config) = match cortex_m::Peripherals::take() {
        Some(cp) => (cp, Config::new(Board::QemuLm3s6965, FIRMWARE)),
        None => loop {
            cortex_m::asm::wfi();
        },
    };
    if cfg!(feature = "protocol-mismatch") {
        config.protocol = proto::PROTOCOL_VERSION.wrapping_add(100);
    }
    let mut core = SafetyCore::new(config);
    core.set_battery_mv(DEFAULT_BATTERY_MV);

    reg_write(RCGC1, reg_read(RCGC1) | 0b11);
    UART0.init();
    UART1.init();
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(SYSCLK_HZ / 1000 - 1);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();
    // SAFETY: the handlers for these interrupts (DefaultHandler) only touch the RX rings
    // inside critical sections.
    unsafe {
        NVIC::unmask(UART0.irq);
        NVIC::unmask(UART1.irq);
    }

    let mut link = Tx {
        uart: UART0,
        seq: 0,
    };
    let mut rig = Tx {
        uart: UART1,
        seq: 0,
    };
    let mut host_rx = proto::Decoder::<HostMsg>::new();
    let mut rig_rx = proto::Decoder::<RigCmd>::new();
    let mut last_status = core.status();
    let mut last_status_at = 0u32;
    let mut last_motor = false;
    let mut noise: u32 = 0x2545_F491;
    rig.send(&pins(&core, 0));

    loop {
        let now = MILLIS.load(Ordering::Relaxed);
        core.tick(now);
        while let Some(b) = pop(&RX0) {
            match host_rx.push(b) {
                Some(Ok(frame)) => {
                    let reply = core.handle(now, frame.seq, frame.msg);
                    link.send(&reply);
                    if let McuMsg::Status(s) = reply {
                        last_status = s;
                        last_status_at = now;
                    }
                }
                Some(Err(_)) => core.note_rx_error(),
                None => {}
            }
        }
        while let Some(b) = pop(&RX1) {
            if let Some(Ok(frame)) = rig_rx.push(b) {
                match frame.msg {
                    RigCmd::SetEstop(pressed) => {
                        core.set_estop(now, pressed);
                    }
                    RigCmd::SetBatteryMv(mv) => core.set_battery_mv(mv),
                    RigCmd::GetPins => rig.send(&pins(&core, now)),
                    RigCmd::InjectNoise(n) => {
                        for _ in 0..n {
                            // xorshift32: cheap, deterministic noise with zeros in it.
                            noise ^= noise << 13;
                            noise ^= noise >> 17;
                            noise ^= noise << 5;
                            UART0.write(&[(noise >> 24) as u8]);
                        }
                    }
                }
            }
        }
        let motor = core.tick(now);
        let status = core.status();
        let changed = Status2::of(&status) != Status2::of(&last_status);
        if motor != last_motor || changed {
            rig.send(&pins(&core, now));
            last_motor = motor;
        }
        if changed || now.wrapping_sub(last_status_at) >= STATUS_PERIOD_MS {
            link.send(&McuMsg::Status(status));
            last_status = status;
            last_status_at = now;
        }
        cortex_m::asm::wfi();
    }
}

/// The part of a status whose change is worth an immediate report (not the clock or the
/// error counter).
#[derive(PartialEq)]
struct Status2 {
    motor: bool,
    estop: bool,
    faults: u8,
    battery_mv: u16,
}

impl Status2 {
    fn of(s: &proto::Status) -> Self {
        Self {
            motor: s.motor_enabled,
            estop: s.estop_pressed,
            faults: s.faults.0,
            battery_mv: s.battery_mv,
        }
    }
}
