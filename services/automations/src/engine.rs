//! The run engine: creates runs (deduplicated by id with SET NX), executes their steps one by
//! one, saving progress in Redis after each step, and parks `delay`ed runs in the due index.
//!
//! A run is executed by whoever holds its lease in the due index (see `scheduler`): creation
//! takes the lease and executes at once; a crash leaves the lease to expire and another replica
//! picks the run up. Every step effect is idempotent (stable message and request ids), so
//! re-executing a step after a crash publishes nothing new.

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use rc_common::automation::{Step, expr};
use rc_common::redis::RedisConn;
use rc_common::subjects::{self, kinds};
use rc_proto::RunEvent;
use redis::AsyncCommands;
use serde_json::Value;

use crate::refs::lookup;
use crate::steps::StepDone;
use crate::store::{
    self, CLAIMS_KEY, DUE_KEY, Run, RunState, StepStatus, TimelineEntry, due_member, now_ms,
};

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
    /// Mappings and templates from memory (see `cached`).
    pub config: std::sync::Arc<crate::cached::Config>,
}

/// Transient trouble: leave the lease to expire and retry.
#[derive(Debug)]
pub struct Transient(pub String);

impl From<redis::RedisError> for Transient {
    fn from(e: redis::RedisError) -> Self {
        Transient(format!("redis: {e}"))
    }
}

pub(crate) use rc_common::clock::timestamp_ms as ts;

/// What a new run starts with.
pub struct NewRun {
    pub id: String,
    pub template: String,
    pub steps: Vec<Value>,
    pub cancelation_token: Option<String>,
    pub context: Value,
    pub event: String,
    pub source_message_id: String,
    /// Invoke nesting (see [`crate::steps::invoke::MAX_INVOKE_DEPTH`]).
    pub depth: u32,
    /// The creator executes the run at once ([`Engine::execute_created`]): it is stored
    /// running, so starting it costs no second write. Otherwise it is stored pending for the
    /// scheduler.
    pub executes_now: bool,
}

impl Engine {
    /// Refuses a fetch-data URL the outbound guard would refuse, when the automation is
    /// written (API) or received (inline), not only when the step runs.
    pub fn check_fetch_urls(&self, steps: &[Step], path: &str) -> Result<(), String> {
        for (i, url) in rc_common::automation::fetch_data_urls(steps) {
            rc_common::outbound::check_url_str(url, self.allow_private_networks)
                .map_err(|e| format!("{path}[{i}].webhook.url: {e}"))?;
        }
        Ok(())
    }

