#!/usr/bin/env bash
# ROS 2 Jazzy environment for building and running fleetlet with `--features ros2`.
#
#   source scripts/ros2-env.sh     # exports the environment (installs the venv first if needed)
#   bash scripts/ros2-env.sh       # only installs / checks the venv
#
# With a system ROS 2 (/opt/ros/jazzy/setup.bash, a real robot) that is sourced and nothing is
# installed. Otherwise ROS 2 Jazzy comes from PyPI wheels into the project-local venv
# .venv/ros2 (idempotent: a stamp file records the installed package set), with two fixes:
#   1. the wheels ship no librmw_implementation.so; r2r links against it, so it is a symlink to
#      librmw_fastrtps_cpp.so in <venv>/lib (RMW_IMPLEMENTATION=rmw_fastrtps_cpp),
#   2. the wheels' librcl.so and librcl_action.so list *__rosidl_generator_py libraries as
#      needed (unused by rcl; they reference libpython symbols without depending on it), so a
#      process loading them as they are needs libpython. The agent gets copies without those
#      entries in .venv/ros2-agent-lib (ROS2_AGENT_LIB_DIR; build.rs puts it in the binaries'
#      DT_RPATH, searched before LD_LIBRARY_PATH), and never maps libpython (2.4 MB of RSS).
#      rclpy children keep the originals. A system ROS 2 needs none of it.
# Overrides: ROS2_ENV_VENV (venv path), ROS2_ENV_PYTHON (python3.11 interpreter).
# (These are read only by this script, never by the agent.)

# Message packages r2r generates Rust types for (r2r adds the four it needs itself; nested
# dependencies must be listed). Fewer packages = much faster builds.
FLEETLET_IDL_PACKAGES="action_msgs;builtin_interfaces;diagnostic_msgs;geometry_msgs;lifecycle_msgs;nav_msgs;rcl_interfaces;rosgraph_msgs;sensor_msgs;service_msgs;std_msgs;unique_identifier_msgs"

_ros2_env_main() {
  export IDL_PACKAGE_FILTER="${IDL_PACKAGE_FILTER:-$FLEETLET_IDL_PACKAGES}"
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

  if [ -f /opt/ros/jazzy/setup.bash ] && [ -z "${ROS2_ENV_FORCE_VENV:-}" ]; then
    # shellcheck disable=SC1091
    set +u; . /opt/ros/jazzy/setup.bash; set -u
    export ROS_DISTRO=jazzy
    export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
    # No ROS2_AGENT_LIB_DIR here: apt-built ROS 2 libraries do not depend on Python bindings.
    unset ROS2_AGENT_LIB_DIR
    local py
    py="$(command -v python3)"
    export ROS2_PYTHON="$py"
    return 0
  fi

  local venv="${ROS2_ENV_VENV:-$root/.venv/ros2}"
  local py="${ROS2_ENV_PYTHON:-}"
  if [ -z "$py" ]; then
    for c in python3.11 /usr/bin/python3.11 python3; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2]==(3,11) else 1)' 2>/dev/null; then
        py="$(command -v "$c")"; break
      fi
    done
  fi
  if [ -z "$py" ]; then
    echo "ros2-env: no python3.11 found (ROS 2 Jazzy wheels are cp311); set ROS2_ENV_PYTHON" >&2
    return 1
  fi

  local pkgs="ros-jazzy-rclpy ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-diagnostic-msgs
    ros-jazzy-geometry-msgs ros-jazzy-nav-msgs ros-jazzy-lifecycle-msgs ros-jazzy-rcl-interfaces
    ros-jazzy-builtin-interfaces ros-jazzy-rmw-fastrtps-cpp ros-jazzy-rmw-implementation
    ros-jazzy-rcl-lifecycle"
  local stamp="$venv/.fleetlet-ros2-stamp"
  local want
  want="$(echo "$pkgs" | tr -s ' \n' ' ')"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "ros2-env: installing ROS 2 Jazzy wheels into $venv" >&2
    if [ ! -x "$venv/bin/python" ]; then
      "$py" -m venv "$venv" || { echo "ros2-env: cannot create venv $venv (apt install python3-venv?)" >&2; return 1; }
    fi
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $want || {
      echo "ros2-env: pip install of the ROS 2 wheels failed" >&2; return 1; }
    echo "$want" > "$stamp"
  fi

  local sp
  sp="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # Fix 1: librmw_implementation.so -> librmw_fastrtps_cpp.so
  mkdir -p "$venv/lib"
  local rmw
  rmw="$(find "$venv" -name 'librmw_fastrtps_cpp.so' -print -quit)"
  if [ -z "$rmw" ]; then
    echo "ros2-env: librmw_fastrtps_cpp.so not found in $venv" >&2; return 1
  fi
  if [ ! -e "$venv/lib/librmw_implementation.so" ] || [ "$(readlink -f "$venv/lib/librmw_implementation.so")" != "$(readlink -f "$rmw")" ]; then
    ln -sf "$rmw" "$venv/lib/librmw_implementation.so"
  fi

  # Fix 2: rcl without the Python-binding dependencies, for the agent only.
  local agent_lib="$root/.venv/ros2-agent-lib" l
  mkdir -p "$agent_lib"
  for l in librcl.so librcl_action.so; do
    if [ ! -f "$agent_lib/$l" ] || [ "$venv/lib/$l" -nt "$agent_lib/$l" ]; then
      "$venv/bin/python" "$root/scripts/elf-drop-needed.py" "$venv/lib/$l" "$agent_lib/$l.tmp" __rosidl_generator_py.so >/dev/null &&
        mv "$agent_lib/$l.tmp" "$agent_lib/$l" || {
        echo "ros2-env: cannot write $agent_lib/$l without its Python-binding dependencies" >&2; return 1; }
    fi
  done

  local libpy
  libpy="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
  local ld="$venv/lib:$libpy"
  local d
  for d in "$sp"/*.libs "$sp"/lib; do
    [ -d "$d" ] && ld="$ld:$d"
  done

  export AMENT_PREFIX_PATH="$venv"
  export CMAKE_PREFIX_PATH="$venv"
  export ROS_DISTRO=jazzy
  export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
  export ROS_VERSION=2
  export ROS_PYTHON_VERSION=3
  export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$venv/bin:$PATH"
  export ROS2_AGENT_LIB_DIR="$agent_lib"
  export ROS2_PYTHON="$venv/bin/python"
  export ROS2_VENV="$venv"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  _ros2_env_main
  echo "ros2-env: ok (AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-})"
else
  _ros2_env_main
fi
