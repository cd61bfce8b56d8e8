//! `send`: one message request, either a Courier `message` as is or a `template` to a recipient.
//! [`request_message`] also serves `send-list` (one request per subscriber).

use prost::Message as _;
use rc_common::automation::steps::{Object, Send, Text};
use rc_common::subjects::{self, kinds};
use rc_proto::MessageRequest;
use redis::AsyncCommands;
use serde_json::{Value, json};

use super::StepDone;
use crate::engine::{Engine, Transient, ts};
use crate::refs::{self, resolve, resolve_str_field};
use crate::store::{self, Run, now_ms};

pub(crate) async fn execute(
    engine: &Engine,
    run: &Run,
    index: usize,
    step: &Send,
) -> Result<StepDone, Transient> {
    let out = Outgoing {
        message: step.message.as_ref(),
        recipient: recipient(run, step.recipient.as_ref()),
        template: step.template.as_ref(),
        brand: step.brand.as_ref(),
        data: step.data.as_ref(),
        profile: step.profile.as_ref(),
        overrides: step.overrides.as_ref(),
    };
    // A template send to nobody would be UNROUTABLE to `""` while the run said completed:
    // the run fails and says why. (A `message` send may go to a tenant or an address.)
    if out.message.is_none() && out.recipient.is_empty() {
        return Ok(StepDone::Fail(format!(
            "steps[{index}].recipient: resolves to no user (the event has no userId or \
             anonymousId, or the path names nothing)"
        )));
    }
    let message_id = format!("{}-s{index}", run.id);
    let detail = request_message(engine, run, &out, &message_id).await?;
    Ok(StepDone::Next(
        Some(detail),
        Some(json!({"messageId": message_id})),
    ))
}

/// What one message request is made of, as the step wrote it.
pub(crate) struct Outgoing<'a> {
    /// A Courier message (then the other fields are not read).
    pub message: Option<&'a Object>,
    /// The template send's recipient, resolved.
    pub recipient: String,
    /// Without one, the run's (invoke's `template`).
    pub template: Option<&'a Text>,
    pub brand: Option<&'a Text>,
    pub data: Option<&'a Object>,
    pub profile: Option<&'a Object>,
    pub overrides: Option<&'a Object>,
}

