//! Page 6: look up a profile and its tenants; a tenant's members.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::AppState;
use crate::api::{ApiError, seg};

#[derive(Deserialize)]
pub(super) struct ProfileQuery {
    user: Option<String>,
    cursor: Option<String>,
}

/// A read that answers `Null` for the API's 404 (no such profile yet is not an error here).
async fn get_or_null(
    state: &AppState,
    s: &Signed,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Value, ApiError> {
    match state.api.get(s.key(), path, query).await {
        Err(ApiError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(Value::Null),
        other => other,
    }
}

/// The next page's cursor of an accounts list (`has_more` + `cursor`).
fn more(list: &Value) -> Option<String> {
    list["has_more"]
        .as_bool()
        .unwrap_or(false)
        .then(|| cursor_of(&list["cursor"]))
        .flatten()
}

pub(super) async fn lookup(
    State(state): State<AppState>,
    s: Signed,
    Query(q): Query<ProfileQuery>,
) -> Response {
    let user = q.user.as_deref().map(str::trim).unwrap_or("");
    let found = if user.is_empty() {
        None
    } else {
        let query = list_query(&[], q.cursor.as_deref());
        let (profile, tenants) = (
            format!("/profiles/{}", seg(user)),
            format!("/users/{}/tenants", seg(user)),
        );
        Some(ok_or_page!(tokio::try_join!(
            get_or_null(&state, &s, &profile, &[]),
            get_or_null(&state, &s, &tenants, &query),
        )))
    };
    page(
        &s,
        "Profiles and tenants",
        html! {
            form method="get" action="/console/profiles" {
                label for="user" { "User id" }
                input id="user" name="user" value=(user) required;
                button type="submit" { "Look up" }
            }
            @if let Some((profile, tenants)) = found {
                h2 { "Profile of " (user) }
                @if profile.is_null() { p { "No profile for this user." } } @else { (json_block("profile", &profile)) }
                p { a href={ "/console/messages?recipient=" (seg(user)) } { "Messages" } " · "
                    a href={ "/console/inbox?user=" (seg(user)) } { "Inbox" } " · "
                    a href={ "/console/runs?recipient=" (seg(user)) } { "Runs" } }
                h2 { "Tenants" }
                (list_table(tenants["items"].as_array().map_or(&[][..], Vec::as_slice), &[
                    ("Tenant", &|t| { let id = field(t, "tenant_id"); html! { a href={ "/console/tenants/" (seg(&id)) } { (id) } } }),
                    ("Membership profile", &|t| html! { (field(t, "profile")) }),
                ], "Member of no tenant.", next_href("/console/profiles", &[("user", user)], more(&tenants))))
            }
        },
    )
    .into_response()
}

pub(super) async fn tenant(
    State(state): State<AppState>,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    let path = format!("/tenants/{}", seg(&id));
    let (users, query) = (
        format!("{path}/users"),
        list_query(&[], q.cursor.as_deref()),
    );
    let (tenant, members) = ok_or_page!(tokio::try_join!(
        state.api.get(s.key(), &path, &[]),
        state.api.get(s.key(), &users, &query),
    ));
    page(
        &s,
        &format!("Tenant {id}"),
        html! {
            (json_block("tenant", &tenant))
            h2 { "Members" }
            (list_table(members["items"].as_array().map_or(&[][..], Vec::as_slice), &[
                ("User", &|m| { let u = field(m, "user_id"); html! { a href={ "/console/profiles?user=" (seg(&u)) } { (u) } } }),
                ("Membership profile", &|m| html! { (field(m, "profile")) }),
            ], "No members.", next_href(&format!("/console/tenants/{}", seg(&id)), &[], more(&members))))
        },
    )
    .into_response()
}
