//! Page 4: automation runs, filtered as the runs API allows, and one run's step timeline.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::*;
use crate::AppState;
use crate::api::seg;

const STATES: [&str; 6] = [
    "pending",
    "running",
    "waiting",
    "completed",
    "failed",
    "canceled",
];

#[derive(Deserialize, Default)]
pub(super) struct RunQuery {
    status: Option<String>,
    event: Option<String>,
    recipient: Option<String>,
    template: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<RunQuery>,
) -> Response {
    let f = filters(&[
        ("status", &q.status),
        ("event", &q.event),
        ("recipient", &q.recipient),
        ("template", &q.template),
        ("since", &q.since),
        ("until", &q.until),
    ]);
    let query = list_query(&f, q.cursor.as_deref());
    let runs = ok_or_page!(state.api.get(s.key(), "/automations/runs", &query).await);
    let rows = runs["items"].as_array().map_or(&[][..], Vec::as_slice);
    let next = runs["has_more"]
        .as_bool()
        .unwrap_or(false)
        .then(|| cursor_of(&runs["cursor"]))
        .flatten();
    let val = |o: &Option<String>| o.clone().unwrap_or_default();
    page(
        &s,
        "Runs",
        html! {
            form.filters method="get" action="/console/runs" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "any" }
                    @for st in STATES { option value=(st) selected[q.status.as_deref() == Some(st)] { (st) } }
                }
                label for="event" { "Event" } input id="event" name="event" value=(val(&q.event));
                label for="recipient" { "Recipient" } input id="recipient" name="recipient" value=(val(&q.recipient));
                label for="template" { "Automation template id" } input id="template" name="template" value=(val(&q.template));
                label for="since" { "Since (RFC 3339 or epoch ms)" } input id="since" name="since" value=(val(&q.since));
                label for="until" { "Until" } input id="until" name="until" value=(val(&q.until));
                button type="submit" { "Filter" }
            }
            (list_table(rows, &[
                ("Run", &|r| { let id = field(r, "runId"); html! { a href={ "/console/runs/" (seg(&id)) } { (id) } } }),
                ("State", &|r| html! { span.status { (field(r, "state")) } }),
                ("Event", &|r| html! { (field(r, "event")) }),
                ("Recipient", &|r| html! { (field(r, "recipient")) }),
                ("Template", &|r| html! { (field(r, "template")) }),
                ("Step", &|r| html! { (field(r, "step")) " / " (field(r, "steps")) }),
                ("Created", &|r| html! { (field(r, "created_at")) }),
                ("Error", &|r| html! { (field(r, "error")) }),
            ], "No runs match.", next_href("/console/runs", &f, next)))
        },
    )
    .into_response()
}

pub(super) async fn show(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Response {
    let run = ok_or_page!(
        state
            .api
            .get(s.key(), &format!("/automations/runs/{}", seg(&id)), &[])
            .await
    );
    let timeline = run["timeline"].as_array().map_or(&[][..], Vec::as_slice);
    let recipient = run["recipient"]
        .as_str()
        .or(run["context"]["recipient"].as_str())
        .unwrap_or("");
    page(
        &s,
        &format!("Run {id}"),
        html! {
            p { "State " span.status { (field(&run, "state")) } ", event " (field(&run, "event"))
                ", template " (field(&run, "template")) ", created " (field(&run, "created_at")) "." }
            @if !run["error"].is_null() { p.error { "Error: " (field(&run, "error")) } }
            @if !recipient.is_empty() {
                p { a href={ "/console/messages?recipient=" (seg(recipient)) } { "Messages to " (recipient) } }
            }
            h2 { "Timeline" }
            (list_table(timeline, &[
                ("Step", &|t| html! { (field(t, "index")) }),
                ("Action", &|t| html! { (field(t, "action")) }),
                ("Status", &|t| html! { span.status { (field(t, "status")) } }),
                ("At", &|t| html! { (field(t, "at")) }),
                ("Detail", &|t| html! { (field(t, "detail")) }),
            ], "No step has run yet.", None))
            h2 { "The run" }
            (json_block("run", &run))
        },
    )
    .into_response()
}
