//! The `send-list` step: one message per subscriber of a Courier list, each with its own id
//! (`<run>-s<step>-<hash of the user id>`) and so its own statuses. Subscribers are read from
//! the keys accounts writes ([`rc_common::lists`]), at most [`MAX_SUBSCRIBERS`] of them.
//! A re-executed step (after a crash) republishes the same ids, which JetStream deduplicates.

use rc_common::lists::{self, MAX_SUBSCRIBERS};
use serde_json::{Value, json};

use crate::engine::{Engine, StepDone, Transient};
use crate::refs::resolve_str_field;
use crate::store::{Run, derive_id};

/// Message requests of one send-list step in flight at once.
const IN_FLIGHT: usize = 64;

impl Engine {
    pub(crate) async fn send_list(
        &self,
        run: &Run,
        index: usize,
        step: &Value,
    ) -> Result<StepDone, Transient> {
        let list = step
            .get("list")
            .map(|v| resolve_str_field(v, &run.context))
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty());
        let Some(list) = list else {
            return Ok(StepDone::Fail(format!("steps[{index}].list: required")));
        };
        let Some(subscribers) = lists::subscribers(&self.redis, &run.workspace, &list).await?
        else {
            return Ok(StepDone::Fail(format!(
                "steps[{index}].list: list {list:?} not found"
            )));
        };
        let step_index = index.to_string();
        let ids: Vec<String> = subscribers
            .iter()
            .map(|user| {
                let hash = derive_id(&[&run.id, &step_index, user]);
                format!("{}-s{index}-{}", run.id, &hash[..16])
            })
            .collect();
        // A window of requests in flight at once, so a large list takes seconds, well inside
        // the run's lease, instead of one publish round trip after another.
        for chunk in subscribers
            .iter()
            .zip(&ids)
            .collect::<Vec<_>>()
            .chunks(IN_FLIGHT)
        {
            futures::future::try_join_all(
                chunk
                    .iter()
                    .map(|(user, id)| self.request_message(run, step, Some(user), id)),
            )
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
}
