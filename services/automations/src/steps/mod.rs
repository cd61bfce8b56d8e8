//! Step execution: one module per [`Action`] (its execution and tests; the typed definition and
//! validation are in [`rc_common::automation::steps`]), dispatched by one exhaustive `match`.

pub mod cancel;
pub mod delay;
pub mod fetch_data;
pub mod invoke;
pub mod send;
pub mod send_list;
pub mod update_profile;

use rc_common::automation::Action;
use serde_json::Value;

use crate::engine::{Engine, Transient};
use crate::store::Run;

/// How a step ended this time.
#[derive(Debug, PartialEq)]
pub enum StepDone {
    /// Step done: detail for the timeline, result for its `ref`.
    Next(Option<String>, Option<Value>),
    /// Wait until this instant (epoch ms), then execute the step again; the detail says why.
    Wait(i64, String),
    /// The run fails with this reason.
    Fail(String),
}

impl Engine {
    /// Executes one step of `run` (index `index`) as far as it can go now.
    pub(crate) async fn step(
        &self,
        run: &mut Run,
        index: usize,
        action: &Action,
    ) -> Result<StepDone, Transient> {
        match action {
            Action::Send(s) => send::execute(self, run, index, s).await,
            Action::SendList(s) => send_list::execute(self, run, index, s).await,
            Action::Delay(s) => Ok(delay::execute(run, s, crate::store::now_ms())),
            Action::Cancel(s) => cancel::execute(self, run, s).await,
            Action::UpdateProfile(s) => update_profile::execute(self, run, index, s).await,
            Action::Invoke(s) => invoke::execute(self, run, index, s).await,
            Action::FetchData(s) => fetch_data::execute(self, run, index, s).await,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rc_common::automation::Step;
    use serde_json::Value;

    use crate::store::{Run, RunState};

    /// A step document parsed as the engine parses it.
    pub fn parse(doc: Value) -> Step {
        Step::parse(&doc, "steps[0]").unwrap_or_else(|e| panic!("{doc}: {e}"))
    }

    /// A running run with this context.
    pub fn run_with(context: Value) -> Run {
        Run {
            id: "run-1".into(),
            workspace: "acme".into(),
            state: RunState::Running,
            template: String::new(),
            steps: Vec::new(),
            cancelation_token: None,
            context,
            step: 0,
            wake_at_ms: None,
            event: "Signed Up".into(),
            source_message_id: String::new(),
            timeline: Vec::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            started_at_ms: Some(0),
            error: None,
            depth: 0,
            retries: 0,
        }
    }
}
