//! Simulated GPIO: pins in memory, with a history of every output level for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Bias, Error, Gpio};

#[derive(Debug, Default)]
struct Pins {
    outputs: BTreeMap<u8, Vec<bool>>,
    inputs: BTreeMap<u8, bool>,
}

/// In-memory pins. Clones share the same pins (keep one to drive inputs in tests).
#[derive(Debug, Clone, Default)]
pub struct SimGpio {
    pins: Arc<Mutex<Pins>>,
}

impl SimGpio {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets a simulated input level (high = pressed for the e-stop).
    pub fn set_input(&self, pin: u8, high: bool) {
        self.lock().inputs.insert(pin, high);
    }

    /// The current level of an output.
    pub fn level(&self, pin: u8) -> Option<bool> {
        self.lock()
            .outputs
            .get(&pin)
            .and_then(|h| h.last().copied())
    }

    /// Every level an output was set to, in order.
    pub fn history(&self, pin: u8) -> Vec<bool> {
        self.lock().outputs.get(&pin).cloned().unwrap_or_default()
    }
}

impl Gpio for SimGpio {
    fn output(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        self.lock().outputs.insert(pin, vec![high]);
        Ok(())
    }

    fn input(&mut self, pin: u8, _bias: Bias) -> Result<(), Error> {
        self.lock().inputs.entry(pin).or_insert(false);
        Ok(())
    }

    fn write(&mut self, pin: u8, high: bool) -> Result<(), Error> {
        match self.lock().outputs.get_mut(&pin) {
            Some(h) => {
                h.push(high);
                Ok(())
            }
            None => Err(Error::Pin {
                pin,
                reason: "not configured as an output".into(),
            }),
        }
    }

    fn read(&mut self, pin: u8) -> Result<bool, Error> {
        self.lock().inputs.get(&pin).copied().ok_or(Error::Pin {
            pin,
            reason: "not configured as an input".into(),
        })
    }
}
