#!/usr/bin/env bash
# Bundle verification benchmark (not part of the test command; run by hand):
#
#   bash benches/bundle.sh            # 100 MB verify comparison + 1 GB RSS figures
#   SKIP_1G=1 bash benches/bundle.sh  # only the 100 MB comparison
#
# Needs: openssl, sha256sum (coreutils), rauc + squashfs-tools (apt), /usr/bin/time.
# Builds fleetlet --release, makes a 100 MB random payload, packs it both as a fleetlet
# bundle and as a RAUC bundle (signed by a throwaway self-signed CA), warms the page
# cache, then times in the same run and on the same bytes (best of $RUNS):
#   fleetlet bundle verify   vs  openssl dgst -sha256  vs  sha256sum  vs  rauc info
# Targets: fleetlet <= rauc, and <= 1.2x openssl. Then peak RSS (VmHWM) while verifying
# and while extracting a 1 GB payload; target < 32 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-7}
SIZE_MB=${SIZE_MB:-100}
for t in openssl sha256sum rauc mksquashfs; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install openssl coreutils rauc squashfs-tools)"; exit 2; }
done
cargo build --release --bin fleetlet >/dev/null
F=$PWD/target/release/fleetlet
W=$(mktemp -d /tmp/fleetlet-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W"

# --- fixtures -------------------------------------------------------------------
mkdir -p app rauc-content
head -c "${SIZE_MB}M" /dev/urandom > app/payload.bin
cp app/payload.bin rauc-content/rootfs.img
printf '[process.app]\ncommand = "true"\n' > workload.toml
$F keys gen --out k1 >/dev/null
$F keys gen --out rootk >/dev/null
$F keys root init --root-key rootk.pub --bundle-key k1.pub --out root.json >/dev/null
$F keys root sign root.json --key rootk.key >/dev/null
$F bundle pack app --manifest workload.toml --name bench --version 1.0.0 --key k1.key --out bench.bundle >/dev/null

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key.pem -out ca.cert.pem \
  -subj "/CN=fleetlet bench CA" -days 2 2>/dev/null
cat > rauc-content/manifest.raucm <<EOF
[update]
compatible=fleetlet-bench
version=1.0.0

[image.rootfs]
filename=rootfs.img
EOF
rauc bundle --cert ca.cert.pem --key ca.key.pem rauc-content bench.raucb >/dev/null 2>&1
cat bench.bundle bench.raucb > /dev/null   # page cache

once_us() { # wall time in microseconds of one run of "$@"
  local s e
  s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }; e=$(date +%s%N)
  echo $(( (e - s) / 1000 ))
}
# Interleaved rounds (each round runs all four tools back to back), best per tool: a load
# spike from other processes then hits every tool alike instead of one of them.
declare -A best
run_rounds() {
  local name d
  for _ in $(seq "$RUNS"); do
    for name in fleetlet openssl sha256sum rauc; do
      case $name in
        fleetlet) d=$(once_us $F bundle verify bench.bundle --root root.json) ;;
        openssl) d=$(once_us openssl dgst -sha256 bench.bundle) ;;
        sha256sum) d=$(once_us sha256sum bench.bundle) ;;
        rauc) d=$(once_us rauc info --keyring ca.cert.pem bench.raucb) ;;
      esac
      if [ -z "${best[$name]:-}" ] || [ "$d" -lt "${best[$name]}" ]; then best[$name]=$d; fi
    done
  done
}
ms() { awk -v us="${best[$1]}" 'BEGIN{printf "%.1f", us/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

fb=$(stat -c %s bench.bundle); rb=$(stat -c %s bench.raucb)
echo "fleetlet bundle: $fb bytes; RAUC bundle: $rb bytes (payload ${SIZE_MB} MiB random)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; best of $RUNS interleaved rounds"
run_rounds
t_fl=$(ms fleetlet); t_os=$(ms openssl); t_ss=$(ms sha256sum); t_ra=$(ms rauc)
printf '%-34s %8s ms\n' "fleetlet bundle verify" "$t_fl" \
  "openssl dgst -sha256 (same file)" "$t_os" "sha256sum (same file)" "$t_ss" \
  "rauc info --keyring (RAUC bundle)" "$t_ra"
r_os=$(ratio "$t_fl" "$t_os"); r_ra=$(ratio "$t_fl" "$t_ra"); r_ss=$(ratio "$t_fl" "$t_ss")
echo "fleetlet/openssl = $r_os  (target <= 1.20)  $(awk -v r="$r_os" 'BEGIN{print (r<=1.2)?"MET":"MISSED"}')"
echo "fleetlet/rauc    = $r_ra  (target <= 1.00)  $(awk -v r="$r_ra" 'BEGIN{print (r<=1.0)?"MET":"MISSED"}')"
echo "fleetlet/sha256sum = $r_ss"
echo "fleetlet throughput: $(awk -v b="$fb" -v t="$t_fl" 'BEGIN{printf "%.0f", b/1048576/(t/1000)}') MiB/s"
$F bundle verify bench.bundle --root root.json --stats 2>&1 >/dev/null | sed 's/^/verify 100 MB /'

[ -n "${SKIP_1G:-}" ] && exit 0

# --- 1 GB: peak RSS while verifying and while extracting ------------------------
rm -f app/payload.bin rauc-content/rootfs.img bench.raucb
head -c 1G /dev/urandom > app/payload.bin
$F bundle pack app --manifest workload.toml --name big --version 1.0.0 --key k1.key --out big.bundle >/dev/null
rm -f app/payload.bin
v=$($F bundle verify big.bundle --root root.json --stats 2>&1 >/dev/null | sed -n 's/.*peak_rss_kib=\([0-9]*\).*/\1/p')
x=$($F bundle verify big.bundle --root root.json --extract-to extracted --stats 2>&1 >/dev/null | sed -n 's/.*peak_rss_kib=\([0-9]*\).*/\1/p')
tv=$( { /usr/bin/time -f %M $F bundle verify big.bundle --root root.json >/dev/null; } 2>&1 )
verdict() { awk -v k="$1" 'BEGIN{printf "%.1f MiB (target < 32 MiB) %s", k/1024, (k<32768)?"MET":"MISSED"}'; }
echo "peak RSS verify  1 GB: $(verdict "$v")   [/usr/bin/time max RSS: ${tv} KiB]"
echo "peak RSS extract 1 GB: $(verdict "$x")"
test "$(stat -c %s extracted/payload.bin)" -eq $((1024*1024*1024))
