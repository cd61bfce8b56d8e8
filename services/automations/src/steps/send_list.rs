//! The `send-list` step: one message per subscriber of a Courier list, each with its own id
//! (`<run>-s<step>-<hash of the user id>`) and so its own statuses. Subscribers are read from
//! the keys accounts writes ([`rc_common::lists`]), at most [`MAX_SUBSCRIBERS`] of them.
//! A re-executed step (after a crash) republishes the same ids, which JetStream deduplicates.

use rc_common::automation::steps::SendList;
use rc_common::lists::{self, MAX_SUBSCRIBERS};
use serde_json::json;

use super::StepDone;
use super::send::{Outgoing, request_message};
use crate::engine::{Engine, Transient};
use crate::refs;
use crate::store::{Run, derive_id};

/// Message requests of one send-list step in flight at once.
const IN_FLIGHT: usize = 64;

pub(crate) async fn execute(
    engine: &Engine,
    run: &Run,
    index: usize,
    step: &SendList,
) -> Result<StepDone, Transient> {
    let Some(list) = refs::opt_text(Some(&step.list), &run.context) else {
        return Ok(StepDone::Fail(format!("steps[{index}].list: required")));
    };
    let Some(subscribers) = lists::subscribers(&engine.redis, &run.workspace, &list).await? else {
        return Ok(StepDone::Fail(format!(
            "steps[{index}].list: list {list:?} not found"
        )));
    };
    let ids = message_ids(run, index, &subscribers);
    // A window of requests in flight at once, so a large list takes seconds, well inside
    // the run's lease, instead of one publish round trip after another.
    for chunk in subscribers
        .iter()
        .zip(&ids)
        .collect::<Vec<_>>()
        .chunks(IN_FLIGHT)
    {
        futures::future::try_join_all(chunk.iter().map(|(user, id)| {
            let out = Outgoing {
                message: None,
                recipient: user.to_string(),
                template: step.template.as_ref(),
                brand: step.brand.as_ref(),
                data: step.data.as_ref(),
                profile: None,
                overrides: step.overrides.as_ref(),
            };
            async move { request_message(engine, run, &out, id).await }
        }))
        .await?;
    }
    Ok(StepDone::Next(
        Some(format!(
            "{} message(s) requested for the subscribers of list {list:?} (at most {MAX_SUBSCRIBERS})",
            ids.len()
        )),
        Some(json!({"list": list, "messageIds": ids})),
    ))
}

/// One stable message id per subscriber.
fn message_ids(run: &Run, index: usize, subscribers: &[String]) -> Vec<String> {
    let step_index = index.to_string();
    subscribers
        .iter()
        .map(|user| {
            let hash = derive_id(&[&run.id, &step_index, user]);
            format!("{}-s{index}-{}", run.id, &hash[..16])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::run_with;

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let run = run_with(json!({}));
        let users = ["u_1".to_string(), "u_2".to_string()];
        let ids = message_ids(&run, 3, &users);
        assert_eq!(ids, message_ids(&run, 3, &users));
        assert_ne!(ids[0], ids[1]);
        assert!(ids[0].starts_with(&format!("{}-s3-", run.id)));
        assert_ne!(message_ids(&run, 4, &users)[0], ids[0]);
    }
}
