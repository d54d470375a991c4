//! Embeds the git commit and the target triple for `fleetlet version`.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    println!(
        "cargo:rustc-env=BUILD_GIT_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    println!(
        "cargo:rustc-env=BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    ros2_agent_lib();
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}

/// With the `ros2` feature and ROS 2 from PyPI wheels, scripts/ros2-env.sh exports
/// `ROS2_AGENT_LIB_DIR`: copies of the wheels' `librcl.so` and `librcl_action.so` without
/// their (unused) dependencies on `*__rosidl_generator_py` libraries, which reference
/// libpython symbols. The binaries get it as DT_RPATH (`--disable-new-dtags`), which the
/// loader searches before `LD_LIBRARY_PATH`: the agent loads the copies and never maps
/// libpython, while rclpy children (same `LD_LIBRARY_PATH`, no such RPATH) keep the
/// originals. The linker searches it first too, so it never looks for the Python bindings.
/// A system ROS 2 needs none of it.
fn ros2_agent_lib() {
    println!("cargo:rerun-if-env-changed=ROS2_AGENT_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_ROS2").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("ROS2_AGENT_LIB_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if !dir.join("librcl.so").exists() {
        println!(
            "cargo:warning=ROS2_AGENT_LIB_DIR={} has no librcl.so; the wheels' librcl.so will need libpython at run time",
            dir.display()
        );
        return;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!(
        "cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}",
        dir.display()
    );
}
