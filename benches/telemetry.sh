#!/usr/bin/env bash
# Telemetry benchmark: ingest into the sled queue, drain through the real agent to a local
# mosquitto, and peers (mosquitto_pub --repeat, a plain rumqttc publisher) in the same run.
# Usage: benches/telemetry.sh [--records N] [--peer-messages N] [--batch-records N]
#        [--batch-bytes N] [--inflight N] [--db-cache-bytes N] [--pack-max-bytes N] [--no-peers]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null || { echo "needs apt mosquitto mosquitto-clients" >&2; exit 1; }
# Two builds: built together, the binary would get the example's dev-dependency features
# (cargo unifies them) and not be the fleetlet that ships.
cargo build --release --quiet --bin fleetlet
cargo build --release --quiet --example telemetry_bench
exec target/release/examples/telemetry_bench --agent target/release/fleetlet "$@"
