//! The environment of a supervised process: the agent's own environment, then the ROS 2
//! variables of the workload (`ROS_DOMAIN_ID`, `RMW_IMPLEMENTATION`), then the bundle's
//! colcon install space prepended to the search paths, then the process's own `env`
//! (which wins).
//!
//! Colcon install spaces come in two layouts (`install/.colcon_install_layout`):
//! - `isolated` (colcon's default): one prefix per package, `install/<pkg>/`;
//! - `merged` (`--merge-install`): `install/` itself is the single prefix.
//!
//! For each prefix, as `local_setup.sh` would: `AMENT_PREFIX_PATH += prefix` (when it has
//! `share/ament_index` or a `share/<pkg>/package.xml`), `PATH += prefix/bin`,
//! `LD_LIBRARY_PATH += prefix/lib`, `PYTHONPATH += prefix/lib/python3.X/site-packages`
//! (and `local/lib/python3.X/dist-packages`, the Debian layout) — only directories that
//! exist, prepended so the bundle's packages shadow the system's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::workload::{ProcessSpec, Workload};

/// Variables every process gets on top of the agent's environment, in order of
/// application. Computed once per workload (it reads the install space).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WorkloadEnv {
    /// Variables to set (full values, prefixes already joined with the agent's values).
    pub vars: BTreeMap<String, OsString>,
}

