//! `fetch-data`: calls a webhook and merges its JSON answer into the run's `data` (and keeps it
//! under the step's `ref`).
//!
//! An unavailable endpoint is not bad data: a connect error, a timeout, a 408, a 429 or a 5xx
//! is tried again within the execution ([`ATTEMPTS`] in all, with backoff, within
//! [`EXECUTION_BUDGET`]), then the run waits
//! and the step is executed again later (backoff from [`RETRY_AFTER_MS`], at most
//! [`MAX_RETRY_AFTER_MS`]); it ends only by an answer or a cancel. Any other 4xx, a response
//! over the size limit or not JSON, and a destination the outbound guard refuses fail the step
//! with the reason.

use std::time::Duration;

use rc_common::automation::{self as contract, steps::FetchData};
use reqwest::StatusCode;
use serde_json::Value;

use super::StepDone;
use crate::engine::{Engine, Transient};
use crate::refs::{self, resolve};
use crate::store::{Run, iso, now_ms};

/// A fetch-data response body is read up to this many bytes; a longer one fails the step.
pub const MAX_FETCH_RESPONSE_BYTES: usize = 64 * 1024;
/// A run's context (data, profile, step results) as JSON; a fetch-data step that would grow it
/// past this fails.
pub const MAX_CONTEXT_BYTES: usize = 256 * 1024;
/// Requests per execution of the step (the first and the retries), well inside a run's lease.
pub const ATTEMPTS: u32 = 3;
/// Pause before the first retry within an execution; doubled each time, with jitter.
const FIRST_PAUSE_MS: u64 = 250;
/// After an execution's attempts all failed transiently, the run waits this long (doubled per
/// execution that failed so, at most [`MAX_RETRY_AFTER_MS`]).
pub const RETRY_AFTER_MS: i64 = 5_000;
pub const MAX_RETRY_AFTER_MS: i64 = 3_600_000;
/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one execution's attempts together: a retry starts only if it can end by then, so
/// the step stays well inside a run's lease (30 s by default) even when requests time out.
const EXECUTION_BUDGET: Duration = Duration::from_secs(21);

/// How one request ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answer(StatusCode, Vec<u8>),
    /// Worth trying again (the endpoint or the network is unavailable).
    Transient(String),
    /// The step fails with this reason.
    Fatal(String),
}

pub(crate) async fn execute(
    engine: &Engine,
    run: &mut Run,
    index: usize,
    step: &FetchData,
) -> Result<StepDone, Transient> {
    let ctx = &run.context;
    let hook = &step.webhook;
    let url = hook.url.0.as_str();
    // Checked when written too; again here so a stored run from before a setting changed, or
    // a literal private IP, never opens a connection (names are checked by the resolver).
    if let Err(e) = rc_common::outbound::check_url_str(url, engine.allow_private_networks) {
        return Ok(StepDone::Fail(format!("steps[{index}].webhook.url: {e}")));
    }
    let mut req = engine
        .http
        .request(
            reqwest::Method::from_bytes(hook.method.unwrap_or_default().as_str().as_bytes())
                .unwrap_or(reqwest::Method::GET),
            url,
        )
        .timeout(REQUEST_TIMEOUT);
    if let Some(h) = hook.headers.as_ref().map(|h| resolve(h.as_value(), ctx)) {
        for (k, v) in h.as_object().into_iter().flatten() {
            if let Some(v) = v.as_str() {
                req = req.header(k, v);
            }
        }
    }
    if let Some(p) = hook.params.as_ref().map(|p| resolve(p.as_value(), ctx)) {
        let pairs: Vec<(&String, String)> = p
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        req = req.query(&pairs);
    }
    match hook.body.as_ref().map(|b| resolve(b, ctx)) {
        None | Some(Value::Null) => {}
        // The SDK declares `body` a string: sent as is, not JSON-encoded a second time.
        Some(Value::String(text)) => req = req.body(text),
        Some(b) => req = req.json(&b),
    }

    let mut last = String::new();
    let started = tokio::time::Instant::now();
    let mut tried = 0;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let pause = pause(attempt);
            if started.elapsed() + pause + REQUEST_TIMEOUT > EXECUTION_BUDGET {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        tried += 1;
        // Bodies here are bytes or JSON, never streams: the request always clones.
        let Some(req) = req.try_clone() else { break };
        match call(req).await {
            Outcome::Answer(status, raw) => {
                return Ok(merge_answer(run, index, step, status, &raw));
            }
            Outcome::Fatal(reason) => {
                return Ok(StepDone::Fail(format!("steps[{index}].webhook: {reason}")));
            }
            Outcome::Transient(reason) => last = reason,
        }
    }
    metrics::counter!("automations_fetch_data_retries_total").increment(1);
    let at = now_ms() + retry_after(run.retries);
    run.retries = run.retries.saturating_add(1);
    Ok(StepDone::Wait(
        at,
        format!(
            "steps[{index}].webhook: {last}; tried {tried} times, tried again at {}",
            iso(at)
        ),
    ))
}

/// Jittered exponential pause before attempt `attempt` (1-based retries).
fn pause(attempt: u32) -> Duration {
    rc_common::backoff::Backoff::new(Duration::from_millis(FIRST_PAUSE_MS), REQUEST_TIMEOUT)
        .jittered(attempt)
}

