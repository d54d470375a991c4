//! `fleetlet tail`.
