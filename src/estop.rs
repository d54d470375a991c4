//! The e-stop policy engine: one policy, several sources.
//!
//! Two things can declare an e-stop: the safety MCU (its e-stop input is pressed, or its
//! `estop` fault is latched; reported by [`crate::serial`]) and the compute board's own
//! e-stop input pin (`hal.estop_input`, reported by [`crate::hal`]). Each source reports
//! its level through [`Handle::report`]; the engine applies the configured policy
//! ([`Policy`], config key `[serial.estop]`) to the workload processes:
//! on e-stop pause (SIGSTOP) or stop them, on clear resume (SIGCONT) or start them again.
//!
//! # Invariants
//! - The e-stop is engaged while **any** source is active, and it clears only when **all**
//!   sources are clear: the pin released while the MCU still has its e-stop latched keeps
//!   the processes paused (reported as `estop_source`).
//! - Policy steps run one at a time, in order, on one task; the engine follows the latest
//!   state (a press-release-press burst during a slow step converges to "engaged" without
//!   queueing stale steps). Every process action is reported (`estop_action`, critical).
//! - Reporting never blocks the reporter (a `watch` update), so neither the link task nor
//!   the GPIO follower can be stalled by a wedged workload.
//! - [`State::input_presses`] counts presses of the input pin; the MCU link uses it to keep
//!   motor power off after the pin is released until an operator clears the e-stop
//!   (`mcu.clear_estop` / `mcu.arm`): releasing an e-stop never restarts motion by itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::serial::Workload;
use crate::telemetry::{Priority, Sink};

/// What to do with the e-stop processes when the e-stop is engaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// SIGSTOP on press, SIGCONT on clear: the processes keep their state.
    #[default]
    Pause,
    /// Stop on press (the supervisor's stop ladder), start again on clear.
    Stop,
    /// Only report.
    None,
}

/// The e-stop policy (config `[serial.estop]`; it applies to every source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// What to do.
    pub action: Action,
    /// Which workload processes (by name).
    pub processes: Vec<String>,
}

impl Policy {
    /// Pushes the policy's problems (keys under `serial.estop`).
    pub fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        if self.action != Action::None && self.processes.is_empty() {
            problems.push(crate::config::Problem::new(
                "serial.estop.processes",
                "is empty, so the e-stop action does nothing; name the processes or set action = \"none\"",
            ));
        }
    }
}

/// Who declares an e-stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The safety MCU (its e-stop input, or its latched `estop` fault).
    Mcu,
    /// The compute board's e-stop input pin (`hal.estop_input`).
    Input,
}

impl Source {
    /// Stable lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mcu => "mcu",
            Self::Input => "input",
        }
    }
}

/// The sources' levels, published on a `watch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct State {
    /// The MCU reports an e-stop (pressed or latched).
    pub mcu: bool,
    /// The input pin is pressed (debounced).
    pub input: bool,
    /// How many times the input pin went to pressed since start.
    pub input_presses: u64,
}

impl State {
    /// Whether the e-stop is engaged (any source active).
    pub const fn engaged(&self) -> bool {
        self.mcu || self.input
    }

    /// The active sources' names.
    pub fn active(&self) -> Vec<&'static str> {
        [(self.mcu, Source::Mcu), (self.input, Source::Input)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| s.name())
            .collect()
    }

    fn get(&self, s: Source) -> bool {
        match s {
            Source::Mcu => self.mcu,
            Source::Input => self.input,
        }
    }

    fn set(&mut self, s: Source, active: bool) {
        match s {
            Source::Mcu => self.mcu = active,
            Source::Input => {
                if active && !self.input {
                    self.input_presses += 1;
                }
                self.input = active;
            }
        }
    }
}

/// Cloneable handle: sources report through it, the MCU link watches it.
#[derive(Clone)]
pub struct Handle {
    state: Arc<watch::Sender<State>>,
    policy: Arc<Policy>,
    telemetry: Sink,
}

