//! The pages. Every value shown goes through maud's escaping (no `PreEscaped` anywhere), every
//! POST form carries the session's CSRF token, and every page lists a bounded page of results
//! (the APIs' cursors), never everything.

use axum::Form;
use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, seg};
use crate::session::{self, COOKIE, SIGNIN_COOKIE, Session};

pub const PREFIX: &str = "/console";
const CATALOG_PAGE: &str = "50";
const DLQ_PAGE: &str = "50";
/// Services with a dead-letter API, as routed by the front door (`/dead-letters/<service>`).
pub const DLQ_SERVICES: [&str; 5] = [
    "profiles",
    "accounts",
    "automations",
    "forwarder",
    "delivery",
];

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");

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
        .route("/console/signin", get(signin_form).post(signin))
        .route("/console/signout", post(signout))
        .route("/console/rudderstack", get(rudderstack))
        .route("/console/rudderstack/event", get(event_page))
        .route("/console/rudderstack/link", post(link))
        .route("/console/rudderstack/unlink", post(unlink))
        .route("/console/dead-letters/{service}", get(dead_letters))
        .route("/console/dead-letters/{service}/{seq}", get(dead_letter))
        .route("/console/dead-letters/{service}/{seq}/replay", post(replay))
        .route("/console/dead-letters/{service}/purge", post(purge))
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

    /// Whether a form's token is this session's (else the caller answers [`refused`]).
    fn check(&self, csrf: &str) -> bool {
        session::same(&self.session.csrf, csrf)
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
                    a href="/console/rudderstack" { "RudderStack" }
                    a href="/console/dead-letters/automations" { "Dead letters" }
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

// ---- sign-in ---------------------------------------------------------------------------------

async fn signin_form(State(state): State<AppState>) -> Response {
    signin_page(&state, None, StatusCode::OK)
}

fn signin_page(state: &AppState, error: Option<&str>, status: StatusCode) -> Response {
    let token = session::token();
    let body = page_bare(
        "Sign in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/console/signin" {
                input type="hidden" name="csrf" value=(token);
                label for="api_key" { "Workspace API key" }
                input id="api_key" name="api_key" type="password" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    );
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(state, SIGNIN_COOKIE, &token, Some(600)),
        )],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct SigninForm {
    api_key: String,
    csrf: String,
}

async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<SigninForm>,
) -> Response {
    // Double-submit: the token in the form must be the one this browser got as a cookie.
    if !cookie(&headers, SIGNIN_COOKIE).is_some_and(|c| session::same(c, &f.csrf)) {
        return refused();
    }
    let key = f.api_key.trim().to_string();
    if key.is_empty() || key.len() > 512 {
        return signin_page(
            &state,
            Some("Enter a workspace API key."),
            StatusCode::BAD_REQUEST,
        );
    }
    match state.api.verify(&key).await {
        Ok(()) => {}
        Err(ApiError::Unauthorized) => {
            return signin_page(
                &state,
                Some("That API key was refused."),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return failure(e),
    }
    let id = state.sessions.create(key);
    let mut resp = Redirect::to("/console/rudderstack").into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(&state, COOKIE, &id, None));
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, SIGNIN_COOKIE, "", Some(0)),
    );
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn signout(State(state): State<AppState>, s: Signed, Form(f): Form<CsrfForm>) -> Response {
    if !s.check(&f.csrf) {
        return refused();
    }
    state.sessions.remove(&s.id);
    let mut resp = Redirect::to("/console/signin").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, COOKIE, "", Some(0)));
    resp
}

// ---- RudderStack integration ------------------------------------------------------------------

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
}