    pub(crate) async fn publish(
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
    /// index with a lease held by this process). Returns the run when this call created it; the
    /// caller then spawns [`Engine::execute_created`] (no need to read back what it just wrote).
    /// An existing, unfinished run that is missing from the due index (a crash between the two
    /// writes) is put back.
    pub async fn create(&self, ws: &str, new: NewRun) -> Result<Option<Run>, Transient> {
        let now = now_ms();
        let run = Run {
            id: new.id,
            workspace: ws.to_string(),
            state: if new.executes_now {
                RunState::Running
            } else {
                RunState::Pending
            },
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
            started_at_ms: new.executes_now.then_some(now),
            error: None,
            depth: new.depth,
            retries: 0,
        };
        let created = store::insert_run(&self.redis, &run, false).await?;
        let member = due_member(ws, &run.id);
        let mut conn = self.redis.clone();
        if created {
            conn.zadd::<_, _, _, ()>(DUE_KEY, &member, now + self.lease_ms)
                .await?;
            metrics::counter!("automations_runs_created_total").increment(1);
            if new.executes_now {
                metrics::counter!("automations_runs_started_total").increment(1);
            }
        } else if let Some(existing) = store::load_run(&self.redis, ws, &run.id).await?
            && !existing.is_terminal()
        {
            // A crash before the due index write (or a run older than the filter indexes):
            // complete the writes.
            store::insert_run(&self.redis, &existing, true).await?;
            redis::cmd("ZADD")
                .arg(DUE_KEY)
                .arg("NX")
                .arg(now)
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(created.then_some(run))
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
        store::retire_run(&self.redis, run, self.retention_ms).await?;
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

    /// Makes a run due now (the scheduler of any replica picks it up within one poll).
    pub(crate) async fn make_due_now(&self, ws: &str, id: &str) -> Result<(), Transient> {
        self.redis
            .clone()
            .zadd::<_, _, _, ()>(DUE_KEY, due_member(ws, id), now_ms())
            .await?;
        Ok(())
    }

    /// Publishes `run.<state>`: `started`, or a final [`RunState`]'s name.
    async fn run_event(
        &self,
        run: &Run,
        state: &'static str,
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
        let Some(run) = store::load_run(&self.redis, ws, id).await? else {
            return self.settle(&due_member(ws, id), None).await;
        };
        self.execute_run(run).await
    }

    /// [`Engine::execute`] of a run this process has just created (and holds the lease of).
    pub async fn execute_created(&self, run: Run) {
        let (ws, id) = (run.workspace.clone(), run.id.clone());
        let result = self.execute_run(run).await;
        self.log_transient(&ws, &id, result).await;
    }

    async fn execute_run(&self, mut run: Run) -> Result<(), Transient> {
        let (ws, id) = (run.workspace.clone(), run.id.clone());
        let (ws, id) = (ws.as_str(), id.as_str());
        let member = due_member(ws, id);
        if run.is_terminal() {
            return self.settle(&member, None).await;
        }
        if run.started_at_ms.is_none() {
            self.start(&mut run).await?;
        } else if run.step == 0 && run.timeline.is_empty() {
            // Stored running by `create` (`executes_now`) and not past its first step: the
            // `started` event may not be out yet (a crash right after the insert). Its message
            // id makes a repeat a no-op.
            self.run_event(&run, "started", 0, "").await?;
        }
        loop {
            let index = run.step;
            // Only `cancel_token` flags a run, and only a run registered under a token.
            let canceled = run.cancelation_token.is_some()
                && self
                    .redis
                    .clone()
                    .exists::<_, bool>(store::canceled_key(ws, id))
                    .await?;
            if canceled {
                let action = action_name(run.steps.get(index));
                let reason = Some("canceled by token".into());
                return self
                    .finish(&mut run, RunState::Canceled, index, &action, reason)
                    .await;
            }
            if index >= run.steps.len() {
                return self.complete(&mut run).await;
            }
            match self.advance(&mut run, index).await? {
                Flow::Next => {}
                Flow::Park(until) => return self.settle(&member, Some(until)).await,
                Flow::Finished => return Ok(()),
            }
        }
    }

    /// The run's first execution: `started` event, then the run says running.
    async fn start(&self, run: &mut Run) -> Result<(), Transient> {
        self.run_event(run, "started", 0, "").await?;
        run.started_at_ms = Some(now_ms());
        run.state = RunState::Running;
        metrics::counter!("automations_runs_started_total").increment(1);
        metrics::histogram!("automations_run_start_latency_seconds")
            .record((now_ms() - run.created_at_ms).max(0) as f64 / 1000.0);
        store::save_run(&self.redis, run).await?;
        Ok(())
    }

    /// Every step done.
    async fn complete(&self, run: &mut Run) -> Result<(), Transient> {
        run.state = RunState::Completed;
        run.updated_at_ms = now_ms();
        // Event first: a crash before `retire` re-executes and republishes the same
        // (deduplicated) event rather than leaving a finished run without one.
        self.run_event(run, RunState::Completed.as_str(), 0, "")
            .await?;
        self.retire(run).await?;
        metrics::counter!("automations_runs_finished_total", "state" => "completed").increment(1);
        Ok(())
    }

    /// Parses and executes step `index` (its `if` first, when the step is reached rather than
    /// woken), records the outcome and saves the run.
    async fn advance(&self, run: &mut Run, index: usize) -> Result<Flow, Transient> {
        // Runs stored by older versions were not validated: a bad step fails the run.
        let step = match Step::parse(&run.steps[index], &format!("steps[{index}]")) {
            Ok(step) => step,
            Err(reason) => {
                let action = action_name(run.steps.get(index));
                self.finish(run, RunState::Failed, index, &action, Some(reason))
                    .await?;
                return Ok(Flow::Finished);
            }
        };
        let action = step.action.name();
        if run.wake_at_ms.is_none()
            && let Some(cond) = &step.condition
            && !expr::eval(&cond.expr, &|p: &str| lookup(&run.context, p))
        {
            let detail = format!("if {:?} is false", cond.source);
            self.record(run, index, action, StepStatus::Skipped, Some(detail));
            run.step += 1;
            // The last step: retiring the run writes it (see below).
            if run.step < run.steps.len() {
                store::save_run(&self.redis, run).await?;
            }
            return Ok(Flow::Next);
        }
        match self.step(run, index, &step.action).await? {
            StepDone::Next(detail, result) => {
                if let (Some(name), Some(result)) = (&step.name, result)
                    && let Some(ctx) = run.context.as_object_mut()
                {
                    ctx.insert(name.0.clone(), result);
                }
                self.record(run, index, action, StepStatus::Done, detail);
                run.step += 1;
                run.state = RunState::Running;
                run.wake_at_ms = None;
                run.retries = 0;
                // After the last step the run is retired at once (completed, or canceled),
                // which writes all of it: a crash before that re-executes the step, as a crash
                // before this save would (steps' effects are idempotent).
                if run.step < run.steps.len() {
                    store::save_run(&self.redis, run).await?;
                }
                Ok(Flow::Next)
            }
            StepDone::Wait(until, detail) => {
                // One entry per wait, however often the run is woken early or retried.
                if run.state != RunState::Waiting {
                    self.record(run, index, action, StepStatus::Waiting, Some(detail));
                }
                run.state = RunState::Waiting;
                run.wake_at_ms = Some(until);
                store::save_run(&self.redis, run).await?;
                Ok(Flow::Park(until))
            }
            StepDone::Fail(reason) => {
                self.finish(run, RunState::Failed, index, action, Some(reason))
                    .await?;
                Ok(Flow::Finished)
            }
        }
    }

    fn record(
        &self,
        run: &mut Run,
        index: usize,
        action: &str,
        status: StepStatus,
        detail: Option<String>,
    ) {
        run.updated_at_ms = now_ms();
        run.timeline.push(TimelineEntry {
            index,
            action: action.to_string(),
            status,
            at: store::iso(run.updated_at_ms),
            detail,
        });
    }

    /// Ends the run failed or canceled at step `index`, with the reason.
    async fn finish(
        &self,
        run: &mut Run,
        state: RunState,
        index: usize,
        action: &str,
        reason: Option<String>,
    ) -> Result<(), Transient> {
        let status = if state == RunState::Failed {
            StepStatus::Failed
        } else {
            StepStatus::Canceled
        };
        self.record(run, index, action, status, reason.clone());
        run.state = state;
        run.error = reason.clone();
        run.wake_at_ms = None;
        self.run_event(
            run,
            state.as_str(),
            index as i32,
            reason.as_deref().unwrap_or(""),
        )
        .await?;
        self.retire(run).await?;
        metrics::counter!("automations_runs_finished_total", "state" => state.as_str())
            .increment(1);
        Ok(())
    }

    pub async fn execute_logged(&self, ws: &str, id: &str) {
        let result = self.execute(ws, id).await;
        self.log_transient(ws, id, result).await;
    }

    async fn log_transient(&self, ws: &str, id: &str, result: Result<(), Transient>) {
        if let Err(Transient(e)) = result {
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
        let action = action_name(run.steps.get(index));
        let reason = format!(
            "quarantined: its last {dead} executions ended without finishing (the process running it died at steps[{index}]); it is not executed again"
        );
        tracing::error!(workspace = ws, run_id = id, step = index, reason = %reason, "Run quarantined");
        metrics::counter!("automations_runs_quarantined_total").increment(1);
        self.finish(&mut run, RunState::Failed, index, &action, Some(reason))
            .await
    }

    pub async fn quarantine_logged(&self, ws: &str, id: &str, dead: i64) {
        if let Err(Transient(e)) = self.quarantine(ws, id, dead).await {
            tracing::warn!(workspace = ws, run_id = id, error = %e, "Could not quarantine a run yet; retried when its lease expires");
        }
    }
}

/// What the execution loop does after a step.
enum Flow {
    /// On to the next step.
    Next,
    /// The run waits in the due index until this instant.
    Park(i64),
    /// The run ended (failed); it is retired.
    Finished,
}

/// The `action` of a stored step as written (for the timeline of a step that did not parse).
fn action_name(step: Option<&Value>) -> String {
    step.and_then(|s| s.get("action"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}
