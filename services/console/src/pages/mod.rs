//! The pages. Every value shown goes through maud's escaping (no `PreEscaped` anywhere), every
//! POST form carries the session's CSRF token, and every page lists a bounded page of results
//! (the APIs' cursors), never everything.

mod automations;
mod dead_letters;
mod messages;
mod outbound;
mod profiles;
mod rudderstack;
mod runs;
mod signin;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::api::{ApiError, seg};
use crate::session::{self, COOKIE, SIGNIN_COOKIE, Session};

pub const PREFIX: &str = "/console";
/// Services with a dead-letter API, as routed by the front door (`/dead-letters/<service>`).
pub const DLQ_SERVICES: [&str; 5] = [
    "profiles",
    "accounts",
    "automations",
    "forwarder",
    "delivery",
];

/// Every page, in the nav bar's order.
const NAV: [(&str, &str); 7] = [
    ("/console/rudderstack", "RudderStack"),
    ("/console/outbound", "Outbound"),
    ("/console/automations", "Automations"),
    ("/console/runs", "Runs"),
    ("/console/messages", "Messages"),
    ("/console/profiles", "Profiles"),
    ("/console/dead-letters/automations", "Dead letters"),
];

const CSS: &str = include_str!("../../static/console.css");
const JS: &str = include_str!("../../static/console.js");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/rudderstack") }),
        )
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js))
        .route(
            "/console/signin",
            get(signin::signin_form).post(signin::signin),
        )
        .route("/console/signout", post(signin::signout))
        .route("/console/rudderstack", get(rudderstack::rudderstack))
        .route("/console/rudderstack/event", get(rudderstack::event_page))
        .route("/console/rudderstack/link", post(rudderstack::link))
        .route("/console/rudderstack/unlink", post(rudderstack::unlink))
        .route(
            "/console/outbound",
            get(outbound::page).post(outbound::save),
        )
        .route("/console/outbound/test", post(outbound::test))
        .route("/console/runs", get(runs::list))
        .route("/console/runs/{id}", get(runs::show))
        .route("/console/messages", get(messages::list))
        .route("/console/messages/{id}", get(messages::show))
        .route("/console/inbox", get(messages::inbox))
        .route(
            "/console/automations",
            get(automations::list).post(automations::create),
        )
        .route(
            "/console/automations/{id}",
            get(automations::edit).post(automations::save),
        )
        .route(
            "/console/notifications/{id}",
            get(automations::notification),
        )
        .route("/console/profiles", get(profiles::lookup))
        .route("/console/tenants/{id}", get(profiles::tenant))
        .route(
            "/console/dead-letters/{service}",
            get(dead_letters::dead_letters),
        )
        .route(
            "/console/dead-letters/{service}/{seq}",
            get(dead_letters::dead_letter),
        )
        .route(
            "/console/dead-letters/{service}/{seq}/replay",
            post(dead_letters::replay),
        )
        .route(
            "/console/dead-letters/{service}/purge",
            post(dead_letters::purge),
        )
        .with_state(state)
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A signed-in request: its session id and session. Without one, the sign-in page.
pub struct Signed {
    id: String,
    session: Session,
}

impl<S: Send + Sync> FromRequestParts<S> for Signed
where
    AppState: FromRef<S>,
{
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        cookie(&parts.headers, COOKIE)
            .and_then(|id| Some((id.to_string(), state.sessions.get(id)?)))
            .map(|(id, session)| Signed { id, session })
            .ok_or_else(|| Redirect::to("/console/signin"))
    }
}

impl Signed {
    fn key(&self) -> &str {
        &self.session.api_key
    }

    /// Whether a form's token is this session's (else [`Posted`] answers [`refused`]).
    fn check(&self, csrf: &str) -> bool {
        session::same(&self.session.csrf, csrf)
    }
}

/// The form of a signed-in POST: it carries the session's CSRF token in `csrf`.
trait CsrfForm: serde::de::DeserializeOwned {
    fn csrf(&self) -> &str;
}

/// Implements [`CsrfForm`] for form structs with a `csrf: String` field.
macro_rules! csrf_form {
    ($($t:ty),+) => { $(impl $crate::pages::CsrfForm for $t { fn csrf(&self) -> &str { &self.csrf } })+ };
}
use csrf_form;

/// A signed-in POST whose form carries this session's token: else 403, and nothing happens.
/// Without a session, the sign-in page (as for [`Signed`]).
pub struct Posted<F> {
    s: Signed,
    form: F,
}

