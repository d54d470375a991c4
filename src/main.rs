//! `fleetlet` binary: parse the command line and dispatch. Everything else lives in the
//! library (see `src/lib.rs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use fleetlet::cli::{self, Cli};

fn main() -> ExitCode {
    // `dispatch` runs on this thread before anything else starts one: `fleetlet run`
    // writes the process environment (the ROS 2 graph) before the logger, the tokio
    // runtime and DDS start threads that may read it concurrently.
    cli::dispatch(Cli::parse())
}
