#!/usr/bin/env bash
# MCU link benchmark over the QEMU rig's pty (or HIL_RIG): heartbeat->ack round trip
# (median, p99) and the agent-side CPU cost of the link at a 50 Hz heartbeat.
#   benches/serial.sh [seconds]     (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add thumbv7m-none-eabi >/dev/null
cargo build --quiet --release -p hil-tests --bins
exec target/release/hil-bench "${1:-20}"
