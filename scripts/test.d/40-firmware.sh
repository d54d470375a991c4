#!/usr/bin/env bash
# Safety-MCU firmware and the hardware-in-the-loop suite (idempotent, fresh Debian 12 ok):
#   1. rustup targets for both firmware binaries (apt packages come from apt-packages.txt:
#      qemu-system-arm for the QEMU rig),
#   2. host tests of firmware/proto and firmware/safety-core (unit + proptest),
#   3. clippy + release builds of the QEMU (lm3s6965) and RP2040 (Pico) firmware, plus the
#      protocol-mismatch QEMU image the HIL suite boots,
#   4. the HIL suite against the QEMU rig (hil-tests/rigs/qemu.toml).
# Set HIL_RIG=path/to/rig.toml to run step 4 against a bench rig instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
step() { printf '\n--> %s\n' "$*"; }

step "rustup targets"
rustup target add thumbv7m-none-eabi thumbv6m-none-eabi >/dev/null
command -v qemu-system-arm >/dev/null || { echo "qemu-system-arm missing (scripts/apt-packages.txt)"; exit 1; }

cd "$ROOT/firmware"
step "firmware: fmt"
cargo fmt --all -- --check
step "firmware: host tests (proto, safety-core)"
cargo test -p fleetlet-proto -p fleetlet-safety-core
step "firmware: clippy"
cargo clippy -p fleetlet-proto -p fleetlet-safety-core --all-targets -- -D warnings
cargo clippy --release -p fleetlet-fw-qemu --target thumbv7m-none-eabi -- -D warnings
cargo clippy --release -p fleetlet-fw-rp2040 --target thumbv6m-none-eabi -- -D warnings
step "firmware: QEMU lm3s6965 image (+ protocol-mismatch image)"
cargo build --release -p fleetlet-fw-qemu --target thumbv7m-none-eabi --features protocol-mismatch
cp target/thumbv7m-none-eabi/release/fleetlet-fw-qemu target/thumbv7m-none-eabi/release/fleetlet-fw-qemu-mismatch
cargo build --release -p fleetlet-fw-qemu --target thumbv7m-none-eabi
step "firmware: RP2040 (Pico) image"
cargo build --release -p fleetlet-fw-rp2040 --target thumbv6m-none-eabi
ls -l target/thumbv7m-none-eabi/release/fleetlet-fw-qemu target/thumbv6m-none-eabi/release/fleetlet-fw-rp2040

cd "$ROOT"
step "HIL suite (${HIL_RIG:-hil-tests/rigs/qemu.toml})"
cargo test -p hil-tests -- --test-threads 1
