//! The EVENTS consumer: updates the catalog, then starts the runs an event calls for (mapped
//! templates; inline `properties.courier.automation`). Run ids are derived from workspace +
//! message id + template (or "inline"), and creation is SET NX, so a redelivered or duplicated
//! event starts each run once. An event whose inline automation is invalid (or names a missing
//! template) starts nothing: it is counted in the catalog as failed with the reason and
//! dead-lettered (Outcome::Poison) with the same reason.

use async_nats::jetstream::Message;
use prost::Message as _;
use rc_common::automation::{cancelation_token, parse_inline};
use rc_common::consumer::{Handler, Outcome};
use rc_proto::{Envelope, EventType};
use serde_json::{Map, Value, json};

use crate::catalog;
use crate::engine::{Engine, NewRun, Transient};
use crate::store::{self, now_ms};

pub struct EventHandler {
    pub engine: Engine,
    /// Accepted events' catalog counts, written in batches.
    pub tally: std::sync::Arc<catalog::Tally>,
}

fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_slice(bytes).unwrap_or(Value::Object(Map::new()))
}

impl Handler for EventHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let env = match Envelope::decode(message.payload.as_ref()) {
            Ok(e) => e,
            Err(e) => return Outcome::Poison(format!("not an Envelope: {e}")),
        };
        match self.process(&env).await {
            Ok(None) => Outcome::Done,
            Ok(Some(reason)) => Outcome::Poison(reason),
            // Transient is a Redis or NATS failure: an outage, waited out with the consumer paused.
            Err(Transient(e)) => Outcome::Unavailable(e),
        }
    }
}

/// The ad-hoc steps of an inline automation: `steps`, or `automation.steps` (invoke's shape).
/// The `event` a run (and its messages) carries: the event's name, or for the types without
/// one (identify, group, unnamed page/screen) the type, so a message never says `""`.
fn run_event(env: &Envelope) -> String {
    if env.event.is_empty() {
        env.r#type().subject_token().to_string()
    } else {
        env.event.clone()
    }
}

fn inline_steps(a: &Value) -> Option<&Value> {
    a.get("steps")
        .filter(|v| !v.is_null())
        .or_else(|| a.get("automation").and_then(|x| x.get("steps")))
}

