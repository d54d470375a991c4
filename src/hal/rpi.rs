//! Raspberry Pi GPIO through rppal (`rpi` feature). Fails with a clear error on machines
//! that are not a Pi or when the user may not open `/dev/gpiomem` (add it to `gpio`).

use std::collections::BTreeMap;

use rppal::gpio::{InputPin, Level, OutputPin};

use super::{Bias, Error, Gpio};

/// rppal-backed pins.
pub struct RpiGpio {
    gpio: rppal::gpio::Gpio,
    outputs: BTreeMap<u8, OutputPin>,
    inputs: BTreeMap<u8, InputPin>,
}

impl RpiGpio {
    /// Opens the Pi's GPIO.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the cause (not a Raspberry Pi, permission denied).
    pub fn new() -> Result<Self, Error> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| Error::Unavailable {
            backend: "rpi",
            reason: format!(
                "{e} (is this a Raspberry Pi, and is the agent's user in the `gpio` group?)"
            ),
        })?;
        Ok(Self {
            gpio,
            outputs: BTreeMap::new(),
            inputs: BTreeMap::new(),
        })
    }

    fn pin(&self, pin: u8) -> Result<rppal::gpio::Pin, Error> {
        self.gpio.get(pin).map_err(|e| Error::Pin {
            pin,
            reason: e.to_string(),
        })
    }
}

impl Gpio for RpiGpio {
    fn output(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        let p = self.pin(pin)?;
        let out = if high {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        self.outputs.insert(pin, out);
        Ok(())
    }

    fn input(&mut self, pin: u8, bias: Bias) -> Result<(), Error> {
        let p = self.pin(pin)?;
        let input = match bias {
            Bias::PullUp => p.into_input_pullup(),
            Bias::PullDown => p.into_input_pulldown(),
            Bias::None => p.into_input(),
        };
        self.inputs.insert(pin, input);
        Ok(())
    }

    fn write(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        let p = self.outputs.get_mut(&pin).ok_or(Error::Pin {
            pin,
            reason: "not configured as an output".into(),
        })?;
        p.write(if high { Level::High } else { Level::Low });
        Ok(())
    }

    fn read(&mut self, pin: u8) -> Result<bool, Error> {
        self.inputs
            .get(&pin)
            .map(InputPin::is_high)
            .ok_or(Error::Pin {
                pin,
                reason: "not configured as an input".into(),
            })
    }
}
