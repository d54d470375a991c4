//! fleetlet: the edge runtime for robot compute boards.
// `unsafe` only in supervisor::spawn (two audited calls: posix_spawn's chdir action, which
// nix does not wrap, and registering a pidfd with tokio) and malloc (glibc's `mallopt`);
// the binary forbids it.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod control;
pub mod datadir;
pub mod estop;
pub mod hal;
pub mod liveness;
pub mod logging;
pub mod malloc;
pub mod mqtt;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod runtime;
pub mod serial;
pub mod status;
pub mod supervisor;
pub mod systemd;
pub mod telemetry;
pub mod workload;
