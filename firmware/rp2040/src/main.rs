//! Safety MCU firmware for a Raspberry Pi Pico (RP2040): the board teams put on bench rigs
//! and robots.
//!
//! Wiring (see `docs/serial-link.md`):
//! - **UART0** TX = GP0, RX = GP1, 115200 8N1: the agent link. Through a Raspberry Pi Debug
//!   Probe (or any USB-UART) it shows up on the host as `/dev/ttyACM0` / `/dev/ttyUSB0`.
//! - **GP15** motor-enable output, active high, driven low at reset (the driver's enable
//!   input must have a pull-down so a dead or resetting MCU means "motors off").
//! - **GP14** e-stop input with the internal pull-up; wire the e-stop's normally-closed
//!   contact from GP14 to GND. Pressed *or a cut wire* reads high = e-stop.
//! - **GP26 / ADC0** battery voltage through a divider of [`BATTERY_DIVIDER`] (e.g.
//!   100 kΩ / 10 kΩ for up to 36 V).
//! - The hardware watchdog (100 ms) resets the chip if the main loop ever stops; a panic
//!   halts, so the watchdog resets into "motors off".
#![no_std]
#![no_main]

use embedded_hal::digital::{InputPin, OutputPin};
use fleetlet_proto::{self as proto, Board, HostMsg, McuMsg, Version, MAX_FRAME};
use fleetlet_safety_core::{Config, SafetyCore};
use fugit::{ExtU32, RateExtU32};
use panic_halt as _;
use rp2040_hal::{
    self as hal,
    clocks::Clock,
    gpio::{FunctionUart, Pins},
    pac,
    uart::{DataBits, StopBits, UartConfig, UartPeripheral},
    Sio, Timer, Watchdog,
};

/// The second-stage bootloader for the Pico's W25Q080 flash.
#[link_section = ".boot2"]
#[used]
pub static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal.
const XTAL_FREQ_HZ: u32 = 12_000_000;
/// Battery divider ratio (battery mV = ADC pin mV × this).
const BATTERY_DIVIDER: u32 = 11;
/// ADC reference (3.3 V) in mV, 12-bit full scale.
const ADC_REF_MV: u32 = 3300;
/// A full status report goes out at least this often even when nothing changes.
const STATUS_PERIOD_MS: u32 = 250;
/// Battery sampling period.
const BATTERY_PERIOD_MS: u32 = 100;

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

fn halt() -> ! {
    // The watchdog (if started) resets us; otherwise the pins stay at their reset state.
    loop {
        cortex_m::asm::wfi();
    }
}

#[hal::entry]
fn main() -> ! {
    let Some(mut pac) = pac::Peripherals::take() else {
        halt()
    };
    let mut watchdog = Watchdog::new(pac.WATCHDOG);
    let Ok(clocks) = hal::clocks::init_clocks_and_plls(
        XTAL_FREQ_HZ,
        pac.XOSC,
        pac.CLOCKS,
        pac.PLL_SYS,
        pac.PLL_USB,
        &mut pac.RESETS,
        &mut watchdog,
    ) else {
        halt()
    };
    let sio = Sio::new(pac.SIO);
    let pins = Pins::new(
        pac.IO_BANK0,
        pac.PADS_BANK0,
        sio.gpio_bank0,
        &mut pac.RESETS,
    );

    // Motor power off before anything else can go wrong.
    let mut motor = pins.gpio15.into_push_pull_output();
    let _ = motor.set_low();
    let mut estop = pins.gpio14.into_pull_up_input();

    let uart_pins = (
        pins.gpio0.into_function::<FunctionUart>(),
        pins.gpio1.into_function::<FunctionUart>(),
    );
    let Ok(uart) = UartPeripheral::new(pac.UART0, uart_pins, &mut pac.RESETS).enable(
        UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One),
        clocks.peripheral_clock.freq(),
    ) else {
        halt()
    };
    let mut adc = hal::Adc::new(pac.ADC, &mut pac.RESETS);
    let Ok(mut battery_pin) = hal::adc::AdcPin::new(pins.gpio26.into_floating_input()) else {
        halt()
    };
    let timer = Timer::new(pac.TIMER, &mut pac.RESETS, &clocks);
    watchdog.start(100_000.micros());

    let mut core = SafetyCore::new(Config::new(Board::Rp2040, FIRMWARE));
    let mut rx = proto::Decoder::<HostMsg>::new();
    let mut seq: u32 = 0;
    let mut send = |msg: &McuMsg| {
        let mut out = [0u8; MAX_FRAME];
        if let Ok(n) = proto::encode(seq, msg, &mut out) {
            uart.write_full_blocking(&out[..n]);
        }
        seq = seq.wrapping_add(1);
    };
    let mut last_status_at = 0u32;
    let mut last_battery_at = 0u32;
    let mut last_estop = false;
    let mut last_motor = false;
    let mut buf = [0u8; 32];

    loop {
        watchdog.feed();
        let now = (timer.get_counter().ticks() / 1000) as u32;

        // Fail safe: a read error counts as pressed.
        let pressed = estop.is_high().unwrap_or(true);
        if pressed != last_estop {
            core.set_estop(now, pressed);
            last_estop = pressed;
        }
        if now.wrapping_sub(last_battery_at) >= BATTERY_PERIOD_MS {
            let raw: u16 = adc.read(&mut battery_pin).unwrap_or(0);
            let mv = u32::from(raw) * ADC_REF_MV / 4095 * BATTERY_DIVIDER;
            core.set_battery_mv(mv.min(u32::from(u16::MAX)) as u16);
            last_battery_at = now;
        }

        let mut changed = false;
        if let Ok(n) = uart.read_raw(&mut buf) {
            for b in &buf[..n] {
                match rx.push(*b) {
                    Some(Ok(frame)) => {
                        let reply = core.handle(now, frame.seq, frame.msg);
                        send(&reply);
                    }
                    Some(Err(_)) => core.note_rx_error(),
                    None => {}
                }
            }
        }

        let on = core.tick(now);
        if on {
            let _ = motor.set_high();
        } else {
            let _ = motor.set_low();
        }
        if on != last_motor {
            changed = true;
        }
        last_motor = on;
        if changed || now.wrapping_sub(last_status_at) >= STATUS_PERIOD_MS {
            send(&McuMsg::Status(core.status()));
            last_status_at = now;
        }
    }
}
