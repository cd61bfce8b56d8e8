//! The run engine: creates runs (deduplicated by id with SET NX), executes their steps one by
//! one, saving progress in Redis after each step, and parks `delay`ed runs in the due index.
//!
//! A run is executed by whoever holds its lease in the due index (see `scheduler`): creation
//! takes the lease and executes at once; a crash leaves the lease to expire and another replica
//! picks the run up. Every step effect is idempotent (stable message and request ids), so
//! re-executing a step after a crash publishes nothing new.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use rc_common::automation::{self as contract, cancelation_token, expr};
use rc_common::redis::RedisConn;
use rc_common::subjects::{self, kinds};
use rc_proto::{MessageRequest, ProfileUpdateRequest, RunEvent};
use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::refs::{self, lookup, resolve, resolve_str_field};
use crate::store::{self, CLAIMS_KEY, DUE_KEY, Run, TimelineEntry, due_member, now_ms};

#[derive(Clone)]
pub struct Engine {
    pub redis: RedisConn,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    /// How long a claim on a run lasts before another replica may take it over.
    pub lease_ms: i64,
    /// How long a finished (completed, failed, canceled) run stays readable.
    pub retention_ms: i64,
    /// `outbound.allow_private_networks`: fetch-data URLs may name private addresses.
    pub allow_private_networks: bool,
}

/// Transient trouble: leave the lease to expire and retry.
#[derive(Debug)]
pub struct Transient(pub String);

impl From<redis::RedisError> for Transient {
    fn from(e: redis::RedisError) -> Self {
        Transient(format!("redis: {e}"))
    }
}

use rc_common::clock::timestamp_ms as ts;

/// KEYS: run, canceled marker, run index, run expiry index, token set (all one workspace slot).
/// ARGV: run JSON, retention ms, run id, now ms, "1" when the run has a token.
/// Prunes at most 100 expired entries per call, so the cost stays bounded.
const RETIRE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if ARGV[5] == '1' then redis.call('SREM', KEYS[5], ARGV[3]) end
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[4], 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
return #old
";

/// What a new run starts with.
pub struct NewRun {
    pub id: String,
    pub template: String,
    pub steps: Vec<Value>,
    pub cancelation_token: Option<String>,
    pub context: Value,
    pub event: String,
    pub source_message_id: String,
    /// Invoke nesting (see [`MAX_INVOKE_DEPTH`]).
    pub depth: u32,
}

impl Engine {
    /// Refuses a fetch-data URL the outbound guard would refuse, when the automation is
    /// written (API) or received (inline), not only when the step runs.
    pub fn check_fetch_urls(&self, steps: &Value, path: &str) -> Result<(), String> {
        for (i, url) in rc_common::automation::fetch_data_urls(steps) {
            rc_common::outbound::check_url_str(url, self.allow_private_networks)
                .map_err(|e| format!("{path}[{i}].webhook.url: {e}"))?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: Vec<u8>,
    ) -> Result<(), Transient> {
        let ack = self
            .js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(payload.into())
                    .message_id(msg_id),
            )
            .await
            .map_err(|e| Transient(format!("publish: {e}")))?;
        ack.await
            .map_err(|e| Transient(format!("publish ack: {e}")))?;
        Ok(())
    }

