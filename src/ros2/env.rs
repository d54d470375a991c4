//! The ROS 2 environment: one source of truth for the agent's own r2r context and for every
//! child process the supervisor starts.
//!
//! The DDS graph a process joins is decided by a handful of environment variables read once
//! at context creation (`ROS_DOMAIN_ID`, `RMW_IMPLEMENTATION`, `ROS_AUTOMATIC_DISCOVERY_RANGE`,
//! `ROS_STATIC_PEERS`). If the agent's context and the nodes it supervises disagree on any of
//! them, the bridge and the topic-rate checks silently see an empty graph. So the agent
//! resolves [`Ros2Env`] once (agent `[ros2]` config over its own process environment), applies
//! it to its own context, and hands [`Ros2Env::child_vars`] to the supervisor for every child.
//! A workload that asks for different values is rejected with [`EnvError::Conflict`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Highest domain id that maps to valid DDS ports on Linux (REP 2000 / ROS 2 docs).
pub const MAX_DOMAIN_ID: u16 = 232;

/// Problems with the ROS 2 environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A value is out of range or not one of the allowed words.
    #[error("ros2.{key}: {message}")]
    Invalid {
        /// Key (`domain_id`, `automatic_discovery_range`, ...).
        key: &'static str,
        /// What is wrong, with the value.
        message: String,
    },
    /// A workload asks for a different graph than the agent's context is in.
    #[error("workload ros2.{key} = {workload:?} differs from the agent's ROS 2 environment ({agent:?}); the agent's context joins one graph only — set it in the agent's [ros2] config instead")]
    Conflict {
        /// Key.
        key: &'static str,
        /// The workload's value.
        workload: String,
        /// The agent's value.
        agent: String,
    },
}

/// `ROS_AUTOMATIC_DISCOVERY_RANGE` (Jazzy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryRange {
    /// No automatic discovery (static peers only).
    Off,
    /// Processes on this host only (no packets leave the machine).
    Localhost,
    /// The local subnet (multicast).
    Subnet,
    /// The RMW's default.
    SystemDefault,
}

impl DiscoveryRange {
    /// The environment value.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Localhost => "LOCALHOST",
            Self::Subnet => "SUBNET",
            Self::SystemDefault => "SYSTEM_DEFAULT",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "OFF" => Some(Self::Off),
            "LOCALHOST" => Some(Self::Localhost),
            "SUBNET" => Some(Self::Subnet),
            "SYSTEM_DEFAULT" => Some(Self::SystemDefault),
            _ => None,
        }
    }
}

/// The resolved ROS 2 environment (all optional: unset means "the RMW default").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ros2Env {
    /// `ROS_DOMAIN_ID` (0..=232).
    pub domain_id: Option<u16>,
    /// `RMW_IMPLEMENTATION`, e.g. `rmw_fastrtps_cpp`.
    pub rmw_implementation: Option<String>,
    /// `ROS_AUTOMATIC_DISCOVERY_RANGE`.
    pub automatic_discovery_range: Option<DiscoveryRange>,
    /// `ROS_STATIC_PEERS` (hosts or addresses, joined with `;`).
    pub static_peers: Vec<String>,
}

