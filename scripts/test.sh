#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine or a warm dev box (idempotent):
#   1. installs what the suite needs (apt packages from scripts/apt-packages.txt,
#      Rust via rustup if missing, rustup components and targets),
#   2. cargo fmt --check, cargo clippy -D warnings,
#   3. runs every scripts/test.d/*.sh in name order (feature suites: firmware, HIL, ROS 2),
#   4. cargo test --workspace,
#   5. an aarch64 release build whose `fleetlet version` runs under qemu-aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
step() { printf '\n==> %s\n' "$*"; }
# Incremental caches are for edit-compile loops; in a one-shot run they only
# take disk (2+ GB for this suite). Debug info is trimmed in Cargo.toml.
export CARGO_INCREMENTAL=0
disk() { df -h --output=avail,target "$ROOT" | tail -1 | awk '{print "disk: " $1 " free on " $2}'; }
disk

step "installing prerequisites"
pkgs=$(grep -vE '^\s*(#|$)' scripts/apt-packages.txt | tr '\n' ' ')
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add aarch64-unknown-linux-gnu >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

for s in scripts/test.d/*.sh; do
  [ -e "$s" ] || continue
  step "$s"
  bash "$s"
done

step "cargo test --workspace (HIL suite already ran above)"
cargo test --workspace --exclude hil-tests   # the HIL suite ran in test.d/40-firmware.sh

step "aarch64 release build, run under qemu-aarch64"
cargo build --release --target aarch64-unknown-linux-gnu --bin fleetlet
qemu-aarch64 -L /usr/aarch64-linux-gnu "$ROOT/target/aarch64-unknown-linux-gnu/release/fleetlet" version | tee /tmp/fleetlet-aarch64-version.txt
grep -q "target:   aarch64-unknown-linux-gnu" /tmp/fleetlet-aarch64-version.txt

disk
step "all tests passed"
