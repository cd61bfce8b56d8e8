//! Page 2: outbound to RudderStack (the forwarder): configuration with a write-only write key,
//! a test event, status, and the forwarder's dead letters.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::AppState;
use crate::api::ApiError;

const PATH: &str = "/integrations/rudderstack";
/// The message statuses the forwarder can send (its README), each a checkbox.
const STATUSES: [&str; 6] = [
    "SENT",
    "DELIVERED",
    "OPENED",
    "CLICKED",
    "UNDELIVERABLE",
    "UNROUTABLE",
];

/// The configuration, or `Null` while the workspace has none (the API's 404).
async fn config(state: &AppState, s: &Signed) -> Result<Value, ApiError> {
    match state.api.get(s.key(), PATH, &[]).await {
        Err(ApiError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(Value::Null),
        other => other,
    }
}

pub(super) async fn page(State(state): State<AppState>, s: Signed) -> Response {
    render(&state, &s, None).await
}

/// The page, with `notice` (a save error or a test's answer) above the form.
async fn render(state: &AppState, s: &Signed, notice: Option<Markup>) -> Response {
    let (cfg, status, dlq) = ok_or_page!(tokio::try_join!(
        config(state, s),
        async {
            match state.api.get(s.key(), &format!("{PATH}/status"), &[]).await {
                Err(ApiError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                    Ok(Value::Null)
                }
                other => other,
            }
        },
        dead_letters::section(state, s, "forwarder", None, "outbound"),
    ));
    let chosen: Vec<&str> = cfg["events"]["statuses"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| STATUSES.to_vec());
    let on = |v: &Value, default: bool| v.as_bool().unwrap_or(default);
    super::page(
        s,
        "Outbound to RudderStack",
        html! {
            @if let Some(n) = notice { (n) }
            section aria-labelledby="status" {
                h2 id="status" { "Status" }
                @if status.is_null() { p { "Not configured: events Courier generates are not sent anywhere." } }
                @else {
                    dl.status {
                        dt { "State" } dd id="outbound-state" { (field(&status, "state")) }
                        dt { "Paused reason" } dd { (field(&status, "pausedReason")) }
                        dt { "Circuit" } dd { (field(&status, "circuit")) }
                        dt { "Backlog" } dd { (field(&status, "pending")) }
                        dt { "Delivered" } dd id="outbound-delivered" { (field(&status, "delivered")) }
                        dt { "Failed" } dd { (field(&status, "failed")) }
                        dt { "Last error" } dd { (field(&status, "lastError")) @if let Some(at) = status["lastErrorAt"].as_str() { " (" (at) ")" } }
                        dt { "Last success" } dd { (field(&status, "lastDeliveredAt")) }
                    }
                }
            }
            section aria-labelledby="config" {
                h2 id="config" { "Configuration" }
                form method="post" action="/console/outbound" {
                    (csrf(s))
                    label for="writeKey" { "Write key" }
                    @if !cfg.is_null() { p { "Stored: " code { (field(&cfg, "writeKey")) } " (leave empty to keep it)" } }
                    input id="writeKey" name="writeKey" type="password" autocomplete="off";
                    label for="dataPlaneUrl" { "Data plane URL" }
                    input id="dataPlaneUrl" name="dataPlaneUrl" type="url" value=(cfg["dataPlaneUrl"].as_str().unwrap_or("")) placeholder="https://acmeXYZ.dataplane.rudderstack.com";
                    label { input type="checkbox" name="enabled" value="true" checked[on(&cfg["enabled"], true)]; " Enabled" }
                    fieldset {
                        legend { "Message statuses sent" }
                        @for st in STATUSES {
                            label { input type="checkbox" name="status" value=(st) checked[chosen.contains(&st)]; " " (st) }
                        }
                    }
                    label { input type="checkbox" name="profileUpdates" value="true" checked[on(&cfg["events"]["profileUpdates"], false)]; " Profile updates (identify)" }
                    label { input type="checkbox" name="tenantUpdates" value="true" checked[on(&cfg["events"]["tenantUpdates"], false)]; " Tenant updates (group)" }
                    button type="submit" { "Save" }
                }
                @if !cfg.is_null() {
                    form method="post" action="/console/outbound/test" {
                        (csrf(s))
                        button type="submit" { "Send a test event" }
                    }
                }
            }
            section aria-labelledby="dlq" {
                h2 id="dlq" { "Dead letters" }
                (dlq)
            }
        },
    )
    .into_response()
}

/// The form's fields in order (repeated `status` boxes make a plain struct unfit).
type Fields = Vec<(String, String)>;

impl CsrfForm for Fields {
    fn csrf(&self) -> &str {
        one(self, "csrf").unwrap_or("")
    }
}

fn one<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The PUT body from the form: an empty write key is left out (the stored one is kept).
fn body(f: &Fields) -> Value {
    let checked = |name| one(f, name) == Some("true");
    let statuses: Vec<&str> = f
        .iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut b = json!({
        "dataPlaneUrl": one(f, "dataPlaneUrl").unwrap_or("").trim(),
        "enabled": checked("enabled"),
        "events": {
            "statuses": statuses,
            "profileUpdates": checked("profileUpdates"),
            "tenantUpdates": checked("tenantUpdates"),
        },
    });
    if let Some(k) = one(f, "writeKey").map(str::trim).filter(|k| !k.is_empty()) {
        b["writeKey"] = json!(k);
    }
    b
}

pub(super) async fn save(
    State(state): State<AppState>,
    Posted { s, form: f }: Posted<Fields>,
) -> Response {
    match state
        .api
        .call(s.key(), Method::PUT, PATH, &[], Some(&body(&f)))
        .await
    {
        Ok(_) => Redirect::to("/console/outbound").into_response(),
        Err(ApiError::Status { message, .. }) => {
            let notice = html! { p.error role="alert" { "Not saved: " (message) } };
            render(&state, &s, Some(notice)).await
        }
        Err(e) => failure(e),
    }
}

pub(super) async fn test(
    State(state): State<AppState>,
    Posted { s, .. }: Posted<TokenForm>,
) -> Response {
    let notice = match state
        .api
        .call(s.key(), Method::POST, &format!("{PATH}/test"), &[], None)
        .await
    {
        Ok(v) => html! {
            p role="status" id="test-result" {
                "Test event " (field(&v, "messageId")) ": the data plane answered "
                (field(&v, "status")) " " (field(&v, "body"))
            }
        },
        Err(ApiError::Status { message, .. }) => {
            html! { p.error role="alert" id="test-result" { "Test failed: " (message) } }
        }
        Err(e) => return failure(e),
    };
    render(&state, &s, Some(notice)).await
}
