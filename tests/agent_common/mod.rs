//! Shared helpers of the tests that run the real `fleetlet` binary as a subprocess.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::Duration;

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

/// The agent's `/v1/status` on the local API at `port`, if it answers with JSON.
pub fn status(port: u16) -> Option<serde_json::Value> {
    let r = fleetlet::api::client::get(
        ([127, 0, 0, 1], port).into(),
        "/v1/status",
        Duration::from_secs(2),
    )
    .ok()?;
    serde_json::from_slice(&r.body).ok()
}
