//! `fleetlet` binary: parse the command line and dispatch. Everything else lives in the
//! library (see `src/lib.rs`).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    fleetlet::cli::dispatch(fleetlet::cli::Cli::parse())
}