/// The fields of a message request, resolved in the run context.
#[derive(Debug, PartialEq)]
struct Parts {
    recipient: String,
    template: String,
    brand: String,
    data: Value,
    profile: Value,
    channels: Vec<String>,
    method: String,
    tenant: String,
    message: Option<Value>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn parts(run: &Run, out: &Outgoing) -> Parts {
    let ctx = &run.context;
    let str_of = |v: Option<&Value>| {
        v.map(|v| resolve_str_field(v, ctx))
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut p = match out.message.map(|m| resolve(m.as_value(), ctx)) {
        Some(m) => {
            let routing = m.get("routing");
            Parts {
                recipient: match m.get("to") {
                    Some(to) => str_of(to.get("user_id")),
                    None => run.recipient(),
                },
                template: str_of(m.get("template")),
                brand: str_of(m.get("brand_id")),
                data: m.get("data").cloned().unwrap_or(Value::Null),
                profile: Value::Null,
                channels: strings(routing.and_then(|r| r.get("channels"))),
                method: str_of(routing.and_then(|r| r.get("method"))),
                tenant: str_of(m.get("context").and_then(|c| c.get("tenant_id"))),
                message: Some(m),
            }
        }
        None => {
            let ov = refs::object(out.overrides, ctx);
            Parts {
                recipient: out.recipient.clone(),
                template: refs::opt_text(out.template, ctx)
                    .unwrap_or_else(|| str_of(ctx.get("template"))),
                brand: refs::opt_text(out.brand, ctx).unwrap_or_default(),
                data: refs::object(out.data, ctx),
                profile: refs::object(out.profile, ctx),
                channels: strings(ov.get("channels")),
                method: String::new(),
                tenant: String::new(),
                message: None,
            }
        }
    };
    if p.brand.is_empty() {
        p.brand = str_of(ctx.get("brand"));
    }
    p.data = refs::overlay(ctx.get("data").unwrap_or(&Value::Null), &p.data);
    p
}

/// Publishes one message request; returns the timeline detail. Idempotent by `message_id`.
pub(crate) async fn request_message(
    engine: &Engine,
    run: &Run,
    out: &Outgoing<'_>,
    message_id: &str,
) -> Result<String, Transient> {
    let ws = run.workspace.as_str();
    let ctx = &run.context;
    let p = parts(run, out);
    // The stored profile (profiles service's read contract) ← run profile ← step profile.
    let stored: Value = if p.recipient.is_empty() {
        Value::Null
    } else {
        let raw: Option<String> = engine
            .redis
            .clone()
            .get(store::profile_key(ws, &p.recipient))
            .await?;
        raw.and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or(Value::Null)
    };
    let profile = refs::overlay(
        &refs::overlay(&stored, ctx.get("profile").unwrap_or(&Value::Null)),
        &p.profile,
    );
    let (notification, status) = if p.template.is_empty() {
        (Vec::new(), "inline")
    } else {
        match engine
            .config
            .notification(&engine.redis, ws, &p.template)
            .await?
        {
            None => (Vec::new(), "missing"),
            Some(n) => {
                let published = n.get("published").and_then(Value::as_bool).unwrap_or(true);
                (
                    serde_json::to_vec(&*n).unwrap_or_default(),
                    if published { "found" } else { "unpublished" },
                )
            }
        }
    };
    let detail = format!(
        "message {message_id} requested for {:?} (template {:?}, {status})",
        p.recipient, p.template
    );
    let req = MessageRequest {
        schema_version: 1,
        workspace_id: ws.to_string(),
        message_id: message_id.to_string(),
        run_id: run.id.clone(),
        automation_template: run.template.clone(),
        event: run.event.clone(),
        recipient: p.recipient,
        profile: serde_json::to_vec(&profile).unwrap_or_default().into(),
        template: p.template,
        notification: notification.into(),
        template_status: status.into(),
        data: serde_json::to_vec(&p.data).unwrap_or_default().into(),
        brand: p.brand,
        message: p
            .message
            .map(|m| serde_json::to_vec(&m).unwrap_or_default())
            .unwrap_or_default()
            .into(),
        channels: p.channels,
        routing_method: p.method,
        tenant_id: p.tenant,
        requested_at: Some(ts(now_ms())),
    };
    engine
        .publish(
            subjects::courier_subject(ws, kinds::MESSAGE_REQUESTED),
            format!("{ws}:{message_id}:requested"),
            req.encode_to_vec(),
        )
        .await?;
    metrics::counter!("automations_messages_requested_total").increment(1);
    Ok(detail)
}

/// The recipient of a template send: the step's `recipient`, else the run's. A step naming
/// the event's user (`refs.data.userId`, `{"$ref": "data.userId"}`) gets the event's
/// anonymousId when it has no userId, as Courier does (userId, else anonymousId).
fn recipient(run: &Run, step: Option<&Text>) -> String {
    let ctx = &run.context;
    match step {
        Some(r) => {
            let user = refs::text(r, ctx);
            if user.is_empty() && r.path() == Some("data.userId") {
                refs::lookup(ctx, "data.anonymousId")
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            } else {
                user
            }
        }
        None => run.recipient(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{parse, run_with};
    use rc_common::automation::Action;

    fn send(doc: Value) -> Send {
        match parse(doc).action {
            Action::Send(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn outgoing<'a>(run: &Run, s: &'a Send) -> Outgoing<'a> {
        Outgoing {
            message: s.message.as_ref(),
            recipient: recipient(run, s.recipient.as_ref()),
            template: s.template.as_ref(),
            brand: s.brand.as_ref(),
            data: s.data.as_ref(),
            profile: s.profile.as_ref(),
            overrides: s.overrides.as_ref(),
        }
    }

    #[test]
    fn template_send_resolves_its_fields() {
        let run = run_with(json!({"recipient": "u_1", "brand": "B0",
            "data": {"a": 1, "sku": "x", "tpl": "T2"}, "template": "T-run"}));
        let s = send(json!({"action": "send", "template": "refs.data.tpl",
            "data": {"item": {"$ref": "data.sku"}}, "profile": {"email": "e@x"},
            "override": {"channels": ["sms", "email"]}}));
        let p = parts(&run, &outgoing(&run, &s));
        assert_eq!(p.recipient, "u_1");
        assert_eq!(p.template, "T2");
        assert_eq!(p.brand, "B0");
        assert_eq!(
            p.data,
            json!({"a": 1, "sku": "x", "tpl": "T2", "item": "x"})
        );
        assert_eq!(p.profile, json!({"email": "e@x"}));
        assert_eq!(p.channels, ["sms", "email"]);
        assert_eq!(p.message, None);
        // Without a template of its own, the run's.
        let s = send(json!({"action": "send", "template": "refs.data.none", "brand": "B1"}));
        let p = parts(&run, &outgoing(&run, &s));
        assert_eq!((p.template.as_str(), p.brand.as_str()), ("T-run", "B1"));
    }

    #[test]
    fn message_send_reads_the_message() {
        let run = run_with(json!({"recipient": "u_1", "data": {"who": "u_7"}}));
        let s = send(
            json!({"action": "send", "message": {"to": {"user_id": {"$ref": "data.who"}},
            "template": "T", "routing": {"method": "all", "channels": ["inbox", "email"]},
            "context": {"tenant_id": "t1"}, "data": {"k": 1}}}),
        );
        let p = parts(&run, &outgoing(&run, &s));
        assert_eq!(p.recipient, "u_7");
        assert_eq!(
            (p.template.as_str(), p.method.as_str(), p.tenant.as_str()),
            ("T", "all", "t1")
        );
        assert_eq!(p.channels, ["inbox", "email"]);
        assert_eq!(p.data, json!({"who": "u_7", "k": 1}));
        assert_eq!(p.message.unwrap()["to"]["user_id"], "u_7");
    }

    #[test]
    fn the_events_user_falls_back_to_its_anonymous_id() {
        let anon = run_with(json!({"data": {"userId": "", "anonymousId": "a_1"}}));
        for r in [json!("refs.data.userId"), json!({"$ref": "data.userId"})] {
            assert_eq!(
                recipient(
                    &anon,
                    send(json!({"action": "send", "template": "T", "recipient": r}))
                        .recipient
                        .as_ref()
                ),
                "a_1"
            );
        }
        // Only for the event's user: another path that names nothing stays empty.
        let s = send(json!({"action": "send", "template": "T", "recipient": "refs.data.owner"}));
        assert_eq!(recipient(&anon, s.recipient.as_ref()), "");
        let known = run_with(json!({"recipient": "u_run", "data": {"userId": "u_1"}}));
        let s = send(json!({"action": "send", "template": "T", "recipient": "refs.data.userId"}));
        assert_eq!(recipient(&known, s.recipient.as_ref()), "u_1");
        assert_eq!(recipient(&known, None), "u_run");
    }
}
