//! The [`Port`] trait: how the link opens its byte stream. [`SerialPort`] is the real
//! thing (tokio-serial); tests and the HIL rig can hand in anything that opens an
//! `AsyncRead + AsyncWrite` (a pty, a socket).

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Something the link can (re)open.
pub trait Port: Send + Sync + 'static {
    /// Human-readable name (the device path) for errors and telemetry.
    fn name(&self) -> String;
    /// Opens the port. Called again after every loss.
    ///
    /// # Errors
    /// The OS error (device missing, permission denied, busy).
    fn open(&self) -> std::io::Result<Box<dyn Io>>;
}

/// A serial device through tokio-serial (8N1, no flow control, exclusive).
#[derive(Debug, Clone)]
pub struct SerialPort {
    path: PathBuf,
    baud: u32,
}

impl SerialPort {
    /// A port at `path` and `baud`.
    pub fn new(path: PathBuf, baud: u32) -> Self {
        Self { path, baud }
    }
}

impl Port for SerialPort {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self) -> std::io::Result<Box<dyn Io>> {
        use tokio_serial::SerialPortBuilderExt;
        let path = self.path.to_string_lossy().into_owned();
        let stream = tokio_serial::new(path, self.baud)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::None)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(std::io::Error::from)?;
        Ok(Box::new(stream))
    }
}
