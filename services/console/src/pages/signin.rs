//! Sign-in and sign-out.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::*;
use crate::AppState;
use crate::api::ApiError;

pub(super) async fn signin_form(State(state): State<AppState>) -> Response {
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
pub(super) struct SigninForm {
    api_key: String,
    csrf: String,
}

pub(super) async fn signin(
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

pub(super) async fn signout(
    State(state): State<AppState>,
    Posted { s, .. }: Posted<TokenForm>,
) -> Response {
    state.sessions.remove(&s.id);
    let mut resp = Redirect::to("/console/signin").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, COOKIE, "", Some(0)));
    resp
}
