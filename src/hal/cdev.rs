//! Linux GPIO character device backend (`/dev/gpiochipN`, uAPI v2, through `gpiocdev`).
//! Works on any Linux board with a GPIO driver (Raspberry Pi 4/5, Jetson, USB-GPIO
//! adapters such as an FT232H or an MCP2221 with their kernel drivers), without `rppal`.
//!
//! Pins are **line offsets on one chip** (`hal.chip`), not BCM numbers (on a Pi the header
//! lines of the main chip happen to use the BCM numbers; `gpioinfo` from libgpiod lists
//! every chip's lines). Every line is requested with the consumer label `fleetlet`, so
//! `gpioinfo` shows which lines the agent holds. Errors name the chip and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpiocdev::line::{Bias as CdevBias, Value};
use gpiocdev::Request;

use super::{Bias, Error, Gpio};

/// The consumer label every requested line carries.
pub const CONSUMER: &str = "fleetlet";

/// Lines of one GPIO chip, each requested on first configuration.
pub struct CdevGpio {
    chip: PathBuf,
    num_lines: u32,
    lines: BTreeMap<u8, (Request, bool)>,
}

impl CdevGpio {
    /// Opens `chip` (e.g. `/dev/gpiochip0`) and reads how many lines it has.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the chip: it does not exist, it is not a GPIO chip,
    /// or the agent's user may not open it.
    pub fn open(chip: &Path) -> Result<Self, Error> {
        let unavailable = |reason: String| Error::Unavailable {
            backend: "cdev",
            reason,
        };
        if !chip.exists() {
            return Err(unavailable(format!(
                "{} does not exist (GPIO chips on this machine: {})",
                chip.display(),
                present_chips()
            )));
        }
        let c = gpiocdev::Chip::from_path(chip).map_err(|e| {
            unavailable(format!(
                "{}: {e} (is the agent's user allowed to open it? on Raspberry Pi OS add it to the `gpio` group)",
                chip.display()
            ))
        })?;
        let info = c
            .info()
            .map_err(|e| unavailable(format!("{}: {e}", chip.display())))?;
        Ok(Self {
            chip: chip.to_path_buf(),
            num_lines: info.num_lines,
            lines: BTreeMap::new(),
        })
    }

    /// The chip's path.
    pub fn chip(&self) -> &Path {
        &self.chip
    }

    fn line_error(&self, line: u8, reason: impl Into<String>) -> Error {
        Error::Line {
            chip: self.chip.display().to_string(),
            line: line.into(),
            reason: reason.into(),
        }
    }

    fn request(&mut self, line: u8, output: Option<bool>, bias: Bias) -> Result<(), Error> {
        if u32::from(line) >= self.num_lines {
            return Err(self.line_error(
                line,
                format!(
                    "the chip has lines 0..={} only",
                    self.num_lines.saturating_sub(1)
                ),
            ));
        }
        // Re-configuring a line releases the old request first (the kernel allows one
        // request per line).
        self.lines.remove(&line);
        let mut b = Request::builder();
        b.on_chip(&self.chip)
            .with_consumer(CONSUMER)
            .with_line(u32::from(line));
        match output {
            Some(high) => {
                b.as_output(value(high));
            }
            None => {
                b.as_input().with_bias(match bias {
                    Bias::PullUp => CdevBias::PullUp,
                    Bias::PullDown => CdevBias::PullDown,
                    Bias::None => CdevBias::Disabled,
                });
            }
        }
        let req = b.request().map_err(|e| {
            self.line_error(
                line,
                format!("cannot request it (is another program holding it? `gpioinfo` shows the consumer): {e}"),
            )
        })?;
        self.lines.insert(line, (req, output.is_some()));
        Ok(())
    }
}

/// The `/dev/gpiochip*` devices present, for error messages.
fn present_chips() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gpiochip"))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn value(high: bool) -> Value {
    if high {
        Value::Active
    } else {
        Value::Inactive
    }
}

impl Gpio for CdevGpio {
    fn output(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        self.request(pin, Some(high), Bias::None)
    }

    fn input(&mut self, pin: u8, bias: Bias) -> Result<(), Error> {
        self.request(pin, None, bias)
    }

    fn write(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        match self.lines.get(&pin) {
            Some((req, true)) => req
                .set_value(u32::from(pin), value(high))
                .map_err(|e| self.line_error(pin, e.to_string())),
            _ => Err(self.line_error(pin, "not configured as an output")),
        }
    }

    fn read(&mut self, pin: u8) -> Result<bool, Error> {
        match self.lines.get(&pin) {
            Some((req, _)) => req
                .value(u32::from(pin))
                .map(|v| v == Value::Active)
                .map_err(|e| self.line_error(pin, e.to_string())),
            None => Err(self.line_error(pin, "not configured")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_chip_is_named_in_the_error() {
        let chip = Path::new("/dev/gpiochip97");
        assert!(!chip.exists(), "test assumes no gpiochip97");
        let err = CdevGpio::open(chip).err().expect("no such chip");
        let text = err.to_string();
        assert!(
            text.contains("`cdev`") && text.contains("/dev/gpiochip97 does not exist"),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_gpio_chip_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("gpiochip0");
        std::fs::write(&fake, b"").unwrap();
        let err = CdevGpio::open(&fake).err().expect("not a chip");
        let text = err.to_string();
        assert!(text.contains(&fake.display().to_string()), "{text}");
    }
}
