//! Configuration (work in progress on main; see NEWS).
use serde::{Deserialize, Serialize};

/// The whole agent configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}
