//! Page 3: automation templates (list, create, edit steps as JSON; the API's validation error,
//! which starts with the JSON path, is shown next to the text) and notification templates with
//! a rendered preview per channel.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::AppState;
use crate::api::{ApiError, seg};

const NEW_STEPS: &str =
    r#"[{"action": "send", "recipient": "refs.data.userId", "template": "WELCOME"}]"#;

pub(super) async fn list(State(state): State<AppState>, s: Signed) -> Response {
    list_page(&state, &s, None, "", NEW_STEPS).await
}

/// The list with the create form holding `name`/`steps` and `error` (a refused create).
async fn list_page(
    state: &AppState,
    s: &Signed,
    error: Option<&str>,
    name: &str,
    steps: &str,
) -> Response {
    let (templates, notifications) = ok_or_page!(tokio::try_join!(
        state.api.get(s.key(), "/automations/templates", &[]),
        state.api.get(s.key(), "/notifications/templates", &[]),
    ));
    let rows = |v: &Value| v["results"].as_array().cloned().unwrap_or_default();
    page(
        s,
        "Automations",
        html! {
            h2 { "Automation templates" }
            (list_table(&rows(&templates), &[
                ("Template", &|t| { let id = field(t, "id"); html! { a href={ "/console/automations/" (seg(&id)) } { (name_or_id(t)) } } }),
                ("Id", &|t| html! { (field(t, "id")) }),
                ("Steps", &|t| html! { (t["steps"].as_array().map_or(0, Vec::len)) }),
                ("Updated", &|t| html! { (field(t, "updated_at")) }),
                ("Runs", &|t| html! { a href={ "/console/runs?template=" (seg(&field(t, "id"))) } { "runs" } }),
            ], "No automation templates yet.", None))
            h2 id="create" { "Create an automation template" }
            (steps_form(s, "/console/automations", name, steps, error))
            h2 { "Notification templates" }
            (list_table(&rows(&notifications), &[
                ("Template", &|t| { let id = field(t, "id"); html! { a href={ "/console/notifications/" (seg(&id)) } { (name_or_id(t)) } } }),
                ("Channels", &|t| html! {
                    @for c in t["channels"].as_object().into_iter().flat_map(|m| m.keys()) { span.tag { (c) } " " }
                }),
                ("Published", &|t| html! { (field(t, "published")) }),
            ], "No notification templates yet.", None))
        },
    )
    .into_response()
}