impl Handle {
    /// Reports `source`'s level. `detail` (JSON object or null) is added to the events.
    /// Emits `estop` (critical) when the e-stop engages, `estop_cleared` (critical) when
    /// the last source clears, and `estop_source` (critical) when a source changes while
    /// another one keeps the e-stop engaged.
    pub fn report(&self, source: Source, active: bool, detail: serde_json::Value) {
        let mut before = State::default();
        let mut after = State::default();
        self.state.send_if_modified(|s| {
            before = *s;
            s.set(source, active);
            after = *s;
            before != after
        });
        if before.get(source) == after.get(source) {
            return;
        }
        let p = &self.policy;
        if after.engaged() && !before.engaged() {
            tracing::error!(source = source.name(), "e-stop");
            self.telemetry.event(
                Priority::Critical,
                "estop",
                json!({ "source": source.name(), "sources": after.active(), "detail": detail,
                        "action": p.action, "processes": p.processes }),
            );
        } else if !after.engaged() && before.engaged() {
            tracing::info!(source = source.name(), "e-stop cleared");
            self.telemetry.event(
                Priority::Critical,
                "estop_cleared",
                json!({ "source": source.name(), "detail": detail,
                        "action": p.action, "processes": p.processes }),
            );
        } else {
            tracing::warn!(source = source.name(), active, still = ?after.active(), "e-stop source changed; e-stop stays engaged");
            self.telemetry.event(
                Priority::Critical,
                "estop_source",
                json!({ "source": source.name(), "active": active, "sources": after.active(),
                        "detail": detail }),
            );
        }
    }

    /// The current levels.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A receiver that sees every change of the levels.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// Spawns the engine task on `tracker` and returns its handle.
pub fn spawn(
    policy: Policy,
    workload: Arc<dyn Workload>,
    telemetry: Sink,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Handle {
    let (tx, rx) = watch::channel(State::default());
    let handle = Handle {
        state: Arc::new(tx),
        policy: Arc::new(policy),
        telemetry: telemetry.clone(),
    };
    tracker.spawn(run(rx, workload, handle.policy.clone(), telemetry, cancel));
    handle
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Engage,
    Release,
}

/// Applies the policy whenever the engaged level differs from the last one applied.
///
/// # Cancel safety
/// Returns at the next await point after `cancel`; a step cut short is not resumed.
async fn run(
    mut rx: watch::Receiver<State>,
    workload: Arc<dyn Workload>,
    policy: Arc<Policy>,
    telemetry: Sink,
    cancel: CancellationToken,
) {
    let mut applied = false;
    loop {
        let want = rx.borrow_and_update().engaged();
        if want != applied {
            let step = if want { Step::Engage } else { Step::Release };
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = apply(step, &workload, &policy, &telemetry) => {}
            }
            applied = want;
            continue; // the level may have changed during the step
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

async fn apply(step: Step, workload: &Arc<dyn Workload>, policy: &Policy, telemetry: &Sink) {
    for name in &policy.processes {
        let (verb, fut) = match (policy.action, step) {
            (Action::None, _) => return,
            (Action::Pause, Step::Engage) => ("pause", workload.pause(name)),
            (Action::Pause, Step::Release) => ("resume", workload.resume(name)),
            (Action::Stop, Step::Engage) => ("stop", workload.stop(name)),
            (Action::Stop, Step::Release) => ("start", workload.start(name)),
        };
        let result = fut.await;
        match &result {
            Ok(()) => tracing::info!(process = %name, action = verb, "e-stop policy step done"),
            Err(e) => {
                tracing::error!(process = %name, action = verb, error = %e, "e-stop policy step failed")
            }
        }
        telemetry.event(
            Priority::Critical,
            "estop_action",
            json!({ "process": name, "action": verb, "ok": result.is_ok(), "error": result.err() }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engaged_is_the_or_of_the_sources_and_presses_are_counted() {
        let mut s = State::default();
        assert!(!s.engaged());
        s.set(Source::Input, true);
        s.set(Source::Input, true);
        assert_eq!(s.input_presses, 1, "a level report is not a new press");
        s.set(Source::Mcu, true);
        s.set(Source::Input, false);
        assert!(s.engaged(), "the mcu still holds it");
        assert_eq!(s.active(), vec!["mcu"]);
        s.set(Source::Mcu, false);
        assert!(!s.engaged());
        s.set(Source::Input, true);
        assert_eq!(s.input_presses, 2);
    }

    #[test]
    fn policy_keys_are_checked() {
        let p: Policy = toml::from_str("action = \"stop\"\nprocesses = [\"nav\"]").unwrap();
        assert_eq!(p.action, Action::Stop);
        assert!(toml::from_str::<Policy>("action = \"halt\"").is_err());
        assert!(toml::from_str::<Policy>("procs = []").is_err());
    }
}