/// The prefixes of a colcon install space, in the order they should appear (first wins).
pub(crate) fn install_prefixes(install: &Path) -> Vec<PathBuf> {
    let layout = std::fs::read_to_string(install.join(".colcon_install_layout"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    if layout == "merged" {
        return vec![install.to_owned()];
    }
    let mut out: Vec<PathBuf> = match std::fs::read_dir(install) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join("share").is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    if out.is_empty() && install.join("share").is_dir() {
        // A plain prefix without the layout marker.
        out.push(install.to_owned());
    }
    out
}

fn python_dirs(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in [prefix.join("lib"), prefix.join("local").join("lib")] {
        let Ok(rd) = std::fs::read_dir(&base) else {
            continue;
        };
        let mut found: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .flat_map(|e| {
                let p = e.path();
                [p.join("site-packages"), p.join("dist-packages")]
            })
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

fn prepend(var: &str, dirs: &[PathBuf], current: Option<OsString>) -> Option<OsString> {
    if dirs.is_empty() {
        return current;
    }
    let mut all: Vec<PathBuf> = dirs.to_vec();
    if let Some(cur) = current.filter(|c| !c.is_empty()) {
        all.extend(std::env::split_paths(&cur));
    }
    // Joining fails only for a path containing ':'; such a dir cannot be on a search path.
    match std::env::join_paths(all.iter().filter(|p| !p.to_string_lossy().contains(':'))) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(var, error = %e, "cannot build search path");
            None
        }
    }
}

impl WorkloadEnv {
    /// Computes the workload-wide variables, reading the agent's environment for the
    /// current values of the search paths.
    pub(crate) fn build(w: &Workload) -> Self {
        Self::build_with(w, |k| std::env::var_os(k))
    }

    pub(crate) fn build_with(w: &Workload, current: impl Fn(&str) -> Option<OsString>) -> Self {
        let mut vars = BTreeMap::new();
        if let Some(d) = w.ros2.domain_id {
            vars.insert("ROS_DOMAIN_ID".to_owned(), OsString::from(d.to_string()));
        }
        if let Some(r) = &w.ros2.rmw_implementation {
            vars.insert("RMW_IMPLEMENTATION".to_owned(), OsString::from(r));
        }
        if let Some(install) = &w.ros2.install_prefix {
            let install = w.resolve(install);
            let prefixes = install_prefixes(&install);
            let ament: Vec<PathBuf> = prefixes.clone();
            let bins: Vec<PathBuf> = prefixes
                .iter()
                .map(|p| p.join("bin"))
                .filter(|p| p.is_dir())
                .collect();
            let libs: Vec<PathBuf> = prefixes
                .iter()
                .map(|p| p.join("lib"))
                .filter(|p| p.is_dir())
                .collect();
            let py: Vec<PathBuf> = prefixes.iter().flat_map(|p| python_dirs(p)).collect();
            for (var, dirs) in [
                ("AMENT_PREFIX_PATH", &ament),
                ("PATH", &bins),
                ("LD_LIBRARY_PATH", &libs),
                ("PYTHONPATH", &py),
            ] {
                if let Some(v) = prepend(var, dirs, current(var)) {
                    if !dirs.is_empty() {
                        vars.insert(var.to_owned(), v);
                    }
                }
            }
            if !prefixes.is_empty() {
                vars.insert(
                    "COLCON_PREFIX_PATH".to_owned(),
                    install.clone().into_os_string(),
                );
            }
        }
        Self { vars }
    }

    /// The variables for one process: workload-wide ones, then the process's own.
    pub(crate) fn for_process(&self, spec: &ProcessSpec) -> Vec<(String, OsString)> {
        let mut out: BTreeMap<String, OsString> = self.vars.clone();
        for (k, v) in &spec.env {
            out.insert(k.clone(), OsString::from(v));
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
    }

    #[test]
    fn isolated_install_space_prepends_each_package_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        mkdirs(
            &install,
            &[
                "lidar/share/lidar",
                "lidar/lib/python3.11/site-packages",
                "nav/share/nav",
                "nav/bin",
                "nav/lib",
            ],
        );
        std::fs::write(install.join(".colcon_install_layout"), "isolated\n").unwrap();
        let w = Workload::from_toml_str(
            "[ros2]\ndomain_id = 3\nrmw_implementation = \"rmw_fastrtps_cpp\"\ninstall_prefix = \"install\"\n[process.a]\ncommand = \"x\"\nenv = { ROS_DOMAIN_ID = \"9\" }\n",
        )
        .unwrap()
        .with_root(dir.path());
        let env = WorkloadEnv::build_with(&w, |k| match k {
            "PATH" => Some("/usr/bin:/bin".into()),
            _ => None,
        });
        let v = |k: &str| env.vars[k].to_string_lossy().into_owned();
        assert_eq!(v("ROS_DOMAIN_ID"), "3");
        assert_eq!(v("RMW_IMPLEMENTATION"), "rmw_fastrtps_cpp");
        assert_eq!(
            v("AMENT_PREFIX_PATH"),
            format!("{0}/lidar:{0}/nav", install.display())
        );
        assert_eq!(
            v("PATH"),
            format!("{}/nav/bin:/usr/bin:/bin", install.display())
        );
        assert_eq!(
            v("PYTHONPATH"),
            format!("{}/lidar/lib/python3.11/site-packages", install.display())
        );
        assert_eq!(
            v("LD_LIBRARY_PATH"),
            format!("{0}/lidar/lib:{0}/nav/lib", install.display())
        );
        // The process's own env wins.
        let p = env.for_process(&w.processes["a"]);
        assert!(p.contains(&("ROS_DOMAIN_ID".to_owned(), OsString::from("9"))));
    }

    #[test]
    fn merged_install_space_is_one_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        mkdirs(
            &install,
            &[
                "share/ament_index",
                "bin",
                "lib",
                "local/lib/python3.10/dist-packages",
            ],
        );
        std::fs::write(install.join(".colcon_install_layout"), "merged").unwrap();
        let w = Workload::from_toml_str("[ros2]\ninstall_prefix = \"install\"\n")
            .unwrap()
            .with_root(dir.path());
        let env = WorkloadEnv::build_with(&w, |_| None);
        assert_eq!(
            env.vars["AMENT_PREFIX_PATH"].to_string_lossy(),
            install.display().to_string()
        );
        assert_eq!(
            env.vars["PYTHONPATH"].to_string_lossy(),
            format!("{}/local/lib/python3.10/dist-packages", install.display())
        );
    }
}
