//! `cancel`: cancels the other runs registered under a token (each is finalized by its own
//! executor within one scheduler poll).

use rc_common::automation::steps::Cancel;
use serde_json::json;

use super::StepDone;
use crate::engine::{Engine, Transient};
use crate::store::Run;

pub(crate) async fn execute(
    engine: &Engine,
    run: &Run,
    step: &Cancel,
) -> Result<StepDone, Transient> {
    let token = &step.cancelation_token.0;
    let n = engine.cancel_token(&run.workspace, token, &run.id).await?;
    Ok(done(token, n))
}

fn done(token: &str, n: usize) -> StepDone {
    StepDone::Next(
        Some(format!("{n} run(s) with token {token:?} canceled")),
        Some(json!({"canceled": n})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::parse;
    use rc_common::automation::Action;

    #[test]
    fn result_counts_the_runs() {
        let step = parse(json!({"action": "cancel", "cancellation_token": "trial-u_1"}));
        let Action::Cancel(c) = step.action else {
            panic!()
        };
        assert_eq!(c.cancelation_token.0, "trial-u_1");
        assert_eq!(
            done(&c.cancelation_token.0, 2),
            StepDone::Next(
                Some("2 run(s) with token \"trial-u_1\" canceled".into()),
                Some(json!({"canceled": 2}))
            )
        );
    }
}