impl Ros2Env {
    /// Reads the current process environment.
    ///
    /// # Errors
    /// [`EnvError::Invalid`] naming the variable when a value cannot be parsed.
    pub fn from_process_env() -> Result<Self, EnvError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (testable without touching the process env).
    ///
    /// # Errors
    /// [`EnvError::Invalid`] naming the variable when a value cannot be parsed.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let domain_id = match get("ROS_DOMAIN_ID").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(v.trim().parse::<u16>().map_err(|_| EnvError::Invalid {
                key: "domain_id",
                message: format!("ROS_DOMAIN_ID={v:?} is not a number 0..={MAX_DOMAIN_ID}"),
            })?),
        };
        let automatic_discovery_range =
            match get("ROS_AUTOMATIC_DISCOVERY_RANGE").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(v) => Some(DiscoveryRange::parse(&v).ok_or_else(|| EnvError::Invalid {
                    key: "automatic_discovery_range",
                    message: format!(
                        "ROS_AUTOMATIC_DISCOVERY_RANGE={v:?} is not OFF, LOCALHOST, SUBNET or SYSTEM_DEFAULT"
                    ),
                })?),
            };
        let env = Self {
            domain_id,
            rmw_implementation: get("RMW_IMPLEMENTATION").filter(|v| !v.trim().is_empty()),
            automatic_discovery_range,
            static_peers: get("ROS_STATIC_PEERS")
                .map(|v| {
                    v.split(';')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        env.validate()?;
        Ok(env)
    }

    /// Checks ranges and names.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), EnvError> {
        if let Some(d) = self.domain_id {
            if d > MAX_DOMAIN_ID {
                return Err(EnvError::Invalid {
                    key: "domain_id",
                    message: format!("{d} is above {MAX_DOMAIN_ID} (DDS port range)"),
                });
            }
        }
        if let Some(r) = &self.rmw_implementation {
            if !r.starts_with("rmw_") || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(EnvError::Invalid {
                    key: "rmw_implementation",
                    message: format!("{r:?} is not an RMW name like rmw_fastrtps_cpp"),
                });
            }
        }
        if let Some(p) = self
            .static_peers
            .iter()
            .find(|p| p.contains(';') || p.contains(char::is_whitespace))
        {
            return Err(EnvError::Invalid {
                key: "static_peers",
                message: format!("{p:?} must be one host or address"),
            });
        }
        Ok(())
    }

    /// `self` (the agent's config) with unset fields taken from `base` (the process env).
    #[must_use]
    pub fn or(self, base: &Self) -> Self {
        Self {
            domain_id: self.domain_id.or(base.domain_id),
            rmw_implementation: self
                .rmw_implementation
                .or_else(|| base.rmw_implementation.clone()),
            automatic_discovery_range: self
                .automatic_discovery_range
                .or(base.automatic_discovery_range),
            static_peers: if self.static_peers.is_empty() {
                base.static_peers.clone()
            } else {
                self.static_peers
            },
        }
    }

    /// Checks that a workload's `[ros2]` values (if given) agree with this environment.
    ///
    /// # Errors
    /// [`EnvError::Conflict`] naming the key and both values.
    pub fn check_workload(
        &self,
        domain_id: Option<u16>,
        rmw: Option<&str>,
    ) -> Result<(), EnvError> {
        if let Some(w) = domain_id {
            if Some(w) != self.domain_id.or(Some(0)) {
                return Err(EnvError::Conflict {
                    key: "domain_id",
                    workload: w.to_string(),
                    agent: self.domain_id.unwrap_or(0).to_string(),
                });
            }
        }
        if let Some(w) = rmw {
            if let Some(a) = &self.rmw_implementation {
                if a != w {
                    return Err(EnvError::Conflict {
                        key: "rmw_implementation",
                        workload: w.to_owned(),
                        agent: a.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The variables every child gets (and the agent's own context uses). Unset fields are
    /// listed in [`Ros2Env::cleared_vars`] so a child does not inherit a stray value.
    pub fn child_vars(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(d) = self.domain_id {
            m.insert("ROS_DOMAIN_ID".to_owned(), d.to_string());
        }
        if let Some(r) = &self.rmw_implementation {
            m.insert("RMW_IMPLEMENTATION".to_owned(), r.clone());
        }
        if let Some(r) = self.automatic_discovery_range {
            m.insert(
                "ROS_AUTOMATIC_DISCOVERY_RANGE".to_owned(),
                r.as_env().to_owned(),
            );
        }
        if !self.static_peers.is_empty() {
            m.insert("ROS_STATIC_PEERS".to_owned(), self.static_peers.join(";"));
        }
        m
    }

    /// Variables to remove from a child's environment (those this env leaves unset).
    pub fn cleared_vars(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.domain_id.is_none() {
            v.push("ROS_DOMAIN_ID");
        }
        if self.automatic_discovery_range.is_none() {
            v.push("ROS_AUTOMATIC_DISCOVERY_RANGE");
        }
        if self.static_peers.is_empty() {
            v.push("ROS_STATIC_PEERS");
        }
        v
    }

    /// Applies this environment to a [`std::process::Command`] (children of the agent).
    pub fn apply_to_command(&self, cmd: &mut std::process::Command) {
        for k in self.cleared_vars() {
            cmd.env_remove(k);
        }
        cmd.envs(self.child_vars());
    }

    /// Whether the process environment already holds exactly these values (set ones equal,
    /// unset ones absent). Reads only.
    pub fn matches_own_process(&self) -> bool {
        self.child_vars()
            .iter()
            .all(|(k, v)| std::env::var(k).ok().as_deref() == Some(v.as_str()))
            && self
                .cleared_vars()
                .iter()
                .all(|k| std::env::var_os(k).is_none())
    }

    /// Applies this environment to the agent's own process so its r2r context (created once
    /// per process, reading these variables) joins the same graph and every child inherits
    /// it. `fleetlet run` calls it in `main`, before any other thread exists (setenv is not
    /// thread-safe against concurrent getenv, in C code in particular); the spin thread then
    /// finds [`Ros2Env::matches_own_process`] true and writes nothing. Embedders that skip
    /// `main` (tests, benches) get it applied by [`super::Ros2::start`] before the context
    /// exists, while no DDS thread runs yet.
    pub fn apply_to_own_process(&self) {
        for k in self.cleared_vars() {
            std::env::remove_var(k);
        }
        for (k, v) in self.child_vars() {
            std::env::set_var(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn process_env_is_parsed_and_round_trips_to_child_vars() {
        let e = Ros2Env::from_vars(vars(&[
            ("ROS_DOMAIN_ID", "42"),
            ("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
            ("ROS_AUTOMATIC_DISCOVERY_RANGE", "localhost"),
            ("ROS_STATIC_PEERS", "10.0.0.2; robot2.local"),
        ]))
        .unwrap();
        assert_eq!(e.domain_id, Some(42));
        assert_eq!(e.automatic_discovery_range, Some(DiscoveryRange::Localhost));
        let c = e.child_vars();
        assert_eq!(c["ROS_DOMAIN_ID"], "42");
        assert_eq!(c["ROS_AUTOMATIC_DISCOVERY_RANGE"], "LOCALHOST");
        assert_eq!(c["ROS_STATIC_PEERS"], "10.0.0.2;robot2.local");
        assert!(e.cleared_vars().is_empty());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Ros2Env::from_vars(vars(&[("ROS_DOMAIN_ID", "seven")])).unwrap_err();
        assert!(e.to_string().contains("ROS_DOMAIN_ID=\"seven\""), "{e}");
        let e = Ros2Env::from_vars(vars(&[("ROS_DOMAIN_ID", "300")])).unwrap_err();
        assert!(e.to_string().contains("ros2.domain_id: 300"), "{e}");
        let e = Ros2Env::from_vars(vars(&[("ROS_AUTOMATIC_DISCOVERY_RANGE", "LAN")])).unwrap_err();
        assert!(e.to_string().contains("\"LAN\""), "{e}");
        let e = Ros2Env::from_vars(vars(&[("RMW_IMPLEMENTATION", "cyclone")])).unwrap_err();
        assert!(e.to_string().contains("rmw_implementation"), "{e}");
    }

    #[test]
    fn config_overrides_process_env_and_unset_vars_are_cleared_for_children() {
        let base = Ros2Env::from_vars(vars(&[
            ("ROS_DOMAIN_ID", "3"),
            ("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        ]))
        .unwrap();
        let cfg = Ros2Env {
            domain_id: Some(9),
            ..Ros2Env::default()
        };
        let e = cfg.or(&base);
        assert_eq!(e.domain_id, Some(9));
        assert_eq!(e.rmw_implementation.as_deref(), Some("rmw_fastrtps_cpp"));
        assert_eq!(
            e.cleared_vars(),
            vec!["ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS"]
        );
        let mut cmd = std::process::Command::new("env");
        cmd.env("ROS_DOMAIN_ID", "1")
            .env("ROS_STATIC_PEERS", "stray");
        e.apply_to_command(&mut cmd);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert!(out.contains("ROS_DOMAIN_ID=9\n"), "{out}");
        assert!(!out.contains("ROS_STATIC_PEERS"), "{out}");
    }

    #[test]
    fn workload_with_a_different_domain_is_a_conflict() {
        let e = Ros2Env {
            domain_id: Some(5),
            rmw_implementation: Some("rmw_fastrtps_cpp".into()),
            ..Ros2Env::default()
        };
        assert!(e.check_workload(Some(5), Some("rmw_fastrtps_cpp")).is_ok());
        assert!(e.check_workload(None, None).is_ok());
        let err = e.check_workload(Some(7), None).unwrap_err();
        assert!(
            err.to_string().contains("ros2.domain_id = \"7\"") && err.to_string().contains("\"5\""),
            "{err}"
        );
        let err = e
            .check_workload(None, Some("rmw_cyclonedds_cpp"))
            .unwrap_err();
        assert!(matches!(
            err,
            EnvError::Conflict {
                key: "rmw_implementation",
                ..
            }
        ));
        // unset agent domain means 0
        assert!(Ros2Env::default().check_workload(Some(0), None).is_ok());
        assert!(Ros2Env::default().check_workload(Some(1), None).is_err());
    }
}
