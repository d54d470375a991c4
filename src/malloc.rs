//! glibc malloc policy of the agent process (`fleetlet run`), set once at start.
//!
//! With its defaults, glibc gives every thread that allocates its own arena (up to 8 per
//! core) and keeps the memory freed in each one; it also raises its `mmap` threshold each
//! time a large block is freed, after which sled's 512 KiB log buffers come from (and stay
//! in) an arena. While the agent drains a full telemetry queue that kept about 4 MB of freed
//! memory resident over 16 arenas (docs/telemetry.md, "Where the RSS goes while draining").
//!
//! The policy: at most [`ARENA_MAX`] arenas, blocks of [`MMAP_THRESHOLD`] or more are
//! mapped and unmapped on their own, and free memory above [`TRIM_THRESHOLD`] at the top of
//! the main heap goes back to the kernel.
//!
//! Invariants:
//! - Only the agent process: children are started with `posix_spawn` and exec, so they get
//!   glibc's defaults (`mallopt` changes this process's allocator only).
//! - An operator's `GLIBC_TUNABLES` with any `glibc.malloc.*` setting wins: the policy is
//!   then not applied at all.
//! - Other C libraries (musl) have no such knobs; the policy is glibc-only.

/// Arenas glibc may create. Two: the main thread's and one shared by the others, so a
/// burst of allocations on one thread cannot leave freed memory behind in a dozen arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Blocks at least this large are `mmap`ed and returned to the kernel when freed. Fixed,
/// so glibc does not raise it (up to 32 MiB) after the first large free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Free memory at the top of the main heap beyond this is given back (glibc's default,
/// also raised dynamically without this setting).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 128 * 1024;

/// A `mallopt` setting glibc refused.
#[derive(Debug, thiserror::Error)]
#[error("glibc refused mallopt({name}, {value})")]
pub struct Rejected {
    /// glibc's name of the parameter.
    pub name: &'static str,
    /// The value that was refused.
    pub value: i32,
}

/// Applies the policy (see the module doc) unless `GLIBC_TUNABLES` sets malloc tunables.
/// Call it while the process has one thread: arenas created before it are kept.
///
/// # Errors
/// The settings glibc refused (the others are applied; the agent runs either way).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn apply_agent_policy() -> Result<(), Vec<Rejected>> {
    if operator_tunes_malloc(std::env::var_os("GLIBC_TUNABLES").as_deref()) {
        return Ok(());
    }
    let rejected: Vec<Rejected> = [
        ("M_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX),
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ]
    .into_iter()
    .filter(|&(_, param, value)| !mallopt(param, value))
    .map(|(name, _, value)| Rejected { name, value })
    .collect();
    if rejected.is_empty() {
        Ok(())
    } else {
        Err(rejected)
    }
}

/// Whether `GLIBC_TUNABLES` (its value, if set) holds any `glibc.malloc.*` tunable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn operator_tunes_malloc(tunables: Option<&std::ffi::OsStr>) -> bool {
    tunables.is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
}

/// Not glibc: nothing to tune.
///
/// # Errors
/// Never.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn apply_agent_policy() -> Result<(), Vec<Rejected>> {
    Ok(())
}

/// `mallopt(param, value)`; whether glibc accepted it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn mallopt(param: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `mallopt` takes two integers and touches only glibc's allocator state, under
    // glibc's own lock; an unknown parameter or a value out of range is refused (returns 0),
    // never undefined behaviour. Blocks allocated before the call stay valid.
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_every_setting_of_the_policy() {
        for (param, value) in [
            (libc::M_ARENA_MAX, ARENA_MAX),
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            assert!(mallopt(param, value), "mallopt({param}, {value}) refused");
        }
    }

    #[test]
    fn malloc_tunables_of_the_operator_win_and_other_tunables_do_not_count() {
        let tunes = |t: &str| operator_tunes_malloc(Some(std::ffi::OsStr::new(t)));
        assert!(tunes("glibc.malloc.arena_max=4"));
        assert!(tunes(
            "glibc.pthread.rseq=0:glibc.malloc.mmap_threshold=65536"
        ));
        assert!(!tunes("glibc.pthread.rseq=0"));
        assert!(!tunes(""));
        assert!(!operator_tunes_malloc(None));
    }
}
