//! `delay`: parks the run in the due index until its instant; woken, the step is done.

use rc_common::automation::steps::Delay;

use super::StepDone;
use crate::store::{Run, iso};

pub(crate) fn execute(run: &Run, step: &Delay, now: i64) -> StepDone {
    // Woken (or polled early by a cancel): the instant was fixed when the step was reached.
    if let Some(at) = run.wake_at_ms {
        if now >= at {
            return StepDone::Next(Some(format!("woke at {}", iso(now))), None);
        }
        return StepDone::Wait(at, format!("until {}", iso(at)));
    }
    let until = step.wake_at(now);
    if until <= now {
        return StepDone::Next(Some("until is in the past".into()), None);
    }
    StepDone::Wait(until, format!("until {}", iso(until)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{parse, run_with};
    use rc_common::automation::Action;
    use serde_json::json;

    fn delay(doc: serde_json::Value) -> Delay {
        match parse(doc).action {
            Action::Delay(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waits_for_a_duration_then_wakes() {
        let now = 1_700_000_000_000;
        let step = delay(json!({"action": "delay", "duration": "5 minutes"}));
        let mut run = run_with(json!({}));
        let StepDone::Wait(at, detail) = execute(&run, &step, now) else {
            panic!()
        };
        assert_eq!(at, now + 300_000);
        assert!(detail.starts_with("until 2023-11-14T22:18:20"), "{detail}");
        run.wake_at_ms = Some(at);
        // Polled early (a cancel brings runs forward): keeps the instant it had.
        assert!(matches!(execute(&run, &step, now + 1000), StepDone::Wait(a, _) if a == at));
        assert!(
            matches!(execute(&run, &step, at), StepDone::Next(Some(d), None) if d.starts_with("woke at"))
        );
    }

    #[test]
    fn until_in_the_past_is_done_at_once() {
        let step = delay(json!({"action": "delay", "until": "2020-01-01T00:00:00Z"}));
        let run = run_with(json!({}));
        assert_eq!(
            execute(&run, &step, 1_700_000_000_000),
            StepDone::Next(Some("until is in the past".into()), None)
        );
        let future = delay(json!({"action": "delay", "until": "2030-01-01T00:00:00Z"}));
        assert!(matches!(
            execute(&run, &future, 1_700_000_000_000),
            StepDone::Wait(1_893_456_000_000, _)
        ));
    }
}