impl<S: Send + Sync, F: CsrfForm> axum::extract::FromRequest<S> for Posted<F>
where
    AppState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let s = Signed::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let req = axum::extract::Request::from_parts(parts, body);
        let axum::Form(form) = axum::Form::<F>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !s.check(form.csrf()) {
            return Err(refused());
        }
        Ok(Posted { s, form })
    }
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        page_bare("Refused", html! { p { "The form's token does not match this session. Reload the page and try again." } }),
    )
        .into_response()
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if state.settings.cookie_secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("tokens are hex")
}

/// An API failure as a page: a refused key ends the session, the rest say what went wrong.
fn failure(err: ApiError) -> Response {
    match err {
        ApiError::Unauthorized => Redirect::to("/console/signin").into_response(),
        ApiError::Status { status, message } => (
            StatusCode::BAD_GATEWAY,
            page_bare(
                "Error",
                html! { p.error { "The API answered " (status.as_u16()) ": " (message) } },
            ),
        )
            .into_response(),
        ApiError::Unreachable(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "2")],
            page_bare(
                "Unavailable",
                html! { p.error { "The API is unreachable (" (e) "). Retry in a moment." } },
            ),
        )
            .into_response(),
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · rudder-courier console" }
            link rel="stylesheet" href="/console/static/console.css";
            script src="/console/static/console.js" defer {}
        }
    }
}

fn page_bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main { h1 { (title) } (body) } }
        }
    }
}

fn page(s: &Signed, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                nav aria-label="Console" {
                    @for (href, label) in NAV { a href=(href) { (label) } }
                    form method="post" action="/console/signout" {
                        (csrf(s))
                        button type="submit" { "Sign out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn csrf(s: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.session.csrf); }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A row's field as text, or `—`.
fn field(v: &Value, name: &str) -> String {
    text(&v[name])
}

/// One column of a list: its heading and how a row renders in it.
type Column<'a> = (&'a str, &'a dyn Fn(&Value) -> Markup);

/// A page of an API list: the table (`empty` when there are no rows) and the link to the next
/// page. Every list page renders through this one function.
fn list_table(rows: &[Value], columns: &[Column<'_>], empty: &str, next: Option<String>) -> Markup {
    html! {
        @if rows.is_empty() { p { (empty) } }
        @else {
            div.scroll { table {
                thead { tr { @for (h, _) in columns { th scope="col" { (h) } } } }
                tbody { @for r in rows { tr { @for (_, cell) in columns { td { (cell(r)) } } } } }
            } }
        }
        @if let Some(href) = next { p { a.next href=(href) { "Next page →" } } }
    }
}

/// A list's cursor for the next page, whichever shape its API uses (a string or a number).
fn cursor_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The href of a list's next page: `base` with this page's non-empty filters and the cursor.
fn next_href(base: &str, filters: &[(&str, &str)], cursor: Option<String>) -> Option<String> {
    let cursor = cursor?;
    let mut href = format!("{base}?cursor={}", seg(&cursor));
    for (k, v) in filters.iter().filter(|(_, v)| !v.is_empty()) {
        href.push_str(&format!("&{k}={}", seg(v)));
    }
    Some(href)
}

/// Items per list page the console asks for.
const LIST_PAGE: &str = "50";

/// A list call's query: `filters`, the page size and the cursor when there is one.
fn list_query<'a>(
    filters: &[(&'a str, &'a str)],
    cursor: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut query = filters.to_vec();
    query.push(("limit", LIST_PAGE));
    if let Some(c) = cursor.filter(|c| !c.is_empty()) {
        query.push(("cursor", c));
    }
    query
}

/// The non-empty filters of a query, as API query pairs.
fn filters<'a>(pairs: &[(&'a str, &'a Option<String>)]) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((*k, v.as_deref().map(str::trim).filter(|v| !v.is_empty())?)))
        .collect()
}

/// An API answer or the failure page (early return): `let v = ok_or_page!(call.await);`.
macro_rules! ok_or_page {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return failure(e),
        }
    };
}
use ok_or_page;

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
}

/// A form with nothing but the token.
#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
}
csrf_form!(TokenForm);

/// A value as indented JSON in a `pre` with a copy button.
fn json_block(id: &str, v: &Value) -> Markup {
    html! {
        pre id=(id) { (serde_json::to_string_pretty(v).unwrap_or_default()) }
        button type="button" data-copy=(id) { "Copy" }
    }
}

/// A document's name, or its id when it has none.
fn name_or_id(v: &Value) -> String {
    text(v.get("name").filter(|n| !n.is_null()).unwrap_or(&v["id"]))
}
