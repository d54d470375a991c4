//! cgroup v2 limits, when the agent's cgroup is delegated to it (systemd `Delegate=yes`, a
//! K3s pod with a private cgroup namespace).
//!
//! Layout under the agent's own cgroup `A`:
//! - `A/agent/` — the agent itself moves here (cgroup v2's "no internal processes" rule:
//!   `A` may enable controllers for its children only if no process lives in `A`);
//! - `A/proc-<name>/` — one leaf per supervised process, with `memory.max` / `cpu.max`.
//!
//! Detection never fails the agent: any missing piece (no cgroup2 mount, no `memory`
//! controller offered, a read-only directory) yields [`Cgroups::Unavailable`] with the
//! reason, and limits fall back to rlimits; `status` says which applied per process.

use std::path::{Path, PathBuf};

use crate::workload::Limits;

/// `cpu.max` period (the kernel default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// What the agent can do with cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroups {
    /// Limits go into `base/proc-<name>`.
    Available {
        /// The agent's delegated cgroup directory.
        base: PathBuf,
        /// `cpu` controller enabled for children.
        cpu: bool,
    },
    /// Why not.
    Unavailable(String),
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Where a cgroup v1 hierarchy with the `memory` controller is mounted (a "hybrid" host:
/// v1 for the controllers, v2 mounted beside them with few or none).
fn v1_memory_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != "cgroup" {
            return None;
        }
        let super_opts = post.nth(1)?;
        if !super_opts.split(',').any(|o| o == "memory") {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

impl Cgroups {
    /// Detects and prepares a delegated cgroup (blocking: call off the async workers).
    pub(crate) fn detect(enabled: bool) -> Self {
        if !enabled {
            return Self::Unavailable("disabled by supervisor.cgroups = false".into());
        }
        let Some(mount) = cgroup2_mount() else {
            return Self::Unavailable("no cgroup v2 hierarchy is mounted".into());
        };
        let Some(rel) = own_cgroup() else {
            return Self::Unavailable(
                "the agent is not in a cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)"
                    .into(),
            );
        };
        let mut base = mount.join(rel.trim_start_matches('/'));
        // Already moved into our `agent` leaf by an earlier detection in this process.
        if base.file_name().is_some_and(|n| n == "agent") {
            if let Some(parent) = base.parent() {
                base = parent.to_owned();
            }
        }
        let controllers =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = controllers.split_whitespace().collect();
        if !offered.contains(&"memory") {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            return Self::Unavailable(match v1_memory_mount(&info) {
                Some(v1) => format!(
                    "the memory controller is bound to the cgroup v1 hierarchy at {} (hybrid layout), so cgroup v2 {} offers only [{}]; \
                     needs a pure cgroup v2 host (systemd.unified_cgroup_hierarchy=1) and a delegated agent cgroup (systemd Delegate=yes)",
                    v1.display(),
                    base.display(),
                    offered.join(" ")
                ),
                None => format!(
                    "cgroup v2 {} offers controllers [{}] without memory: the agent's cgroup is not delegated (systemd Delegate=yes)",
                    base.display(),
                    offered.join(" ")
                ),
            });
        }
        let cpu = offered.contains(&"cpu");
        let agent = base.join("agent");
        if let Err(e) = std::fs::create_dir_all(&agent) {
            return Self::Unavailable(format!("cgroup v2 {} is not writable: {e}", base.display()));
        }
        if let Err(e) = write(&agent.join("cgroup.procs"), &std::process::id().to_string()) {
            return Self::Unavailable(e);
        }
        let enable = if cpu { "+memory +cpu" } else { "+memory" };
        if let Err(e) = write(&base.join("cgroup.subtree_control"), enable) {
            return Self::Unavailable(e);
        }
        Self::Available { base, cpu }
    }

    /// Creates the leaf of process `name` with its limits; returns the directory and which
    /// of (memory, cpu) it set.
    ///
    /// # Errors
    /// Why the leaf could not be prepared (the caller falls back to rlimits).
    pub(crate) fn prepare(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<(PathBuf, bool, bool), String> {
        let Self::Available { base, cpu } = self else {
            return Err("cgroups unavailable".into());
        };
        let dir = base.join(format!("proc-{name}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut mem_set = false;
        let mut cpu_set = false;
        write(
            &dir.join("memory.max"),
            &limits
                .memory
                .map_or_else(|| "max".to_owned(), |m| m.0.to_string()),
        )?;
        if limits.memory.is_some() {
            mem_set = true;
            // No swap escape hatch: the limit is a limit.
            let _ = write(&dir.join("memory.swap.max"), "0");
        }
        if *cpu {
            let value = match limits.cpu {
                Some(c) => {
                    cpu_set = true;
                    format!(
                        "{} {CPU_PERIOD_US}",
                        ((c * CPU_PERIOD_US as f64) as u64).max(1000)
                    )
                }
                None => format!("max {CPU_PERIOD_US}"),
            };
            write(&dir.join("cpu.max"), &value)?;
        }
        Ok((dir, mem_set, cpu_set))
    }

    /// Removes the leaf of `name` (after its processes are gone). Best effort.
    pub(crate) fn remove(&self, name: &str) {
        if let Self::Available { base, .. } = self {
            let _ = std::fs::remove_dir(base.join(format!("proc-{name}")));
        }
    }

    /// Whether the memory of a process can go through a cgroup.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Self::Available { .. } => None,
            Self::Unavailable(r) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_host_names_its_v1_memory_hierarchy() {
        // mountinfo lines: id parent dev root mountpoint options - fstype source super-options
        let hybrid = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v1_memory_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        let pure_v2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v1_memory_mount(pure_v2), None);
    }
}
