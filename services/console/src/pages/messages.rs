//! Page 5: messages (delivery), filtered by status, recipient and channel; one message's history
//! and provider attempts; a user's inbox.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::*;
use crate::AppState;
use crate::api::seg;

/// The delivery service's statuses and channels (its README).
const STATUSES: [&str; 9] = [
    "ENQUEUED",
    "SENT",
    "DELIVERED",
    "UNDELIVERABLE",
    "OPENED",
    "CLICKED",
    "UNROUTABLE",
    "UNMAPPED",
    "CANCELED",
];
const CHANNELS: [&str; 6] = ["email", "sms", "push", "chat", "webhook", "inbox"];

#[derive(Deserialize)]
pub(super) struct MessageQuery {
    status: Option<String>,
    recipient: Option<String>,
    channel: Option<String>,
    cursor: Option<String>,
}

fn select(id: &str, label: &str, options: &[&str], current: Option<&str>) -> Markup {
    html! {
        label for=(id) { (label) }
        select id=(id) name=(id) {
            option value="" { "any" }
            @for o in options { option value=(o) selected[current == Some(*o)] { (o) } }
        }
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<MessageQuery>,
) -> Response {
    let f = filters(&[
        ("status", &q.status),
        ("recipient", &q.recipient),
        ("channel", &q.channel),
    ]);
    let query = list_query(&f, q.cursor.as_deref());
    let list = ok_or_page!(state.api.get(s.key(), "/messages", &query).await);
    let rows = list["results"].as_array().map_or(&[][..], Vec::as_slice);
    let recipient = q.recipient.clone().unwrap_or_default();
    page(
        &s,
        "Messages",
        html! {
            form.filters method="get" action="/console/messages" {
                (select("status", "Status", &STATUSES, q.status.as_deref()))
                label for="recipient" { "Recipient" } input id="recipient" name="recipient" value=(recipient);
                (select("channel", "Channel", &CHANNELS, q.channel.as_deref()))
                button type="submit" { "Filter" }
            }
            (list_table(rows, &[
                ("Message", &|m| { let id = field(m, "id"); html! { a href={ "/console/messages/" (seg(&id)) } { (id) } } }),
                ("Status", &|m| html! { span.status { (field(m, "status")) } }),
                ("Recipient", &|m| html! { (field(m, "recipient")) }),
                ("Notification", &|m| html! { (field(m, "notification")) }),
                ("Event", &|m| html! { (field(m, "event")) }),
                ("Channels", &|m| html! {
                    @for p in m["providers"].as_array().map_or(&[][..], Vec::as_slice) { span.tag { (field(p, "channel")) } " " }
                }),
                ("Reason", &|m| html! { (field(m, "reason")) }),
            ], "No messages match.", next_href("/console/messages", &f, cursor_of(&list["paging"]["cursor"]))))
            h2 { "A user's inbox" }
            form method="get" action="/console/inbox" {
                label for="user" { "User id" }
                input id="user" name="user" value=(recipient) required;
                button type="submit" { "Open inbox" }
            }
        },
    )
    .into_response()
}

pub(super) async fn show(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/messages/{}", seg(&id));
    let history_path = format!("{path}/history");
    let (m, history) = ok_or_page!(tokio::try_join!(
        state.api.get(s.key(), &path, &[]),
        state.api.get(s.key(), &history_path, &[]),
    ));
    let attempts = m["providers"].as_array().map_or(&[][..], Vec::as_slice);
    page(
        &s,
        &format!("Message {id}"),
        html! {
            p { "Status " span.status id="message-status" { (field(&m, "status")) } ", to " (field(&m, "recipient"))
                ", notification " (field(&m, "notification")) ", run "
                @if let Some(run) = m["run_id"].as_str().filter(|r| !r.is_empty()) { a href={ "/console/runs/" (seg(run)) } { (run) } } @else { "—" }
                "." }
            @if !m["reason"].is_null() { p.error { "Reason: " (field(&m, "reason")) " " (field(&m, "error")) } }
            h2 { "Provider attempts" }
            (list_table(attempts, &[
                ("Channel", &|p| html! { (field(p, "channel")) }),
                ("Provider", &|p| html! { (field(p, "provider")) " (" (field(p, "provider_type")) ")" }),
                ("Status", &|p| html! { (field(p, "status")) }),
                ("Attempts", &|p| html! { (field(p, "attempts")) }),
                ("Sent", &|p| html! { (field(p, "sent")) }),
                ("Error", &|p| html! { (field(p, "error")) }),
            ], "No provider was tried.", None))
            h2 { "History" }
            (json_block("history", &history["results"]))
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct InboxQuery {
    user: String,
}

pub(super) async fn inbox(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<InboxQuery>,
) -> Response {
    let inbox = ok_or_page!(
        state
            .api
            .get(
                s.key(),
                &format!("/inbox/{}", seg(q.user.trim())),
                &list_query(&[], None)
            )
            .await
    );
    let rows = inbox["messages"].as_array().map_or(&[][..], Vec::as_slice);
    page(
        &s,
        &format!("Inbox of {}", q.user.trim()),
        html! {
            (list_table(rows, &[
                ("Title", &|m| html! { (field(m, "title")) }),
                ("Body", &|m| html! { (field(m, "body")) }),
                ("Notification", &|m| html! { (field(m, "notification")) }),
                ("Message", &|m| { let id = field(m, "id"); html! { a href={ "/console/messages/" (seg(&id)) } { (id) } } }),
            ], "The inbox is empty.", None))
        },
    )
    .into_response()
}
