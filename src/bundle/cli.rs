//! `fleetlet keys …` and `fleetlet bundle …`.
