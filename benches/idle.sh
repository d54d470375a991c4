#!/usr/bin/env bash
# Measures start-up time (exec → /readyz 200) and idle memory of the release agent with the
# dev config, and prints them next to the targets (start < 1 s, idle RSS < 10 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin fleetlet >/dev/null 2>&1 || cargo build --release --bin fleetlet
BIN=target/release/fleetlet
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
sed -e '/^# ---- supervisor ----/,/^# ---- end supervisor ----/d' -e "s#^data_dir = .*#data_dir = \"$work/data\"#" -e "s#^listen = .*#listen = \"127.0.0.1:$port\"#" \
  edge-manifests/config/dev.toml > "$work/dev.toml"
start=$(date +%s%N)
$BIN run --config "$work/dev.toml" 2>/dev/null &
pid=$!
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 5
rss_kb=$(awk '/^VmRSS:/{print $2}' /proc/$pid/status)
pss_kb=$(awk '/^Pss:/{print $2}' /proc/$pid/smaps_rollup)
printf 'startup (exec -> /readyz 200): %d ms   target < 1000 ms   %s\n' "$ready_ms" "$([ "$ready_ms" -lt 1000 ] && echo PASS || echo FAIL)"
printf 'idle RSS after 5 s:            %.1f MB  target < 10 MB     %s\n' "$(awk "BEGIN{print $rss_kb/1024}")" "$([ "$rss_kb" -lt 10240 ] && echo PASS || echo FAIL)"
printf 'idle PSS after 5 s:            %.1f MB\n' "$(awk "BEGIN{print $pss_kb/1024}")"
kill -TERM $pid; wait $pid
