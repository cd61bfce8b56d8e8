//! The `send-list` step: one message per subscriber of a Courier list, each with its own id
//! (`<run>-s<step>-<hash of the user id>`) and so its own statuses. Subscribers are read from
//! the keys accounts writes ([`rc_common::lists`]), at most [`MAX_SUBSCRIBERS`] of them.
//! A re-executed step (after a crash) republishes the same ids, which JetStream deduplicates.

use rc_common::lists::{self, MAX_SUBSCRIBERS};
use serde_json::{Map, Value, json};

use crate::engine::{Engine, StepDone, Transient};
use crate::refs::resolve_str_field;
use crate::store::{Run, derive_id};

/// Checks a `send-list` step (Courier's `AutomationSendListStep`: `list` required; `template`,
/// `brand`, `data`, `override`, `data_source` optional; without `template`, the run's is used).
pub fn validate(step: &Map<String, Value>, path: &str) -> Result<(), String> {
    let field = |name: &str| step.get(name).filter(|v| !v.is_null());
    let string_or_ref = |v: &Value| {
        v.as_str().is_some_and(|s| !s.is_empty())
            || v.as_object()
                .is_some_and(|o| o.len() == 1 && o.get("$ref").is_some_and(Value::is_string))
    };
    match field("list") {
        Some(v) if string_or_ref(v) => {}
        Some(_) => return Err(format!("{path}.list: must be a list id or a $ref")),
        None => return Err(format!("{path}.list: required")),
    }
    for name in ["template", "brand"] {
        if let Some(v) = field(name)
            && !string_or_ref(v)
        {
            return Err(format!("{path}.{name}: must be a string or a $ref"));
        }
    }
    for name in ["data", "override", "data_source"] {
        if let Some(v) = field(name)
            && !v.is_object()
        {
            return Err(format!("{path}.{name}: must be an object"));
        }
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::validate;
    use serde_json::json;

    fn check(step: serde_json::Value) -> Result<(), String> {
        validate(step.as_object().unwrap(), "steps[0]")
    }

    #[test]
    fn send_list_steps() {
        assert!(check(json!({"action": "send-list", "list": "beta-users"})).is_ok());
        assert!(
            check(
                json!({"action": "send-list", "list": {"$ref": "data.list"}, "template": "T",
                "data": {"a": 1}})
            )
            .is_ok()
        );
        assert_eq!(
            check(json!({"action": "send-list"})).unwrap_err(),
            "steps[0].list: required"
        );
        assert!(check(json!({"action": "send-list", "list": ""})).is_err());
        assert!(check(json!({"action": "send-list", "list": "l", "data": [1]})).is_err());
        assert!(check(json!({"action": "send-list", "list": "l", "template": 5})).is_err());
    }
}
