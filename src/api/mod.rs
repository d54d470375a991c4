//! The local, read-only HTTP API on loopback: `/healthz`, `/readyz`, `/metrics`,
//! `/v1/status`. Nothing here changes state: operations that do go through the control
//! socket or signed MQTT commands (DESIGN.md, "Local surface").

pub mod client;
pub mod http;
pub mod logs;
pub mod metrics;

pub use http::{serve, Error, State};
