#!/usr/bin/env bash
# Supervisor benchmark, in one run, for fleetlet, runit (runsv), s6-supervise and supervisord:
#   1. restart latency: a child stamps CLOCK_REALTIME at main() and right before exit(0);
#      latency = next start stamp - previous exit stamp (exit -> reap -> fork -> exec -> main),
#      backoff 0, median and p99 over N restarts (default 200; N=... to change).
#      runsv waits 1 s before restarting a service that ran less than 1 s, so the comparison
#      uses a child that lives 1.1 s (then runsv has no floor). s6-supervise 2.11 waits ~1 s
#      after every death and supervisord acts on its 1 s poll tick whatever the child's
#      lifetime: their figures are their design, printed for completeness.
#      The four supervisors run at the same time over the same window (interleaved: each
#      restart is a short burst ~1.1 s apart), so outside load hits them alike; the load
#      average is printed before and after each phase.
#      A separate fleetlet run with a child that exits at once shows there is no floor.
#      BUSY=k adds k busy-looping processes during the latency phases (load of our own, on
#      top of whatever else runs); run once with BUSY=0 and once with BUSY=4 to compare.
#   2. memory of the supervision tree (supervisor processes only, children excluded) while
#      supervising 10 `sleep` processes: RSS and PSS (smaps_rollup), summed over the tree.
# Prints each figure next to its target and the ratios to runit:
#   fleetlet median <= runit median, fleetlet p99 <= 10 ms, no floor at backoff 0,
#   fleetlet RSS with 10 processes <= 12 MB.
# Installs runit, s6 and supervisor with apt when missing (services are not started).
# Takes about 1.1 x N seconds plus the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-200}
BUSY=${BUSY:-0}