async fn rudderstack(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<CursorQuery>,
) -> Response {
    let mut query = vec![("limit", CATALOG_PAGE)];
    if let Some(c) = q.cursor.as_deref().filter(|c| !c.is_empty()) {
        query.push(("cursor", c));
    }
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
    let empty = vec![];
    let rows = catalog["results"].as_array().unwrap_or(&empty);
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
                @if rows.is_empty() { p { "No events received yet. Send one from RudderStack; this list refreshes by itself." } }
                @else {
                    div.scroll { table {
                        thead { tr {
                            th scope="col" { "Event" } th scope="col" { "Type" } th scope="col" { "Count" }
                            th scope="col" { "First seen" } th scope="col" { "Last seen" } th scope="col" { "Status" }
                            th scope="col" { "Last error" } th scope="col" { "Automations" }
                        } }
                        tbody { @for e in rows {
                            tr {
                                td { a href={ "/console/rudderstack/event?key=" (seg(e["key"].as_str().unwrap_or(""))) } { (text(&e["event"])) } }
                                td { (text(&e["type"])) }
                                td { (text(&e["count"])) }
                                td { (text(&e["first_received_at"])) }
                                td { (text(&e["last_received_at"])) }
                                td.status { (text(&e["status"])) }
                                td { (text(&e["last_error"]["reason"])) }
                                td {
                                    @for a in e["automations"].as_array().unwrap_or(&empty) {
                                        span.tag { (text(a.get("name").filter(|n| !n.is_null()).unwrap_or(&a["id"]))) } " "
                                    }
                                    a.plus href={ "/console/rudderstack/event?key=" (seg(e["key"].as_str().unwrap_or(""))) "#link" } aria-label={ "Link an automation to " (text(&e["event"])) } { "+" }
                                }
                            }
                        } }
                    } }
                }
                @if let Some(next) = catalog["next"].as_str() {
                    a href={ "/console/rudderstack?cursor=" (seg(next)) } { "Next page →" }
                }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

async fn event_page(
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
    let payload = serde_json::to_string_pretty(&event["last_payload"]).unwrap_or_default();
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
                    (text(a.get("name").filter(|n| !n.is_null()).unwrap_or(&a["id"]))) " (" (text(&a["id"])) ", " (text(&a["status"])) ") "
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
                        option value=(text(&t["id"])) { (text(t.get("name").filter(|n| !n.is_null()).unwrap_or(&t["id"]))) }
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
            pre id="payload" { (payload) }
            button type="button" data-copy="payload" { "Copy" }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
struct LinkForm {
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

async fn link(State(state): State<AppState>, s: Signed, Form(f): Form<LinkForm>) -> Response {
    if !s.check(&f.csrf) {
        return refused();
    }
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
struct UnlinkForm {
    csrf: String,
    key: String,
    template_id: String,
}

async fn unlink(State(state): State<AppState>, s: Signed, Form(f): Form<UnlinkForm>) -> Response {
    if !s.check(&f.csrf) {
        return refused();
    }
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

// ---- dead letters -------------------------------------------------------------------------------

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

async fn dead_letters(
    State(state): State<AppState>,
    s: Signed,
    Path(service): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    let Some(service) = known_service(&service) else {
        return not_found();
    };
    let mut query = vec![("limit", DLQ_PAGE)];
    if let Some(c) = q.cursor.as_deref().filter(|c| !c.is_empty()) {
        query.push(("cursor", c));
    }
    let list = match state
        .api
        .get(s.key(), &format!("/dead-letters/{service}"), &query)
        .await
    {
        Ok(v) => v,
        Err(e) => return failure(e),
    };
    let empty = vec![];
    let rows = list["deadLetters"].as_array().unwrap_or(&empty);
    page(
        &s,
        &format!("Dead letters: {service}"),
        html! {
            (dlq_tabs(service))
            p { (text(&list["total"])) " dead letter(s)." }
            @if !rows.is_empty() {
                div.scroll { table {
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "Reason" } th scope="col" { "Subject" } th scope="col" { "When" } th scope="col" { "Actions" } } }
                    tbody { @for d in rows {
                        @let seq = text(&d["seq"]);
                        tr {
                            td { a href={ "/console/dead-letters/" (service) "/" (seg(&seq)) } { (seq) } }
                            td { (text(&d["reason"])) }
                            td { (text(&d["subject"])) }
                            td { (text(d.get("deadLetteredAt").or(d.get("at")).unwrap_or(&Value::Null))) }
                            td { (replay_form(&s, service, &seq)) }
                        }
                    } }
                } }
                form method="post" action={ "/console/dead-letters/" (service) "/purge" } {
                    (csrf(&s))
                    button.danger type="submit" { "Purge all of " (service) }
                }
            }
            @if let Some(next) = list["next"].as_str().map(str::to_string).or(list["next"].as_u64().map(|n| n.to_string())) {
                a href={ "/console/dead-letters/" (service) "?cursor=" (seg(&next)) } { "Next page →" }
            }
        },
    )
    .into_response()
}

fn replay_form(s: &Signed, service: &str, seq: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/dead-letters/" (service) "/" (seg(seq)) "/replay" } {
            (csrf(s))
            button type="submit" { "Replay" }
        }
    }
}

async fn dead_letter(
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
    let json = serde_json::to_string_pretty(&d).unwrap_or_default();
    page(
        &s,
        &format!("Dead letter {seq} ({service})"),
        html! {
            (dlq_tabs(service))
            p { "Reason: " (text(&d["reason"])) }
            (replay_form(&s, service, &seq))
            pre id="dead-letter" { (json) }
            button type="button" data-copy="dead-letter" { "Copy" }
        },
    )
    .into_response()
}

async fn replay(
    State(state): State<AppState>,
    s: Signed,
    Path((service, seq)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !s.check(&f.csrf) {
        return refused();
    }
    let Some(service) = known_service(&service) else {
        return not_found();
    };
    let path = format!("/dead-letters/{service}/{}/replay", seg(&seq));
    match state
        .api
        .call(s.key(), Method::POST, &path, &[], None)
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/dead-letters/{service}")).into_response(),
        Err(e) => failure(e),
    }
}

async fn purge(
    State(state): State<AppState>,
    s: Signed,
    Path(service): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !s.check(&f.csrf) {
        return refused();
    }
    let Some(service) = known_service(&service) else {
        return not_found();
    };
    match state
        .api
        .call(
            s.key(),
            Method::DELETE,
            &format!("/dead-letters/{service}"),
            &[],
            None,
        )
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/dead-letters/{service}")).into_response(),
        Err(e) => failure(e),
    }
}