/// How long the run waits after `retries` earlier executions failed transiently.
fn retry_after(retries: u32) -> i64 {
    RETRY_AFTER_MS
        .saturating_mul(1 << retries.min(20))
        .min(MAX_RETRY_AFTER_MS)
}

async fn call(req: reqwest::RequestBuilder) -> Outcome {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return classify_error(&e),
    };
    let status = resp.status();
    if let Some(o) = classify_status(status) {
        return o;
    }
    match read_capped(resp, MAX_FETCH_RESPONSE_BYTES).await {
        Ok(Some(raw)) => Outcome::Answer(status, raw),
        Ok(None) => Outcome::Fatal(format!(
            "response larger than the limit of {MAX_FETCH_RESPONSE_BYTES} bytes"
        )),
        Err(e) => Outcome::Transient(format!("reading the response failed: {e}")),
    }
}

/// None for a success; otherwise whether trying again may help.
fn classify_status(status: StatusCode) -> Option<Outcome> {
    if status.is_success() {
        return None;
    }
    let reason = format!("answered {status}");
    let again = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    Some(if again {
        Outcome::Transient(reason)
    } else {
        Outcome::Fatal(reason)
    })
}

fn classify_error(e: &reqwest::Error) -> Outcome {
    let reason = format!("request failed: {}", rc_common::outbound::root_cause(e));
    // A refused destination or a request that cannot be built fails the same way every time.
    if rc_common::outbound::is_blocked(e).is_some() || e.is_builder() || e.is_redirect() {
        Outcome::Fatal(reason)
    } else {
        Outcome::Transient(reason)
    }
}

/// Merges a success's body into the run's `data`; the body is also the step's result.
fn merge_answer(
    run: &mut Run,
    index: usize,
    step: &FetchData,
    status: StatusCode,
    raw: &[u8],
) -> StepDone {
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            return StepDone::Fail(format!("steps[{index}].webhook: response is not JSON: {e}"));
        }
    };
    let strategy = step.merge_strategy.unwrap_or_default();
    let data = refs::merge(
        run.context.get("data").unwrap_or(&Value::Null),
        &body,
        strategy,
    );
    if let Some(c) = run.context.as_object_mut() {
        c.insert("data".into(), data);
    }
    // The body is kept twice (data and the step's ref): bound what the run document holds.
    if contract::larger_than(&run.context, MAX_CONTEXT_BYTES.saturating_sub(raw.len())) {
        return StepDone::Fail(format!(
            "steps[{index}].webhook: the run context would exceed the limit of {MAX_CONTEXT_BYTES} bytes"
        ));
    }
    StepDone::Next(
        Some(format!(
            "fetched {} ({status}), merged with {}",
            step.webhook.url.0,
            strategy.as_str()
        )),
        Some(body),
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{parse, run_with};
    use rc_common::automation::Action;
    use serde_json::json;

    fn step(doc: Value) -> FetchData {
        match parse(doc).action {
            Action::FetchData(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unavailable_is_transient_and_refusals_are_final() {
        for s in [500, 502, 503, 504, 408, 429] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify_status(s), Some(Outcome::Transient(_))),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 410, 422, 302] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(
                classify_status(s),
                Some(Outcome::Fatal(format!("answered {s}"))),
                "{s}"
            );
        }
        assert_eq!(classify_status(StatusCode::OK), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(retry_after(0), RETRY_AFTER_MS);
        assert_eq!(retry_after(1), 2 * RETRY_AFTER_MS);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY_AFTER_MS);
        for attempt in 1..ATTEMPTS + 10 {
            let p = pause(attempt).as_millis() as u64;
            let base = (FIRST_PAUSE_MS << (attempt - 1).min(8)).min(10_000);
            assert!(p >= base * 8 / 10 && p <= base * 12 / 10, "{attempt}: {p}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        // A port nothing listens on (bound, then closed).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        rc_common::outbound::install_default_crypto_provider();
        let req = reqwest::Client::new().get(format!("http://{addr}/x"));
        assert!(
            matches!(call(req).await, Outcome::Transient(r) if r.starts_with("request failed"))
        );
    }

    #[test]
    fn answers_merge_into_data_by_strategy() {
        let s = step(
            json!({"action": "fetch-data", "merge_strategy": "soft-merge",
            "webhook": {"url": "https://x.test/a"}}),
        );
        let mut run = run_with(json!({"data": {"plan": "free", "id": 1}}));
        let done = merge_answer(
            &mut run,
            0,
            &s,
            StatusCode::OK,
            br#"{"plan": "pro", "seats": 3}"#,
        );
        assert_eq!(
            done,
            StepDone::Next(
                Some("fetched https://x.test/a (200 OK), merged with soft-merge".into()),
                Some(json!({"plan": "pro", "seats": 3}))
            )
        );
        assert_eq!(
            run.context["data"],
            json!({"plan": "free", "id": 1, "seats": 3})
        );
        assert_eq!(
            merge_answer(&mut run, 2, &s, StatusCode::OK, b"<html>"),
            StepDone::Fail(
                "steps[2].webhook: response is not JSON: expected value at line 1 column 1".into()
            )
        );
        // A body that would grow the run past its bound fails instead of being stored.
        let big = serde_json::to_vec(&json!({"blob": "x".repeat(MAX_CONTEXT_BYTES / 2)})).unwrap();
        assert!(
            matches!(merge_answer(&mut run, 0, &s, StatusCode::OK, &big), StepDone::Fail(r) if r.contains("would exceed"))
        );
    }
}
