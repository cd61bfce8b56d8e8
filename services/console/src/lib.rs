//! The console: server-rendered pages over the services' public HTTP APIs (a client of them
//! only: it never reads Redis or NATS). Sessions hold the workspace API key server-side; the
//! browser only ever gets a random session id.

pub mod api;
pub mod pages;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use rc_common::Shutdown;
use rc_common::ops::Readiness;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

pub const SERVICE: &str = "console";

pub use rc_common::service::BoxError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ConsoleSettings {
    /// Base URL of the public API (the front door), e.g. `http://127.0.0.1:8000`.
    pub api_url: String,
    /// The URL RudderStack should post to, shown on the integration page (default: `api_url`).
    pub public_url: Option<String>,
    /// Adds `Secure` to the session cookie (set it whenever the console is served over https).
    pub cookie_secure: bool,
    /// A session ends this long after sign-in.
    pub session_ttl_ms: u64,
    /// Sessions kept at most (the oldest is dropped past it): memory stays bounded.
    pub max_sessions: usize,
    /// Bound on one API call.
    pub api_timeout_ms: u64,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:8000".into(),
            public_url: None,
            cookie_secure: false,
            session_ttl_ms: 8 * 3600 * 1000,
            max_sessions: 10_000,
            api_timeout_ms: 5_000,
        }
    }
}

// `nats`/`redis` sections exist because every service shares one settings shape; the console
// connects to neither.
rc_common::settings! {
    port: 8086;
    console: ConsoleSettings,
}

#[derive(Clone)]
pub struct AppState {
    pub api: api::Api,
    pub sessions: Arc<session::Sessions>,
    pub settings: Arc<ConsoleSettings>,
}

impl AppState {
    pub fn new(settings: ConsoleSettings) -> Result<Self, BoxError> {
        Ok(Self {
            api: api::Api::new(
                &settings.api_url,
                Duration::from_millis(settings.api_timeout_ms),
            )?,
            sessions: Arc::new(session::Sessions::new(
                Duration::from_millis(settings.session_ttl_ms),
                settings.max_sessions,
            )),
            settings: Arc::new(settings),
        })
    }
}

/// Runs the console until `shutdown` triggers.
pub async fn run(
    settings: Settings,
    listener: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), BoxError> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(settings.http.listen).await?,
    };
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "Listening");
    let state = AppState::new(settings.console.clone())?;
    let app = app(
        state,
        Readiness::new(shutdown.clone()),
        Duration::from_millis(settings.http.request_timeout_ms),
    );
    rc_common::http::serve(
        listener,
        app,
        &settings.http,
        shutdown,
        Duration::from_millis(settings.shutdown.drain_timeout_ms),
    )
    .await?;
    Ok(())
}

/// Scripts and styles from this origin only, no inline script, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn app(state: AppState, readiness: Readiness, request_timeout: Duration) -> Router {
    pages::router(state)
        .merge(rc_common::ops::router(readiness))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn(rc_common::ops::track_http))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
}
