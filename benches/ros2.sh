#!/usr/bin/env bash
# ROS 2 bridge cost: a 1 kHz std_msgs/String topic (rclpy publisher) bridged into the real
# telemetry queue, throttled to 10 Hz and unthrottled, plus the idle node. The measured
# process is the agent's ROS 2 subsystem with telemetry (examples/ros2_bench.rs, release).
# Targets: throttled < 3% of one core; RSS ≤ 20 MB with ROS 2 loaded. Also printed: CPU per
# thread kind (dds.* = Fast DDS, ros2-spin, tokio workers, sled), PSS (shared library
# pages split among the processes that map them) and RSS per group of mappings (Fast DDS
# with its OpenSSL, message type support libraries, libc/libstdc++, other ROS libraries,
# the binary, anonymous memory, DDS shared-memory segments).
#   bash benches/ros2.sh [seconds per case, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/ros2-env.sh
SECS="${1:-15}"
export ROS_DOMAIN_ID=$((150 + $$ % 50))
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
cargo build --release --features ros2 --example ros2_bench
BIN=target/release/examples/ros2_bench

"$ROS2_PYTHON" edge-manifests/examples/ros2-nav/nodes/rate_pub.py --topic /bench --rate 1000 &
PUB=$!
trap 'kill -INT $PUB 2>/dev/null || true; wait $PUB 2>/dev/null || true' EXIT
sleep 3

run() { "$BIN" --topic /bench --seconds "$SECS" --warmup 3 "$@"; }
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 2))" "$1" "$2"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ROS 2 bridge benchmark ($(nproc) cores, ${SECS}s per case, RMW $RMW_IMPLEMENTATION)"
for case in throttled unthrottled idle; do
  case $case in
    throttled) out=$(run --max-rate 10) ;;
    unthrottled) out=$(run --max-rate none) ;;
    idle) out=$(run --idle yes) ;;
  esac
  cpu=$(field "$out" cpu_percent); rss=$(field "$out" rss_mb); peak=$(field "$out" peak_rss_mb)
  anon=$(field "$out" anon_rss_mb); file=$(field "$out" file_rss_mb); pss=$(field "$out" pss_mb)
  rx=$(field "$out" received_hz); fw=$(field "$out" forwarded_hz)
  threads=$(python3 -c "import json,sys; d=json.loads(sys.argv[1])['cpu_by_thread']; print(' '.join(f'{k} {v}%' for k,v in sorted(d.items(), key=lambda x:-x[1])))" "$out")
  case $case in
    throttled) target_cpu="< 3% of one core" ;;
    *) target_cpu="(no target)" ;;
  esac
  ok_cpu=$(python3 -c "print('OK' if $cpu < 3.0 else 'MISS')")
  ok_rss=$(python3 -c "print('OK' if $rss <= 20.0 else 'MISS')")
  [ "$case" = throttled ] || ok_cpu="-"
  printf '%-12s cpu %6.2f%%  target %-18s %-4s | rss %6.1f MB (peak %6.1f; private %5.1f, shared libs %5.1f; PSS %5.1f)  target <= 20 MB %-4s | received %7.1f Hz  forwarded %7.1f Hz\n' \
    "$case" "$cpu" "$target_cpu" "$ok_cpu" "$rss" "$peak" "$anon" "$file" "$pss" "$ok_rss" "$rx" "$fw"
  printf '%-12s cpu by thread: %s\n' "" "$threads"
  groups=$(python3 -c "import json,sys; d=json.loads(sys.argv[1])['rss_by_group_mb']; print(' '.join(f'{k} {v}' for k,v in sorted(d.items(), key=lambda x:-x[1])))" "$out")
  printf '%-12s rss by mapping (MB): %s\n' "" "$groups"
done
