#!/usr/bin/env bash
# ROS 2 suite: installs ROS 2 Jazzy (PyPI wheels into .venv/ros2, or uses /opt/ros/jazzy),
# then builds and tests fleetlet with `--features ros2` against real rclpy nodes.
# The ROS 2 tests share one r2r context per test binary, so they run on one test thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source scripts/ros2-env.sh
echo "ros2: ROS_DISTRO=$ROS_DISTRO RMW_IMPLEMENTATION=$RMW_IMPLEMENTATION AMENT_PREFIX_PATH=$AMENT_PREFIX_PATH"
cargo clippy --features ros2 --all-targets -- -D warnings
cargo test --features ros2 --lib ros2::
cargo test --features ros2 --test ros2 --test ros2_workload --test ros2_mqtt --test ros2_agent -- --test-threads=1