impl EventHandler {
    /// `Ok(Some(reason))`: the event can never start what it asks for (dead-letter it); it is
    /// counted in the catalog with that reason and starts nothing.
    async fn process(&self, env: &Envelope) -> Result<Option<String>, Transient> {
        let ws = env.workspace_id.as_str();
        let kind = env.r#type();
        if kind == EventType::Unspecified {
            return Ok(None);
        }
        let entry = catalog::entry_key(kind, &env.event);
        let at = rc_common::clock::ms_of(env.received_at.as_ref()).unwrap_or_else(now_ms);
        let payload = String::from_utf8_lossy(&env.raw);
        let redis = &self.engine.redis;

        let props_json = match kind {
            EventType::Identify | EventType::Group => &env.traits,
            _ => &env.properties,
        };
        // Inline automations come with track events only; other events' properties are parsed
        // only if a mapping needs them (most identifies and groups start nothing).
        let props = (kind == EventType::Track).then(|| json_of(props_json));
        let inline = if let Some(props) = &props {
            props
                .get("courier")
                .and_then(|c| c.get("automation"))
                .filter(|a| !a.is_null())
                .cloned()
        } else {
            None
        };
        let mut failure = inline.as_ref().and_then(|a| {
            parse_inline(a)
                .and_then(|steps| match steps {
                    Some(steps) => self.engine.check_fetch_urls(&steps, "automation.steps"),
                    None => Ok(()),
                })
                .err()
        });
        // An inline template must exist (the event names it; unlike a mapping, nobody else
        // will see that it is missing).
        let inline_template = match (&failure, &inline) {
            (None, Some(a)) if inline_steps(a).is_none() => {
                match a.get("template").and_then(Value::as_str) {
                    Some(tid) => {
                        let t = self.engine.config.template(redis, ws, tid).await?;
                        if t.is_none() {
                            metrics::counter!("automations_missing_template_total").increment(1);
                            failure = Some(format!(
                                "properties.courier.automation.template: automation template {tid:?} not found"
                            ));
                        }
                        t.map(|t| (tid.to_string(), t))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let received = catalog::Received {
            ws,
            message_id: &env.message_id,
            entry: &entry,
            at_ms: at,
            payload: &payload,
        };
        if let Some(reason) = &failure {
            // Earlier accepted events first: the entry's status follows the events' order.
            self.tally.flush(redis).await?;
            catalog::record(redis, &received, Some(reason)).await?;
        } else {
            self.tally.add(redis, &received).await?;
        }
        if let Some(reason) = failure {
            tracing::warn!(workspace = ws, message_id = %env.message_id, reason = %reason, "Invalid inline automation; dead-lettered");
            metrics::counter!("automations_inline_invalid_total").increment(1);
            return Ok(Some(reason));
        }

        let mapped = self.engine.config.mapped(redis, ws, &entry).await?;
        if inline.is_none() && mapped.is_empty() {
            // Counted; nothing to start.
            return Ok(None);
        }
        let props = props.unwrap_or_else(|| json_of(props_json));

        // data = properties (traits) + userId, anonymousId, event (track), name (page, screen),
        // groupId (group) or previousId (alias), the properties repeated under data.properties.
        let mut base = props.as_object().cloned().unwrap_or_default();
        base.remove("courier");
        let mut data = base.clone();
        data.insert("userId".into(), json!(env.user_id));
        data.insert("anonymousId".into(), json!(env.anonymous_id));
        match kind {
            EventType::Track => {
                data.insert("event".into(), json!(env.event));
            }
            EventType::Page | EventType::Screen => {
                data.insert("name".into(), json!(env.event));
            }
            EventType::Group => {
                data.insert("groupId".into(), json!(env.group_id));
            }
            EventType::Alias => {
                data.insert("previousId".into(), json!(env.previous_id));
            }
            EventType::Identify | EventType::Unspecified => {}
        }
        data.insert("properties".into(), Value::Object(base));
        let default_recipient = if env.user_id.is_empty() {
            &env.anonymous_id
        } else {
            &env.user_id
        };

        let a = inline.clone().unwrap_or(json!({}));
        let context = |a: &Value| {
            json!({
                "data": a.get("data").filter(|d| d.is_object()).cloned().unwrap_or(Value::Object(data.clone())),
                "profile": a.get("profile").cloned().unwrap_or(Value::Null),
                "brand": a.get("brand").cloned().unwrap_or(Value::Null),
                "template": a.get("template").cloned().unwrap_or(Value::Null),
                "recipient": a.get("recipient").and_then(Value::as_str).unwrap_or(default_recipient),
            })
        };
        let mut created = Vec::new();

        if let Some(a) = &inline {
            let token = cancelation_token(a).map(str::to_string);
            if let Some(steps) = inline_steps(a) {
                let id = store::derive_id(&[ws, &env.message_id, "inline"]);
                let new = NewRun {
                    id: id.clone(),
                    template: String::new(),
                    steps: steps.as_array().cloned().unwrap_or_default(),
                    cancelation_token: token,
                    context: context(a),
                    event: run_event(env),
                    source_message_id: env.message_id.clone(),
                    depth: 0,
                    executes_now: true,
                };
                created.extend(self.engine.create(ws, new).await?);
            } else if let Some((tid, t)) = &inline_template {
                self.start_run(
                    ws,
                    env,
                    tid,
                    t,
                    token,
                    context(a),
                    "inline-template",
                    &mut created,
                )
                .await?;
            } else if let Some(token) = token {
                // Only a token: cancel the runs started with it.
                self.engine.cancel_token(ws, &token, "").await?;
            }
        }

        // Mapped templates: the inline `data` (when present) seeds them.
        let ctx = context(
            &json!({"data": a.get("data"), "recipient": a.get("recipient"), "profile": a.get("profile"), "brand": a.get("brand")}),
        );
        for tid in mapped.iter() {
            let Some(t) = self.engine.config.template(redis, ws, tid).await? else {
                // Shown in the catalog entry (`automations[].status: missing`).
                tracing::warn!(
                    workspace = ws,
                    template = tid,
                    "Event mapped to a missing automation template"
                );
                metrics::counter!("automations_missing_template_total").increment(1);
                continue;
            };
            self.start_run(ws, env, tid, &t, None, ctx.clone(), tid, &mut created)
                .await?;
        }
        for run in created {
            let engine = self.engine.clone();
            tokio::spawn(async move { engine.execute_created(run).await });
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_run(
        &self,
        ws: &str,
        env: &Envelope,
        tid: &str,
        t: &Value,
        token: Option<String>,
        context: Value,
        salt: &str,
        created: &mut Vec<crate::store::Run>,
    ) -> Result<(), Transient> {
        let id = store::derive_id(&[ws, &env.message_id, salt]);
        let new = NewRun {
            id: id.clone(),
            template: tid.to_string(),
            steps: t
                .get("steps")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            cancelation_token: token.or_else(|| cancelation_token(t).map(str::to_string)),
            context,
            event: run_event(env),
            source_message_id: env.message_id.clone(),
            depth: 0,
            executes_now: true,
        };
        created.extend(self.engine.create(ws, new).await?);
        Ok(())
    }
}
