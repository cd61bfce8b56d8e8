//! Page 1: RudderStack integration (connect, received-events catalog, link/unlink).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::AppState;
use crate::api::seg;

pub(super) async fn rudderstack(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<CursorQuery>,
) -> Response {
    let query = list_query(&[], q.cursor.as_deref());
    let catalog = match state.api.get(s.key(), "/automations/events", &query).await {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    let url = state
        .settings
        .public_url
        .as_deref()
        .unwrap_or(&state.settings.api_url);
    let webhook = format!("{}/inbound/rudderstack", url.trim_end_matches('/'));
    let rows = catalog["results"].as_array().map_or(&[][..], Vec::as_slice);
    page(
        &s,
        "RudderStack integration",
        html! {
            section aria-labelledby="connect" {
                h2 id="connect" { "Connect" }
                p { "In RudderStack, add a " strong { "Webhook" } " destination with:" }
                dl {
                    dt { "Webhook URL" }
                    dd { code id="webhook-url" { (webhook) } " " button type="button" data-copy="webhook-url" { "Copy" } }
                    dt { "Method" } dd { code { "POST" } }
                    dt { "Header" } dd { code { "Authorization: Bearer <your workspace API key>" } }
                }
            }
            section aria-labelledby="events" data-refresh="5" {
                h2 id="events" { "Received events" }
                (list_table(rows, &[
                    ("Event", &|e| html! { a href={ "/console/rudderstack/event?key=" (seg(e["key"].as_str().unwrap_or(""))) } { (field(e, "event")) } }),
                    ("Type", &|e| html! { (field(e, "type")) }),
                    ("Count", &|e| html! { (field(e, "count")) }),
                    ("First seen", &|e| html! { (field(e, "first_received_at")) }),
                    ("Last seen", &|e| html! { (field(e, "last_received_at")) }),
                    ("Status", &|e| html! { span.status { (field(e, "status")) } }),
                    ("Last error", &|e| html! { (text(&e["last_error"]["reason"])) }),
                    ("Automations", &|e| html! {
                        @for a in e["automations"].as_array().map_or(&[][..], Vec::as_slice) {
                            span.tag { (name_or_id(a)) } " "
                        }
                        a.plus href={ "/console/rudderstack/event?key=" (seg(e["key"].as_str().unwrap_or(""))) "#link" } aria-label={ "Link an automation to " (field(e, "event")) } { "+" }
                    }),
                ], "No events received yet. Send one from RudderStack; this list refreshes by itself.",
                next_href("/console/rudderstack", &[], cursor_of(&catalog["next"]))))
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct KeyQuery {
    key: String,
}

pub(super) async fn event_page(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<KeyQuery>,
) -> Response {
    let path = format!("/automations/events/{}", seg(&q.key));
    let (event, templates) = match tokio::try_join!(
        state.api.get(s.key(), &path, &[]),
        state.api.get(s.key(), "/automations/templates", &[]),
    ) {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    let empty = vec![];
    let linked = event["automations"].as_array().unwrap_or(&empty);
    page(
        &s,
        &format!("Event: {}", text(&event["event"])),
        html! {
            p { "Type " (text(&event["type"])) ", received " (text(&event["count"])) " times, last at " (text(&event["last_received_at"])) ", status " (text(&event["status"])) "." }
            @if !event["last_error"].is_null() {
                p.error { "Last error: " (text(&event["last_error"]["reason"])) " (message " (text(&event["last_error"]["message_id"])) ")" }
            }
            h2 { "Linked automations" }
            @if linked.is_empty() { p { "None: this event starts no automation." } }
            ul { @for a in linked {
                li {
                    (name_or_id(a)) " (" (text(&a["id"])) ", " (text(&a["status"])) ") "
                    form.inline method="post" action="/console/rudderstack/unlink" {
                        (csrf(&s))
                        input type="hidden" name="key" value=(q.key);
                        input type="hidden" name="template_id" value=(text(&a["id"]));
                        button type="submit" { "Unlink" }
                    }
                }
            } }
            h2 id="link" { "Link an automation" }
            form method="post" action="/console/rudderstack/link" {
                (csrf(&s))
                input type="hidden" name="key" value=(q.key);
                label for="template_id" { "Existing automation template" }
                select id="template_id" name="template_id" {
                    option value="" { "— create a new one —" }
                    @for t in templates["results"].as_array().unwrap_or(&empty) {
                        option value=(text(&t["id"])) { (name_or_id(t)) }
                    }
                }
                fieldset {
                    legend { "Or a new automation that sends one message" }
                    label for="name" { "Name" }
                    input id="name" name="name" value={ "On " (text(&event["event"])) };
                    label for="notification" { "Notification template id (its channels decide where it goes, e.g. the inbox)" }
                    input id="notification" name="notification" placeholder="WELCOME";
                    label for="recipient" { "Recipient" }
                    input id="recipient" name="recipient" value="refs.data.userId";
                }
                button type="submit" { "Link" }
            }
            h2 { "Last payload" }
            (json_block("payload", &event["last_payload"]))
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct LinkForm {
    csrf: String,
    key: String,
    #[serde(default)]
    template_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    notification: String,
    #[serde(default)]
    recipient: String,
}

/// The mapping body's event part from a catalog key `<type>:<name>` (or a bare type).
fn mapping_event(key: &str) -> Value {
    match key.split_once(':') {
        Some((kind, name)) => json!({"type": kind, "event": name}),
        None => json!({"type": key}),
    }
}

fn back_to(key: &str) -> Response {
    Redirect::to(&format!("/console/rudderstack/event?key={}", seg(key))).into_response()
}

pub(super) async fn link(
    State(state): State<AppState>,
    Posted { s, form: f }: Posted<LinkForm>,
) -> Response {
    let mut body = mapping_event(&f.key);
    if f.template_id.is_empty() {
        let recipient = if f.recipient.trim().is_empty() {
            "refs.data.userId"
        } else {
            f.recipient.trim()
        };
        let mut step = json!({"action": "send", "recipient": recipient});
        if !f.notification.trim().is_empty() {
            step["template"] = json!(f.notification.trim());
        }
        body["template"] = json!({"name": f.name.trim(), "steps": [step]});
    } else {
        body["template_id"] = json!(f.template_id);
    }
    match state
        .api
        .call(
            s.key(),
            Method::POST,
            "/automations/mappings",
            &[],
            Some(&body),
        )
        .await
    {
        Ok(_) => back_to(&f.key),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
pub(super) struct UnlinkForm {
    csrf: String,
    key: String,
    template_id: String,
}

pub(super) async fn unlink(
    State(state): State<AppState>,
    Posted { s, form: f }: Posted<UnlinkForm>,
) -> Response {
    let ev = mapping_event(&f.key);
    let mut query = vec![("template_id", f.template_id.as_str())];
    if let Some(t) = ev["type"].as_str() {
        query.push(("type", t));
    }
    if let Some(e) = ev["event"].as_str() {
        query.push(("event", e));
    }
    match state
        .api
        .call(
            s.key(),
            Method::DELETE,
            "/automations/mappings",
            &query,
            None,
        )
        .await
    {
        Ok(_) => back_to(&f.key),
        Err(e) => failure(e),
    }
}

csrf_form!(LinkForm, UnlinkForm);
