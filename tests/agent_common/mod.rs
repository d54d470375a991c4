//! Shared helpers of the tests that run the real `fleetlet` binary as a subprocess.
#![allow(dead_code)]

use std::net::TcpListener;

/// The `fleetlet` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_fleetlet");

/// A loopback TCP port that was free a moment ago (for the agent's local API).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
