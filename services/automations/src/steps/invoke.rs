//! `invoke`: starts a run of an automation template (a child run, due at once, with a
//! deterministic id so a re-executed step starts nothing new), nested at most
//! [`MAX_INVOKE_DEPTH`] deep.

use rc_common::automation::cancelation_token;
use rc_common::automation::steps::Invoke;
use serde_json::{Value, json};

use super::StepDone;
use crate::engine::{Engine, NewRun, Transient};
use crate::refs;
use crate::store::{self, Run};

/// Runs started by `invoke` from runs started by `invoke`…: a template that invokes itself
/// stops here instead of starting runs forever.
pub const MAX_INVOKE_DEPTH: u32 = 8;

pub(crate) async fn execute(
    engine: &Engine,
    run: &Run,
    index: usize,
    step: &Invoke,
) -> Result<StepDone, Transient> {
    let ws = run.workspace.as_str();
    let Some(tid) = refs::opt_text(Some(&step.template), &run.context) else {
        return Ok(StepDone::Fail(format!("steps[{index}].template: required")));
    };
    if run.depth >= MAX_INVOKE_DEPTH {
        return Ok(StepDone::Fail(format!(
            "steps[{index}]: invoke nested deeper than {MAX_INVOKE_DEPTH} runs"
        )));
    }
    let Some(template) = engine.config.template(&engine.redis, ws, &tid).await? else {
        return Ok(StepDone::Fail(format!(
            "steps[{index}].template: automation template {tid:?} not found"
        )));
    };
    let child_id = store::derive_id(&[ws, &run.id, &index.to_string(), "invoke"]);
    let created = engine
        .create(
            ws,
            NewRun {
                id: child_id.clone(),
                template: tid.clone(),
                steps: template
                    .get("steps")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                cancelation_token: cancelation_token(&template).map(str::to_string),
                context: child_context(step, &run.context),
                event: run.event.clone(),
                source_message_id: run.source_message_id.clone(),
                depth: run.depth + 1,
                // Made due for the scheduler below.
                executes_now: false,
            },
        )
        .await?
        .is_some();
    if created {
        // Due now: the scheduler (any replica) runs it within one poll interval.
        engine.make_due_now(ws, &child_id).await?;
    }
    Ok(StepDone::Next(
        Some(format!("invoked {tid} as run {child_id}")),
        Some(json!({"runId": child_id})),
    ))
}

/// The child's context: the step's `context` entries, else the parent's.
fn child_context(step: &Invoke, ctx: &Value) -> Value {
    let c = refs::object(step.context.as_ref(), ctx);
    let pick = |k: &str| {
        c.get(k)
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| ctx.get(k).cloned().unwrap_or(Value::Null))
    };
    json!({
        "data": pick("data"), "profile": pick("profile"), "brand": pick("brand"),
        "template": pick("template"), "recipient": pick("recipient"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::parse;
    use rc_common::automation::Action;

    #[test]
    fn child_context_takes_the_step_context_over_the_parents() {
        let Action::Invoke(step) = parse(json!({"action": "invoke", "template": "T",
            "context": {"data": {"x": {"$ref": "data.y"}}, "recipient": null}}))
        .action
        else {
            panic!()
        };
        let parent =
            json!({"data": {"y": 2}, "recipient": "u_1", "brand": "B", "lookup": {"a": 1}});
        assert_eq!(
            child_context(&step, &parent),
            json!({"data": {"x": 2}, "profile": null, "brand": "B", "template": null, "recipient": "u_1"})
        );
    }
}