/// Name and steps as JSON, with the API's validation error (it names the path, e.g.
/// `steps[0].recipient: …`) tied to the text area.
fn steps_form(s: &Signed, action: &str, name: &str, steps: &str, error: Option<&str>) -> Markup {
    html! {
        form method="post" action=(action) {
            (csrf(s))
            label for="name" { "Name" }
            input id="name" name="name" value=(name);
            label for="steps" { "Steps (JSON)" }
            @if let Some(e) = error { p.error id="steps-error" role="alert" { (e) } }
            textarea id="steps" name="steps" rows="12" aria-describedby=[error.map(|_| "steps-error")] { (steps) }
            button type="submit" { "Save" }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct StepsForm {
    csrf: String,
    #[serde(default)]
    name: String,
    steps: String,
}

/// The document to send, or the error to show at the text (bad JSON: its line and column).
fn document(f: &StepsForm) -> Result<Value, String> {
    let steps: Value =
        serde_json::from_str(&f.steps).map_err(|e| format!("steps: not JSON ({e})"))?;
    let mut doc = json!({ "steps": steps });
    if !f.name.trim().is_empty() {
        doc["name"] = json!(f.name.trim());
    }
    Ok(doc)
}

/// One stored document (`kind` is its collection's API path).
async fn document_of(
    state: &AppState,
    s: &Signed,
    kind: &str,
    id: &str,
) -> Result<Value, ApiError> {
    state
        .api
        .get(s.key(), &format!("{kind}/{}", seg(id)), &[])
        .await
}

/// Why a save did not happen: a refusal shown at the form, or a failure page.
enum Refused {
    AtForm(String),
    Page(ApiError),
}

/// Sends the form's document; a 4xx from the API is shown at the form.
async fn submit(
    state: &AppState,
    s: &Signed,
    method: Method,
    path: &str,
    f: &StepsForm,
) -> Result<Value, Refused> {
    let doc = document(f).map_err(Refused::AtForm)?;
    state
        .api
        .call(s.key(), method, path, &[], Some(&doc))
        .await
        .map_err(|e| match e {
            ApiError::Status { status, message } if status.is_client_error() => {
                Refused::AtForm(message)
            }
            e => Refused::Page(e),
        })
}

pub(super) async fn create(
    State(state): State<AppState>,
    Posted { s, form: f }: Posted<StepsForm>,
) -> Response {
    match submit(&state, &s, Method::POST, "/automations/templates", &f).await {
        Ok(doc) => Redirect::to(&format!("/console/automations/{}", seg(&field(&doc, "id"))))
            .into_response(),
        Err(Refused::AtForm(e)) => list_page(&state, &s, Some(&e), &f.name, &f.steps).await,
        Err(Refused::Page(e)) => failure(e),
    }
}

pub(super) async fn edit(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
) -> Response {
    let t = ok_or_page!(document_of(&state, &s, "/automations/templates", &id).await);
    let steps = serde_json::to_string_pretty(&t["steps"]).unwrap_or_default();
    edit_page(&s, &id, t["name"].as_str().unwrap_or(""), &steps, None)
}

fn edit_page(s: &Signed, id: &str, name: &str, steps: &str, error: Option<&str>) -> Response {
    page(
        s,
        &format!("Automation template {id}"),
        html! {
            p { a href={ "/console/runs?template=" (seg(id)) } { "Its runs" } }
            (steps_form(s, &format!("/console/automations/{}", seg(id)), name, steps, error))
        },
    )
    .into_response()
}

pub(super) async fn save(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { s, form: f }: Posted<StepsForm>,
) -> Response {
    let path = format!("/automations/templates/{}", seg(&id));
    match submit(&state, &s, Method::PUT, &path, &f).await {
        Ok(_) => Redirect::to(&format!("/console/automations/{}", seg(&id))).into_response(),
        Err(Refused::AtForm(e)) => edit_page(&s, &id, &f.name, &f.steps, Some(&e)),
        Err(Refused::Page(e)) => failure(e),
    }
}

#[derive(Deserialize)]
pub(super) struct PreviewQuery {
    /// Sample data (JSON) the preview renders `{{…}}` with.
    #[serde(default)]
    data: Option<String>,
}

/// A notification template with each channel rendered by the delivery service (its
/// `POST /messages/render`, the renderer messages use) with the sample data given.
pub(super) async fn notification(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> Response {
    let t = ok_or_page!(document_of(&state, &s, "/notifications/templates", &id).await);
    let sample = q.data.unwrap_or_else(|| "{}".into());
    let preview = match serde_json::from_str::<Value>(&sample) {
        Ok(data) => {
            let body = json!({"channels": t["channels"], "data": data});
            state
                .api
                .call(s.key(), Method::POST, "/messages/render", &[], Some(&body))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("sample data: not JSON ({e})")),
    };
    page(
        &s,
        &format!("Notification template {id}"),
        html! {
            form method="get" {
                label for="data" { "Sample data (JSON) for the preview" }
                textarea id="data" name="data" rows="4" { (sample) }
                button type="submit" { "Preview" }
            }
            @match &preview {
                Err(e) => p.error role="alert" { (e) },
                Ok(r) => @for (channel, c) in r["channels"].as_object().into_iter().flatten() {
                    section.preview aria-label={ "Preview: " (channel) } {
                        h2 { (channel) }
                        p { strong { (text(&c["title"])) } }
                        p.body { (text(&c["body"])) }
                    }
                },
            }
            h2 { "The template" }
            (json_block("notification", &t))
        },
    )
    .into_response()
}

csrf_form!(StepsForm);
