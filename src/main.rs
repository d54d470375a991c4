//! `fleetlet` binary: parse the command line and dispatch. Everything else lives in the
//! library (see `src/lib.rs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use fleetlet::cli::{self, Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, log_format } => {
            let cfg = match cli::load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Still the only thread: write the process environment (the ROS 2 graph,
            // `Ros2Env::apply_to_own_process`) before the logger, the tokio runtime and DDS
            // start threads that may read it concurrently.
            if let Err(code) = cli::apply_process_env(&cfg) {
                return code;
            }
            cli::run_agent(cfg, log_format)
        }
        command => cli::dispatch(Cli { command }),
    }
}
