//! Rig files and the bench rig's pin driver, without a board or QEMU: the bench rig runs
//! over the simulated GPIO backend here (this machine has no GPIO chip), and opening the
//! real `cdev` backend on a missing chip must fail naming the chip and the lines.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use fleetlet::hal::sim::SimGpio;
use fleetlet::hal::Backend;
use hil_tests::bench::BenchRig;
use hil_tests::{Capability, Image, Rig, RigFile};

fn load(name: &str) -> RigFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rigs")
        .join(name);
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn bench_rig_file_names_its_pin_backend_and_capabilities() {
    let rig = load("bench-pico.toml");
    let pins = rig.pins.clone().unwrap();
    assert_eq!(pins.backend, Backend::Cdev);
    assert_eq!(pins.chip, Path::new("/dev/gpiochip0"));
    assert_eq!(
        (pins.estop_out, pins.motor_enable_in, pins.power_out),
        (Some(23), Some(24), Some(25))
    );
    assert_eq!(pins.poll, Duration::from_millis(1));
    for cap in [
        Capability::PressEstop,
        Capability::ReadMotorEnable,
        Capability::Replug,
    ] {
        assert_eq!(rig.missing(cap), None, "{cap:?}");
    }
    let noise = rig.missing(Capability::InjectNoise).unwrap();
    assert!(noise.contains("bench-pico"), "{noise}");
    assert!(rig.missing(Capability::BootMismatchImage).is_some());

    let qemu = load("qemu.toml");
    for cap in [
        Capability::PressEstop,
        Capability::ReadMotorEnable,
        Capability::Replug,
        Capability::InjectNoise,
        Capability::BootMismatchImage,
    ] {
        assert_eq!(qemu.missing(cap), None, "{cap:?}");
    }
}

#[test]
fn external_rig_without_a_pin_names_the_missing_key() {
    let rig: RigFile = toml::from_str(
        r#"
        name = "half-wired"
        firmware = { kind = "external" }
        serial = { device = "/dev/ttyACM0" }
        pins = { motor_enable_in = 4 }
        "#,
    )
    .unwrap();
    assert_eq!(rig.missing(Capability::ReadMotorEnable), None);
    let why = rig.missing(Capability::PressEstop).unwrap();
    assert!(why.contains("pins.estop_out"), "{why}");
    let why = rig.missing(Capability::Replug).unwrap();
    assert!(why.contains("pins.power_out"), "{why}");
    let bad = toml::from_str::<RigFile>(
        "name = \"x\"\nfirmware = { kind = \"external\" }\npins = { estop_pin = 4 }",
    );
    assert!(bad.unwrap_err().to_string().contains("estop_pin"));
}

#[test]
fn cdev_bench_rig_on_a_missing_chip_fails_naming_chip_and_lines() {
    let mut rig = load("bench-pico.toml");
    rig.pins.as_mut().unwrap().chip = "/dev/gpiochip97".into();
    assert!(!Path::new("/dev/gpiochip97").exists());
    let (tx, _rx) = mpsc::channel();
    let err = BenchRig::start(&rig, Image::Normal, tx).err().unwrap();
    let text = format!("{err:#}");
    eprintln!("{text}");
    for want in [
        "bench-pico",
        "/dev/gpiochip97 does not exist",
        "estop_out = 23",
        "motor_enable_in = 24",
        "power_out = 25",
    ] {
        assert!(text.contains(want), "`{want}` missing in: {text}");
    }
}

#[test]
fn bench_rig_drives_and_reads_its_pins_through_the_rig_api() {
    let mut file = load("bench-pico.toml");
    file.pins.as_mut().unwrap().estop_out_active_low = true;
    let gpio = SimGpio::default();
    let (tx, rx) = mpsc::channel();
    let driver =
        BenchRig::with_gpio(&file, Image::Normal, Some(Box::new(gpio.clone())), tx).unwrap();
    let mut rig = Rig::with_driver(file, Box::new(driver), rx);
    assert_eq!(rig.agent_port(), Path::new("/dev/ttyACM0"));
    // Idle: e-stop loop closed (active low: high), board powered.
    assert_eq!(gpio.history(23), vec![true]);
    assert_eq!(gpio.history(25), vec![true]);
    let first = rig
        .wait_pins("first sample", Duration::from_secs(2), |_| true)
        .unwrap();
    assert!(!first.motor_enabled && first.faults.is_none());

    gpio.set_input(24, true);
    rig.wait_pins("motor on", Duration::from_secs(2), |p| p.motor_enabled)
        .unwrap();
    rig.set_estop(true).unwrap();
    assert_eq!(
        gpio.level(23),
        Some(false),
        "active-low e-stop output pressed"
    );
    rig.wait_pins("estop pressed", Duration::from_secs(2), |p| {
        p.estop_pressed && p.motor_enabled
    })
    .unwrap();
    gpio.set_input(24, false);
    rig.wait_pins("motor off", Duration::from_secs(2), |p| !p.motor_enabled)
        .unwrap();
    rig.set_estop(false).unwrap();

    rig.replug(Duration::from_millis(20), Image::Normal)
        .unwrap();
    assert_eq!(gpio.history(25), vec![true, false, true]);
    assert!(rig.replug(Duration::ZERO, Image::Mismatch).is_err());
    assert!(rig.inject_noise(10).is_err());
}
