//! Page 7 (and the outbound page's list): dead letters of every consumer service.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::AppState;
use crate::api::{ApiError, seg};

fn known_service(service: &str) -> Option<&'static str> {
    DLQ_SERVICES.iter().find(|s| **s == service).copied()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        page_bare("Not found", html! { p { "No such service." } }),
    )
        .into_response()
}

fn dlq_tabs(current: &str) -> Markup {
    html! {
        nav.tabs aria-label="Services" { @for svc in DLQ_SERVICES {
            a href={ "/console/dead-letters/" (svc) } aria-current=[(svc == current).then_some("page")] { (svc) }
        } }
    }
}

pub(super) async fn dead_letters(
    State(state): State<AppState>,
    s: Signed,
    Path(service): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    let Some(service) = known_service(&service) else {
        return not_found();
    };
    let section = ok_or_page!(section(&state, &s, service, q.cursor.as_deref(), "").await);
    page(
        &s,
        &format!("Dead letters: {service}"),
        html! { (dlq_tabs(service)) (section) },
    )
    .into_response()
}

/// One page of a service's dead letters with replay and purge (page 7, and the outbound page for
/// the forwarder's).
pub(super) async fn section(
    state: &AppState,
    s: &Signed,
    service: &'static str,
    cursor: Option<&str>,
    from: &'static str,
) -> Result<Markup, ApiError> {
    let query = list_query(&[], cursor);
    let list = state
        .api
        .get(s.key(), &format!("/dead-letters/{service}"), &query)
        .await?;
    let rows = list["deadLetters"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let base = format!("/console/dead-letters/{service}");
    Ok(html! {
        p { (text(&list["total"])) " dead letter(s)." }
        (list_table(rows, &[
            ("Seq", &|d| { let seq = field(d, "seq"); html! { a href={ (base) "/" (seg(&seq)) } { (seq) } } }),
            ("Reason", &|d| html! { (field(d, "reason")) }),
            ("Subject", &|d| html! { (text(d.get("originalSubject").or(d.get("subject")).unwrap_or(&Value::Null))) }),
            ("When", &|d| html! { (field(d, "deadLetteredAt")) }),
            ("Actions", &|d| replay_form(s, service, &field(d, "seq"), from)),
        ], "No dead letters.", next_href(&base, &[], cursor_of(&list["next"]))))
        @if !rows.is_empty() {
            form method="post" action={ (base) "/purge" } {
                (csrf(s))
                input type="hidden" name="from" value=(from);
                button.danger type="submit" { "Purge all of " (service) }
            }
        }
    })
}

#[derive(Deserialize)]
pub(super) struct DlqForm {
    csrf: String,
    /// `outbound` when the form is on the outbound page (it returns there), else empty.
    #[serde(default)]
    from: String,
}

/// Where a replay or purge returns: the page its form was on.
fn after(service: &str, from: &str) -> String {
    match from {
        "outbound" => "/console/outbound".into(),
        _ => format!("/console/dead-letters/{service}"),
    }
}

fn replay_form(s: &Signed, service: &str, seq: &str, from: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/dead-letters/" (service) "/" (seg(seq)) "/replay" } {
            (csrf(s))
            input type="hidden" name="from" value=(from);
            button type="submit" { "Replay" }
        }
    }
}

pub(super) async fn dead_letter(
    State(state): State<AppState>,
    s: Signed,
    Path((service, seq)): Path<(String, String)>,
) -> Response {
    let Some(service) = known_service(&service) else {
        return not_found();
    };
    let d = match state
        .api
        .get(
            s.key(),
            &format!("/dead-letters/{service}/{}", seg(&seq)),
            &[],
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    page(
        &s,
        &format!("Dead letter {seq} ({service})"),
        html! {
            (dlq_tabs(service))
            p { "Reason: " (text(&d["reason"])) }
            (replay_form(&s, service, &seq, ""))
            (json_block("dead-letter", &d))
        },
    )
    .into_response()
}

pub(super) async fn replay(
    State(state): State<AppState>,
    Path((service, seq)): Path<(String, String)>,
    Posted { s, form: f }: Posted<DlqForm>,
) -> Response {
    let path = |svc: &str| format!("/dead-letters/{svc}/{}/replay", seg(&seq));
    act(&state, &s, &service, Method::POST, path, &f).await
}

pub(super) async fn purge(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Posted { s, form: f }: Posted<DlqForm>,
) -> Response {
    let path = |svc: &str| format!("/dead-letters/{svc}");
    act(&state, &s, &service, Method::DELETE, path, &f).await
}

/// A replay or purge: the form's token checked, the service known, then back to the form's page.
async fn act(
    state: &AppState,
    s: &Signed,
    service: &str,
    method: Method,
    path: impl Fn(&str) -> String,
    f: &DlqForm,
) -> Response {
    let Some(service) = known_service(service) else {
        return not_found();
    };
    match state
        .api
        .call(s.key(), method, &path(service), &[], None)
        .await
    {
        Ok(_) => Redirect::to(&after(service, &f.from)).into_response(),
        Err(e) => failure(e),
    }
}

csrf_form!(DlqForm);