need=""
command -v runsv >/dev/null || need="$need runit"
command -v s6-supervise >/dev/null || need="$need s6"
command -v supervisord >/dev/null || need="$need supervisor"
command -v cc >/dev/null || need="$need gcc libc6-dev"
if [ -n "$need" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Do not let the packages start system services (supervisord) on this machine.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
  [ "${trap_policy:-0}" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

cargo build --release --bin fleetlet >/dev/null 2>&1 || cargo build --release --bin fleetlet
BIN=$ROOT/target/release/fleetlet

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The stamping child: appends "S <ns>" at main(), sleeps RUN_MS, appends "E <ns>", exits 0.
cat > "$work/stamp.c" <<'CEOF'
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
static void stamp(int fd, char tag) {
  struct timespec t; clock_gettime(CLOCK_REALTIME, &t);
  char buf[64]; int n = snprintf(buf, sizeof buf, "%c %lld\n", tag, (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
  if (write(fd, buf, n) != n) _exit(2);
}
int main(void) {
  int fd = open("stamps", O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) return 2;
  stamp(fd, 'S');
  if (RUN_MS > 0) { struct timespec d = { RUN_MS / 1000, (RUN_MS % 1000) * 1000000L }; nanosleep(&d, 0); }
  stamp(fd, 'E');
  return 0;
}
CEOF
for v in quick:0 long:1100; do
  cc -O2 -static -DRUN_MS=${v#*:} -o "$work/stamp-${v%%:*}" "$work/stamp.c" 2>/dev/null ||
    cc -O2 -DRUN_MS=${v#*:} -o "$work/stamp-${v%%:*}" "$work/stamp.c"
done

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
note_load() { echo "$1 $(loadavg)" >> "$work/load"; }
hogs=()
start_busy() {
  for _ in $(seq 1 "$BUSY"); do sh -c 'while :; do :; done' & hogs+=($!); pids+=($!); done
  [ "$BUSY" -eq 0 ] || sleep 5 # let the load average catch up a little
}
stop_busy() {
  for p in "${hogs[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  hogs=()
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits until $1/stamps has at least $2 start lines (timeout $3 s).
wait_starts() {
  local f=$1/stamps want=$2 deadline=$(( $(date +%s) + $3 ))
  while [ "$(grep -c '^S' "$f" 2>/dev/null || echo 0)" -lt "$want" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timeout waiting for $want starts in $f" >&2; return 1; }
    sleep 0.05
  done
}

fleetlet_config() { # dir workload
  local port; port=$(free_port)
  cat > "$1/fleetlet.toml" <<EOF
[device]
id = "bench"
[agent]
data_dir = "$1/data"
log_level = "warn"
[api]
listen = "127.0.0.1:$port"
[supervisor]
allow_unsigned_workloads = true
workload = "$2"
EOF
}

fleetlet_workload() { # dir stamp-binary
  cat > "$1/workload.toml" <<EOF
[process.stamp]
command = "$2"
working_dir = "$1"
restart = "always"
backoff = { initial = "0s", jitter = 0.0 }
crash_loop = { max_failures = 0 }
EOF
  fleetlet_config "$1" "$1/workload.toml"
}

# ---------- restart latency ----------
lat_dir() { mkdir -p "$work/lat-$1"; echo "$work/lat-$1"; }

start_busy
# No floor: fleetlet with a child that exits at once.
note_load "no-floor-start"
d=$(lat_dir fleetlet-quick)
fleetlet_workload "$d" "$work/stamp-quick"
$BIN run --config "$d/fleetlet.toml" >"$d/agent.log" 2>&1 &
fl=$!; pids+=("$fl")
wait_starts "$d" $((N + 1)) 120
kill -TERM "$fl"; wait "$fl" 2>/dev/null || true
note_load "no-floor-end"

# The comparison: all four at once, child lives 1.1 s.
echo "measuring fleetlet, runsv, s6-supervise, supervisord side by side (~$(( N * 11 / 10 )) s)..." >&2
note_load "comparison-start"
d=$(lat_dir fleetlet)
fleetlet_workload "$d" "$work/stamp-long"
$BIN run --config "$d/fleetlet.toml" >"$d/agent.log" 2>&1 &
fl=$!; pids+=("$fl")

dr=$(lat_dir runit)
cp "$work/stamp-long" "$dr/run"
( cd "$dr" && exec runsv . ) &
rv=$!; pids+=("$rv")

d6=$(lat_dir s6)
cp "$work/stamp-long" "$d6/run"
s6-supervise "$d6" &
s6p=$!; pids+=("$s6p")

ds=$(lat_dir supervisord)
cat > "$ds/supervisord.conf" <<EOF
[supervisord]
nodaemon=true
logfile=$ds/supervisord.log
pidfile=$ds/supervisord.pid
[program:stamp]
command=$work/stamp-long
directory=$ds
autorestart=true
startsecs=0
startretries=1000000
EOF
supervisord -c "$ds/supervisord.conf" >/dev/null 2>&1 &
svd=$!; pids+=("$svd")

limit=$(( N * 2 + 60 ))
wait_starts "$d" $((N + 1)) $limit
wait_starts "$dr" $((N + 1)) $limit
wait_starts "$d6" $((N + 1)) $limit
wait_starts "$ds" $((N + 1)) $limit
kill -TERM "$fl"; wait "$fl" 2>/dev/null || true
kill -TERM "$rv"; wait "$rv" 2>/dev/null || true
s6-svc -dx "$d6" 2>/dev/null || kill -TERM "$s6p"; wait "$s6p" 2>/dev/null || true
kill -TERM "$svd"; wait "$svd" 2>/dev/null || true
note_load "comparison-end"
stop_busy

# ---------- memory with 10 processes ----------
tree_mem() { # root pid, excluding pids whose comm is "sleep": prints "rss_kb pss_kb"
  python3 - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1])
kids = {}
for p in os.listdir('/proc'):
    if not p.isdigit(): continue
    try:
        st = open(f'/proc/{p}/stat').read()
    except OSError: continue
    rest = st[st.rfind(')')+2:].split()
    kids.setdefault(int(rest[1]), []).append(int(p))
todo, rss, pss = [root], 0, 0
while todo:
    p = todo.pop()
    todo += kids.get(p, [])
    try:
        if open(f'/proc/{p}/comm').read().strip() == 'sleep': continue
        for l in open(f'/proc/{p}/smaps_rollup'):
            if l.startswith('Rss:'): rss += int(l.split()[1])
            if l.startswith('Pss:'): pss += int(l.split()[1])
    except OSError: pass
print(rss, pss)
EOF
}
count_sleeps() { pgrep -f "sleep 100$1" | wc -l; }

mem() { # name pid
  sleep 3
  read -r rss pss < <(tree_mem "$2")
  echo "$1 $rss $pss" >> "$work/mem"
}

m=$work/mem-fleetlet; mkdir -p "$m"
{ for i in $(seq 1 10); do printf '[process.p%d]\ncommand = "sleep"\nargs = ["1001%02d"]\n' "$i" "$i"; done; } > "$m/workload.toml"
fleetlet_config "$m" "$m/workload.toml"
$BIN run --config "$m/fleetlet.toml" >"$m/agent.log" 2>&1 &
p=$!; pids+=("$p"); mem fleetlet "$p"
[ "$(count_sleeps 1)" -eq 10 ] || echo "warning: fleetlet runs $(count_sleeps 1) sleeps, expected 10" >&2
kill -TERM "$p"; wait "$p" 2>/dev/null || true

m=$work/mem-runit; mkdir -p "$m"
for i in $(seq 1 10); do mkdir -p "$m/sv/p$i"; printf '#!/bin/sh\nexec sleep 1002%02d\n' "$i" > "$m/sv/p$i/run"; chmod +x "$m/sv/p$i/run"; done
runsvdir "$m/sv" >/dev/null 2>&1 &
p=$!; pids+=("$p"); mem runit "$p"
kill -HUP "$p"; wait "$p" 2>/dev/null || true

m=$work/mem-s6; mkdir -p "$m"
for i in $(seq 1 10); do mkdir -p "$m/sv/p$i"; printf '#!/bin/sh\nexec sleep 1003%02d\n' "$i" > "$m/sv/p$i/run"; chmod +x "$m/sv/p$i/run"; done
s6-svscan "$m/sv" >/dev/null 2>&1 &
p=$!; pids+=("$p"); mem s6 "$p"
s6-svscanctl -t "$m/sv" 2>/dev/null || kill -TERM "$p"; wait "$p" 2>/dev/null || true

m=$work/mem-supervisord; mkdir -p "$m"
{ printf '[supervisord]\nnodaemon=true\nlogfile=%s/s.log\npidfile=%s/s.pid\n' "$m" "$m"
  for i in $(seq 1 10); do printf '[program:p%d]\ncommand=sleep 1004%02d\n' "$i" "$i"; done; } > "$m/s.conf"
supervisord -c "$m/s.conf" >/dev/null 2>&1 &
p=$!; pids+=("$p"); mem supervisord "$p"
kill -TERM "$p"; wait "$p" 2>/dev/null || true

# ---------- report ----------
python3 - "$work" "$N" "$BUSY" <<'EOF'
import os, sys, statistics
work, n, busy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"machine: {os.cpu_count()} CPUs; BUSY={busy} busy loops of our own during the latency phases")
for l in open(f"{work}/load"):
    phase, *la = l.split()
    print(f"load average at {phase:<17} {' '.join(la)}")
print()
def lat(name):
    f = f"{work}/lat-{name}/stamps"
    ev = [(l.split()[0], int(l.split()[1])) for l in open(f) if l.strip()]
    out, last_exit = [], None
    for tag, t in ev:
        if tag == 'S' and last_exit is not None:
            out.append((t - last_exit) / 1e6)
        if tag == 'E':
            last_exit = t
    out = out[:n]
    out.sort()
    p99 = out[min(len(out) - 1, int(round(0.99 * (len(out) - 1))))]
    return statistics.median(out), p99, len(out), out[-1]
res = {k: lat(k) for k in ["fleetlet", "runit", "s6", "supervisord"]}
quick = lat("fleetlet-quick")
mem = {}
for l in open(f"{work}/mem"):
    k, rss, pss = l.split(); mem[k] = (int(rss) / 1024, int(pss) / 1024)
print(f"restart latency, exit -> next exec, backoff 0 ({n} restarts each; child runs 1.1 s so no 1 s floor applies)")
print(f"{'supervisor':<12} {'median ms':>10} {'p99 ms':>9} {'max ms':>9} {'restarts':>9} {'median / runit':>15} {'p99 / runit':>12}")
rm, rp = res["runit"][0], res["runit"][1]
for k, (med, p99, cnt, mx) in res.items():
    print(f"{k:<12} {med:>10.3f} {p99:>9.3f} {mx:>9.3f} {cnt:>9} {med / rm:>15.2f} {p99 / rp:>12.2f}")
print(f"fleetlet, child exiting at once: median {quick[0]:.3f} ms, p99 {quick[1]:.3f} ms, max {quick[3]:.3f} ms over {quick[2]} restarts (no floor: {'PASS' if quick[0] < 50 else 'FAIL'})")
fm, fp, _, _ = res["fleetlet"]
print(f"target: fleetlet median <= runit median: {fm:.3f} <= {rm:.3f} ms  {'PASS' if fm <= rm else 'FAIL'}")
print(f"target: fleetlet p99 <= 10 ms: {fp:.3f} ms  {'PASS' if fp <= 10 else 'FAIL'}")
print()
print("memory of the supervision tree with 10 processes (supervised children excluded)")
print(f"{'supervisor':<12} {'RSS MB':>8} {'PSS MB':>8} {'RSS / runit':>12}")
rr = mem["runit"][0]
for k, (rss, pss) in mem.items():
    print(f"{k:<12} {rss:>8.1f} {pss:>8.1f} {rss / rr:>12.2f}")
fr = mem["fleetlet"][0]
print(f"target: fleetlet RSS with 10 processes <= 12 MB: {fr:.1f} MB  {'PASS' if fr <= 12 else 'FAIL'}")
EOF