    /// Creates the run unless a run with that id exists (durably: SET NX, token index, due
    /// index with a lease held by this process). Returns true when this call created it; the
    /// caller then spawns [`Engine::execute`]. An existing, unfinished run that is missing from
    /// the due index (a crash between the two writes) is put back.
    pub async fn create(&self, ws: &str, new: NewRun) -> Result<bool, Transient> {
        let now = now_ms();
        let run = Run {
            id: new.id,
            workspace: ws.to_string(),
            state: "pending".into(),
            template: new.template,
            steps: new.steps,
            cancelation_token: new.cancelation_token.filter(|t| !t.is_empty()),
            context: new.context,
            step: 0,
            wake_at_ms: None,
            event: new.event,
            source_message_id: new.source_message_id,
            timeline: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: None,
            error: None,
            depth: new.depth,
        };
        let mut conn = self.redis.clone();
        let raw = serde_json::to_string(&run).expect("run serializes");
        let created: bool = redis::cmd("SET")
            .arg(store::run_key(ws, &run.id))
            .arg(raw)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        let member = due_member(ws, &run.id);
        if created {
            if let Some(token) = &run.cancelation_token {
                conn.sadd::<_, _, ()>(store::token_key(ws, token), &run.id)
                    .await?;
            }
            conn.zadd::<_, _, _, ()>(store::runs_key(ws), &run.id, now)
                .await?;
            conn.zadd::<_, _, _, ()>(DUE_KEY, &member, now + self.lease_ms)
                .await?;
            metrics::counter!("automations_runs_created_total").increment(1);
        } else if let Some(existing) = store::load_run(&self.redis, ws, &run.id).await?
            && !existing.is_terminal()
        {
            // A crash between the writes above: complete them.
            redis::cmd("ZADD")
                .arg(store::runs_key(ws))
                .arg("NX")
                .arg(existing.created_at_ms)
                .arg(&run.id)
                .query_async::<()>(&mut conn)
                .await?;
            if let Some(token) = &existing.cancelation_token {
                conn.sadd::<_, _, ()>(store::token_key(ws, token), &run.id)
                    .await?;
            }
            redis::cmd("ZADD")
                .arg(DUE_KEY)
                .arg("NX")
                .arg(now)
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(created)
    }

    /// Marks every run registered under `token` (except `except`) canceled and makes it due now,
    /// so its executor finalizes it promptly. Returns how many runs were signalled.
    pub async fn cancel_token(
        &self,
        ws: &str,
        token: &str,
        except: &str,
    ) -> Result<usize, Transient> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = conn.smembers(store::token_key(ws, token)).await?;
        let mut n = 0;
        for id in ids.iter().filter(|id| id.as_str() != except) {
            // Expires like a finished run, so a flag set on a run that just finished is not kept.
            conn.pset_ex::<_, _, ()>(
                store::canceled_key(ws, id),
                now_ms(),
                self.retention_ms.max(1) as u64,
            )
            .await?;
            // Only bring it forward; a run already finished is dropped by its executor.
            redis::cmd("ZADD")
                .arg(DUE_KEY)
                .arg(now_ms())
                .arg(due_member(ws, id))
                .query_async::<()>(&mut conn)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Saves a finished run with its retention TTL, drops it from its token set and the due
    /// index, and lets the workspace's run index forget runs whose retention has passed.
    async fn retire(&self, run: &Run) -> Result<(), Transient> {
        let ws = run.workspace.as_str();
        let raw = serde_json::to_string(run).expect("run serializes");
        let token = run.cancelation_token.as_deref().unwrap_or("");
        redis::Script::new(RETIRE)
            .key(store::run_key(ws, &run.id))
            .key(store::canceled_key(ws, &run.id))
            .key(store::runs_key(ws))
            .key(store::runs_expiry_key(ws))
            .key(store::token_key(ws, token))
            .arg(raw)
            .arg(self.retention_ms.max(1))
            .arg(&run.id)
            .arg(now_ms())
            .arg(if token.is_empty() { "0" } else { "1" })
            .invoke_async::<i64>(&mut self.redis.clone())
            .await?;
        self.settle(&due_member(ws, &run.id), None).await
    }

    /// This execution ended cleanly: the run is parked in the due index at `next` (or leaves
    /// it), and its claim count (see `scheduler`) is cleared. One round trip.
    async fn settle(&self, member: &str, next: Option<i64>) -> Result<(), Transient> {
        let mut pipe = redis::pipe();
        match next {
            Some(at) => pipe.zadd(DUE_KEY, member, at).ignore(),
            None => pipe.zrem(DUE_KEY, member).ignore(),
        };
        pipe.hdel(CLAIMS_KEY, member).ignore();
        pipe.query_async::<()>(&mut self.redis.clone()).await?;
        Ok(())
    }

    async fn run_event(
        &self,
        run: &Run,
        state: &str,
        step: i32,
        reason: &str,
    ) -> Result<(), Transient> {
        let ev = RunEvent {
            schema_version: 1,
            workspace_id: run.workspace.clone(),
            run_id: run.id.clone(),
            state: state.into(),
            template: run.template.clone(),
            recipient: run.recipient(),
            event: run.event.clone(),
            source_message_id: run.source_message_id.clone(),
            step_index: step,
            reason: reason.into(),
            at: Some(ts(now_ms())),
        };
        self.publish(
            subjects::courier_subject(&run.workspace, &kinds::run(state)),
            format!("{}:{}:run.{state}", run.workspace, run.id),
            ev.encode_to_vec(),
        )
        .await
    }

    /// Executes the run as far as it can go now. Errors are transient: the lease expires and
    /// the run is retried.
    pub async fn execute(&self, ws: &str, id: &str) -> Result<(), Transient> {
        let mut conn = self.redis.clone();
        let member = due_member(ws, id);
        let Some(mut run) = store::load_run(&self.redis, ws, id).await? else {
            return self.settle(&member, None).await;
        };
        if run.is_terminal() {
            return self.settle(&member, None).await;
        }
        if run.started_at_ms.is_none() {
            self.run_event(&run, "started", 0, "").await?;
            run.started_at_ms = Some(now_ms());
            run.state = "running".into();
            metrics::counter!("automations_runs_started_total").increment(1);
            metrics::histogram!("automations_run_start_latency_seconds")
                .record((now_ms() - run.created_at_ms).max(0) as f64 / 1000.0);
            store::save_run(&self.redis, &run).await?;
        }
        loop {
            let canceled: bool = conn.exists(store::canceled_key(ws, id)).await?;
            if canceled {
                let index = run.step;
                let action = step_action(run.steps.get(index)).to_string();
                self.finish(
                    &mut run,
                    "canceled",
                    index,
                    &action,
                    Some("canceled by token".into()),
                )
                .await?;
                return Ok(());
            }
            let index = run.step;
            let Some(step) = run.steps.get(index).cloned() else {
                run.state = "completed".into();
                run.updated_at_ms = now_ms();
                // Event first: a crash before `retire` re-executes and republishes the same
                // (deduplicated) event rather than leaving a finished run without one.
                self.run_event(&run, "completed", 0, "").await?;
                self.retire(&run).await?;
                metrics::counter!("automations_runs_finished_total", "state" => "completed")
                    .increment(1);
                return Ok(());
            };
            let action = step_action(Some(&step)).to_string();
            let action = action.as_str();
            // `if`: evaluated when the step is reached (not again after a delay wakes).
            if run.wake_at_ms.is_none()
                && let Some(cond) = step.get("if").and_then(Value::as_str)
            {
                let keep = match expr::parse(cond) {
                    Ok(e) => expr::eval(&e, &|p: &str| lookup(&run.context, p)),
                    Err(e) => {
                        let reason = format!("steps[{index}].if: {e}");
                        self.finish(&mut run, "failed", index, action, Some(reason))
                            .await?;
                        return Ok(());
                    }
                };
                if !keep {
                    self.record(
                        &mut run,
                        index,
                        action,
                        "skipped",
                        Some(format!("if {cond:?} is false")),
                    );
                    run.step += 1;
                    store::save_run(&self.redis, &run).await?;
                    continue;
                }
            }
            match self.step(&mut run, index, &step).await {
                Ok(StepDone::Next(detail, result)) => {
                    if let (Some(name), Some(result)) =
                        (step.get("ref").and_then(Value::as_str), result)
                        && let Some(ctx) = run.context.as_object_mut()
                    {
                        ctx.insert(name.to_string(), result);
                    }
                    self.record(&mut run, index, action, "done", detail);
                    run.step += 1;
                    run.state = "running".into();
                    store::save_run(&self.redis, &run).await?;
                }
                Ok(StepDone::Wait(until)) => {
                    if run.state != "waiting" {
                        self.record(
                            &mut run,
                            index,
                            action,
                            "waiting",
                            Some(format!("until {}", store::iso(until))),
                        );
                    }
                    run.state = "waiting".into();
                    run.wake_at_ms = Some(until);
                    store::save_run(&self.redis, &run).await?;
                    return self.settle(&member, Some(until)).await;
                }
                Ok(StepDone::Fail(reason)) => {
                    self.finish(&mut run, "failed", index, action, Some(reason))
                        .await?;
                    return Ok(());
                }
                Err(t) => return Err(t),
            }
        }
    }

    fn record(
        &self,
        run: &mut Run,
        index: usize,
        action: &str,
        status: &str,
        detail: Option<String>,
    ) {
        run.updated_at_ms = now_ms();
        run.timeline.push(TimelineEntry {
            index,
            action: action.to_string(),
            status: status.to_string(),
            at: store::iso(run.updated_at_ms),
            detail,
        });
    }

    async fn finish(
        &self,
        run: &mut Run,
        state: &str,
        index: usize,
        action: &str,
        reason: Option<String>,
    ) -> Result<(), Transient> {
        let status = if state == "failed" {
            "failed"
        } else {
            "canceled"
        };
        self.record(run, index, action, status, reason.clone());
        run.state = state.into();
        run.error = reason.clone();
        run.wake_at_ms = None;
        self.run_event(run, state, index as i32, reason.as_deref().unwrap_or(""))
            .await?;
        self.retire(run).await?;
        metrics::counter!("automations_runs_finished_total", "state" => state.to_string())
            .increment(1);
        Ok(())
    }

    async fn step(&self, run: &mut Run, index: usize, step: &Value) -> Result<StepDone, Transient> {
        let ctx = run.context.clone();
        let field = |name: &str| {
            step.get(name)
                .map(|v| resolve(v, &ctx))
                .filter(|v| !v.is_null())
        };
        let str_field = |name: &str| {
            step.get(name)
                .map(|v| resolve_str_field(v, &ctx))
                .and_then(|v| v.as_str().map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        let ws = run.workspace.clone();
        match step_action(Some(step)) {
            "send" => self.send(run, index, step).await,
            "send-list" => self.send_list(run, index, step).await,
            "delay" => {
                if let Some(at) = run.wake_at_ms {
                    if now_ms() >= at {
                        run.wake_at_ms = None;
                        return Ok(StepDone::Next(
                            Some(format!("woke at {}", store::iso(now_ms()))),
                            None,
                        ));
                    }
                    return Ok(StepDone::Wait(at));
                }
                let until = if let Some(d) = step.get("duration").and_then(Value::as_str) {
                    match contract::parse_duration(d) {
                        Ok(ms) => now_ms() + ms as i64,
                        Err(e) => {
                            return Ok(StepDone::Fail(format!("steps[{index}].duration: {e}")));
                        }
                    }
                } else {
                    match step
                        .get("until")
                        .and_then(Value::as_str)
                        .map(contract::parse_until)
                    {
                        Some(Ok(ms)) => ms,
                        Some(Err(e)) => {
                            return Ok(StepDone::Fail(format!("steps[{index}].until: {e}")));
                        }
                        None => {
                            return Ok(StepDone::Fail(format!(
                                "steps[{index}]: delay needs duration or until"
                            )));
                        }
                    }
                };
                if until <= now_ms() {
                    return Ok(StepDone::Next(Some("until is in the past".into()), None));
                }
                Ok(StepDone::Wait(until))
            }
            "cancel" => {
                let Some(token) = cancelation_token(step).map(str::to_string) else {
                    return Ok(StepDone::Fail(format!(
                        "steps[{index}].cancelation_token: required"
                    )));
                };
                let n = self.cancel_token(&ws, &token, &run.id).await?;
                Ok(StepDone::Next(
                    Some(format!("{n} run(s) with token {token:?} canceled")),
                    Some(json!({"canceled": n})),
                ))
            }
            "update-profile" => {
                let user = str_field("recipient_id").unwrap_or_else(|| run.recipient());
                if user.is_empty() {
                    return Ok(StepDone::Fail(format!(
                        "steps[{index}].recipient_id: no recipient"
                    )));
                }
                let profile = field("profile").unwrap_or(json!({}));
                let merge = step
                    .get("merge")
                    .and_then(Value::as_str)
                    .unwrap_or("replace");
                let request_id = format!("{}-s{index}", run.id);
                let req = ProfileUpdateRequest {
                    schema_version: 1,
                    workspace_id: ws.clone(),
                    request_id: request_id.clone(),
                    user_id: user.clone(),
                    profile: serde_json::to_vec(&profile).unwrap_or_default().into(),
                    merge: merge.into(),
                    run_id: run.id.clone(),
                    requested_at: Some(ts(now_ms())),
                };
                self.publish(
                    subjects::courier_subject(&ws, kinds::PROFILE_UPDATE),
                    format!("{ws}:{request_id}:profile.update"),
                    req.encode_to_vec(),
                )
                .await?;
                Ok(StepDone::Next(
                    Some(format!("profile update requested for {user}")),
                    Some(json!({"requestId": request_id})),
                ))
            }
            "invoke" => {
                let Some(tid) = str_field("template") else {
                    return Ok(StepDone::Fail(format!("steps[{index}].template: required")));
                };
                if run.depth >= MAX_INVOKE_DEPTH {
                    return Ok(StepDone::Fail(format!(
                        "steps[{index}]: invoke nested deeper than {MAX_INVOKE_DEPTH} runs"
                    )));
                }
                let Some(template) =
                    store::hget_json(&self.redis, &store::templates_key(&ws), &tid).await?
                else {
                    return Ok(StepDone::Fail(format!(
                        "steps[{index}].template: automation template {tid:?} not found"
                    )));
                };
                let c = field("context").unwrap_or(json!({}));
                let pick = |k: &str| {
                    c.get(k)
                        .cloned()
                        .filter(|v| !v.is_null())
                        .unwrap_or_else(|| ctx.get(k).cloned().unwrap_or(Value::Null))
                };
                let child_ctx = json!({
                    "data": pick("data"), "profile": pick("profile"), "brand": pick("brand"),
                    "template": pick("template"), "recipient": pick("recipient"),
                });
                let child_id = store::derive_id(&[&ws, &run.id, &index.to_string(), "invoke"]);
                let created = self
                    .create(
                        &ws,
                        NewRun {
                            id: child_id.clone(),
                            template: tid.clone(),
                            steps: template
                                .get("steps")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default(),
                            cancelation_token: cancelation_token(&template).map(str::to_string),
                            context: child_ctx,
                            event: run.event.clone(),
                            source_message_id: run.source_message_id.clone(),
                            depth: run.depth + 1,
                        },
                    )
                    .await?;
                if created {
                    // Due now: the scheduler (any replica) runs it within one poll interval.
                    self.redis
                        .clone()
                        .zadd::<_, _, _, ()>(DUE_KEY, due_member(&ws, &child_id), now_ms())
                        .await?;
                }
                Ok(StepDone::Next(
                    Some(format!("invoked {tid} as run {child_id}")),
                    Some(json!({"runId": child_id})),
                ))
            }
            "fetch-data" => self.fetch_data(run, index, step).await,
            other => Ok(StepDone::Fail(format!(
                "steps[{index}].action: unknown action {other:?}"
            ))),
        }
    }

    pub async fn execute_logged(&self, ws: &str, id: &str) {
        if let Err(Transient(e)) = self.execute(ws, id).await {
            tracing::warn!(workspace = ws, run_id = id, error = %e, "Run step failed transiently; it will be retried when its lease expires");
            // The process lived: an outage is not a crash, so it does not count toward
            // quarantine. (If Redis is what failed, this may fail too; then it counts once.)
            let _: Result<(), _> = self
                .redis
                .clone()
                .hdel(CLAIMS_KEY, due_member(ws, id))
                .await;
        }
    }

    /// Fails a run whose last `dead` claimed executions all died mid-run (see `scheduler`),
    /// without executing any of its steps again.
    pub async fn quarantine(&self, ws: &str, id: &str, dead: i64) -> Result<(), Transient> {
        let member = due_member(ws, id);
        let Some(mut run) = store::load_run(&self.redis, ws, id).await? else {
            return self.settle(&member, None).await;
        };
        if run.is_terminal() {
            return self.settle(&member, None).await;
        }
        let index = run.step;
        let action = step_action(run.steps.get(index)).to_string();
        let reason = format!(
            "quarantined: its last {dead} executions ended without finishing (the process running it died at steps[{index}]); it is not executed again"
        );
        tracing::error!(workspace = ws, run_id = id, step = index, reason = %reason, "Run quarantined");
        metrics::counter!("automations_runs_quarantined_total").increment(1);
        self.finish(&mut run, "failed", index, &action, Some(reason))
            .await
    }

    pub async fn quarantine_logged(&self, ws: &str, id: &str, dead: i64) {
        if let Err(Transient(e)) = self.quarantine(ws, id, dead).await {
            tracing::warn!(workspace = ws, run_id = id, error = %e, "Could not quarantine a run yet; retried when its lease expires");
        }
    }

    async fn send(&self, run: &mut Run, index: usize, step: &Value) -> Result<StepDone, Transient> {
        // A template send to nobody would be UNROUTABLE to `""` while the run said completed:
        // the run fails and says why. (A `message` send may go to a tenant or an address.)
        if step.get("message").is_none() && step_recipient(run, step, None).is_empty() {
            return Ok(StepDone::Fail(format!(
                "steps[{index}].recipient: resolves to no user (the event has no userId or \
                 anonymousId, or the path names nothing)"
            )));
        }
        let message_id = format!("{}-s{index}", run.id);
        let detail = self.request_message(run, step, None, &message_id).await?;
        Ok(StepDone::Next(
            Some(detail),
            Some(json!({"messageId": message_id})),
        ))
    }

    /// Publishes one message request for a send step (or, with `to`, for one recipient of a
    /// send-list step); returns the timeline detail. Idempotent by `message_id`.
    pub(crate) async fn request_message(
        &self,
        run: &Run,
        step: &Value,
        to: Option<&str>,
        message_id: &str,
    ) -> Result<String, Transient> {
        let ws = run.workspace.clone();
        let ctx = &run.context;
        let str_of = |v: Option<&Value>| {
            v.map(|v| resolve_str_field(v, ctx))
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let message = step.get("message").map(|m| resolve(m, ctx));
        let (recipient, template, brand, step_data, step_profile, channels, method, tenant) =
            match &message {
                Some(m) => {
                    let to = m.get("to");
                    let recipient = match to {
                        Some(to) => str_of(to.get("user_id")),
                        None => run.recipient(),
                    };
                    let routing = m.get("routing");
                    let channels: Vec<String> = routing
                        .and_then(|r| r.get("channels"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        recipient,
                        str_of(m.get("template")),
                        str_of(m.get("brand_id")),
                        m.get("data").cloned().unwrap_or(Value::Null),
                        Value::Null,
                        channels,
                        str_of(routing.and_then(|r| r.get("method"))),
                        str_of(m.get("context").and_then(|c| c.get("tenant_id"))),
                    )
                }
                None => {
                    let recipient = step_recipient(run, step, to);
                    let ov = step.get("override").map(|o| resolve(o, ctx));
                    let channels = ov
                        .as_ref()
                        .and_then(|o| o.get("channels"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        recipient,
                        // send-list may leave the template to the run's (invoke's `template`).
                        match str_of(step.get("template")) {
                            t if t.is_empty() => str_of(ctx.get("template")),
                            t => t,
                        },
                        str_of(step.get("brand")),
                        step.get("data")
                            .map(|d| resolve(d, ctx))
                            .unwrap_or(Value::Null),
                        step.get("profile")
                            .map(|d| resolve(d, ctx))
                            .unwrap_or(Value::Null),
                        channels,
                        String::new(),
                        String::new(),
                    )
                }
            };
        let brand = if brand.is_empty() {
            str_of(ctx.get("brand"))
        } else {
            brand
        };
        let data = refs::overlay(ctx.get("data").unwrap_or(&Value::Null), &step_data);
        // The stored profile (profiles service's read contract) ← run profile ← step profile.
        let stored: Value = if recipient.is_empty() {
            Value::Null
        } else {
            let raw: Option<String> = self
                .redis
                .clone()
                .get(store::profile_key(&ws, &recipient))
                .await?;
            raw.and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or(Value::Null)
        };
        let profile = refs::overlay(
            &refs::overlay(&stored, ctx.get("profile").unwrap_or(&Value::Null)),
            &step_profile,
        );
        let (notification, status) = if template.is_empty() {
            (Vec::new(), "inline")
        } else {
            match store::hget_json(&self.redis, &store::notifications_key(&ws), &template).await? {
                None => (Vec::new(), "missing"),
                Some(n) => {
                    let published = n.get("published").and_then(Value::as_bool).unwrap_or(true);
                    (
                        serde_json::to_vec(&n).unwrap_or_default(),
                        if published { "found" } else { "unpublished" },
                    )
                }
            }
        };
        let req = MessageRequest {
            schema_version: 1,
            workspace_id: ws.clone(),
            message_id: message_id.to_string(),
            run_id: run.id.clone(),
            automation_template: run.template.clone(),
            event: run.event.clone(),
            recipient: recipient.clone(),
            profile: serde_json::to_vec(&profile).unwrap_or_default().into(),
            template: template.clone(),
            notification: notification.into(),
            template_status: status.into(),
            data: serde_json::to_vec(&data).unwrap_or_default().into(),
            brand,
            message: message
                .map(|m| serde_json::to_vec(&m).unwrap_or_default())
                .unwrap_or_default()
                .into(),
            channels,
            routing_method: method,
            tenant_id: tenant,
            requested_at: Some(ts(now_ms())),
        };
        self.publish(
            subjects::courier_subject(&ws, kinds::MESSAGE_REQUESTED),
            format!("{ws}:{message_id}:requested"),
            req.encode_to_vec(),
        )
        .await?;
        metrics::counter!("automations_messages_requested_total").increment(1);
        Ok(format!(
            "message {message_id} requested for {recipient:?} (template {template:?}, {status})"
        ))
    }

    async fn fetch_data(
        &self,
        run: &mut Run,
        index: usize,
        step: &Value,
    ) -> Result<StepDone, Transient> {
        let ctx = run.context.clone();
        let hook = resolve(step.get("webhook").unwrap_or(&Value::Null), &ctx);
        let Some(url) = hook.get("url").and_then(Value::as_str) else {
            return Ok(StepDone::Fail(format!(
                "steps[{index}].webhook.url: required"
            )));
        };
        let method = hook
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self
            .http
            .request(method, url)
            .timeout(Duration::from_secs(10));
        if let Some(h) = hook.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    req = req.header(k, v);
                }
            }
        }
        if let Some(p) = hook.get("params").and_then(Value::as_object) {
            let pairs: Vec<(String, String)> = p
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect();
            req = req.query(&pairs);
        }
        match hook.get("body") {
            None | Some(Value::Null) => {}
            // The SDK declares `body` a string: sent as is, not JSON-encoded a second time.
            Some(Value::String(text)) => req = req.body(text.clone()),
            Some(b) => req = req.json(b),
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(StepDone::Fail(format!(
                    "steps[{index}].webhook: request failed: {e}"
                )));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            return Ok(StepDone::Fail(format!(
                "steps[{index}].webhook: answered {status}"
            )));
        }
        let raw = match read_capped(resp, MAX_FETCH_RESPONSE_BYTES).await {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Ok(StepDone::Fail(format!(
                    "steps[{index}].webhook: response larger than the limit of {MAX_FETCH_RESPONSE_BYTES} bytes"
                )));
            }
            Err(e) => {
                return Ok(StepDone::Fail(format!(
                    "steps[{index}].webhook: reading the response failed: {e}"
                )));
            }
        };
        let body: Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(e) => {
                return Ok(StepDone::Fail(format!(
                    "steps[{index}].webhook: response is not JSON: {e}"
                )));
            }
        };
        let strategy = step
            .get("merge_strategy")
            .and_then(Value::as_str)
            .unwrap_or("replace");
        let data = refs::merge(ctx.get("data").unwrap_or(&Value::Null), &body, strategy);
        if let Some(c) = run.context.as_object_mut() {
            c.insert("data".into(), data);
        }
        // The body is kept twice (data and the step's ref): bound what the run document holds.
        if contract::larger_than(&run.context, MAX_CONTEXT_BYTES.saturating_sub(raw.len())) {
            return Ok(StepDone::Fail(format!(
                "steps[{index}].webhook: the run context would exceed the limit of {MAX_CONTEXT_BYTES} bytes"
            )));
        }
        Ok(StepDone::Next(
            Some(format!("fetched {url} ({status}), merged with {strategy}")),
            Some(body),
        ))
    }
}

/// Runs started by `invoke` from runs started by `invoke`…: a template that invokes itself
/// stops here instead of starting runs forever.
pub const MAX_INVOKE_DEPTH: u32 = 8;
/// A fetch-data response body is read up to this many bytes; a longer one fails the step.
pub const MAX_FETCH_RESPONSE_BYTES: usize = 64 * 1024;
/// A run's context (data, profile, step results) as JSON; a fetch-data step that would grow it
/// past this fails.
pub const MAX_CONTEXT_BYTES: usize = 256 * 1024;

/// The body, or None when it is longer than `max` (read no further than that).
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

pub enum StepDone {
    /// Step done: detail for the timeline, result for its `ref`.
    Next(Option<String>, Option<Value>),
    Wait(i64),
    Fail(String),
}

fn step_action(step: Option<&Value>) -> &str {
    step.and_then(|s| s.get("action"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The recipient of a template send: `to` (send-list), the step's `recipient`, else the run's.
/// A step naming the event's user (`refs.data.userId`, `{"$ref": "data.userId"}`) gets the
/// event's anonymousId when it has no userId, as Courier does (userId, else anonymousId).
fn step_recipient(run: &Run, step: &Value, to: Option<&str>) -> String {
    let ctx = &run.context;
    let str_of = |v: &Value| {
        resolve_str_field(v, ctx)
            .as_str()
            .map(str::to_string)
            .unwrap_or_default()
    };
    match (to, step.get("recipient")) {
        (Some(to), _) => to.to_string(),
        (None, Some(r)) => {
            let user = str_of(r);
            let names_user = r.as_str() == Some("refs.data.userId")
                || r.get("$ref").and_then(Value::as_str) == Some("data.userId");
            if user.is_empty() && names_user {
                str_of(&Value::from("refs.data.anonymousId"))
            } else {
                user
            }
        }
        (None, None) => run.recipient(),
    }
}
