//! `/integrations/rudderstack…`: configuration, test, status and dead letters. Every route
//! authenticates the workspace API key and only touches that workspace's data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use prost::Message as _;
use rc_common::auth::Workspace;
use rc_common::deadletters::{self, DeadLetters, DlqService, PayloadKind, Scope};
use rc_common::secrets::mask;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ForwarderError;
use crate::store::Integration;
use crate::{AppState, mapping, worker};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/integrations/rudderstack",
            get(get_integration)
                .put(put_integration)
                .delete(delete_integration),
        )
        .route("/integrations/rudderstack/test", post(test_integration))
        .route("/integrations/rudderstack/status", get(status))
        // The shared dead-letter API, also under its older integration path.
        .merge(deadletters::routes_at(
            "/integrations/rudderstack/dead-letters",
            DlqService::Forwarder,
            state.ctx.js.clone(),
            state.auth.clone(),
            Some(rudderstack_detail),
        ))
        .merge(deadletters::router_with(
            DlqService::Forwarder,
            state.ctx.js.clone(),
            state.auth.clone(),
            Some(rudderstack_detail),
        ))
        .with_state(state)
}

/// `show` adds the RudderStack event the dead-lettered message would have been sent as.
fn rudderstack_detail(subject: &str, payload: &[u8]) -> Option<(&'static str, Value)> {
    if PayloadKind::of_subject(subject) != PayloadKind::MessageEvent {
        return None;
    }
    let ev = rc_proto::MessageEvent::decode(payload).ok()?;
    let event = mapping::message_event(&ev, time::OffsetDateTime::now_utc());
    Some(("rudderstackEvent", event.unwrap_or(Value::Null)))
}

/// Every field of a PUT may be omitted: it then keeps its stored value (the documented default
/// on the first PUT). A partial PUT never resets what it does not name.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct EventKinds {
    statuses: Option<Vec<String>>,
    profile_updates: Option<bool>,
    tenant_updates: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PutBody {
    write_key: Option<String>,
    data_plane_url: Option<String>,
    enabled: Option<bool>,
    events: EventKinds,
}

fn bad(m: impl Into<String>) -> ForwarderError {
    ForwarderError::Invalid(m.into())
}

/// http(s), a host, no credentials, no query or fragment, and (unless private networks are
/// allowed) no loopback / private / link-local literal address (`rc_common::outbound`).
pub fn validate_url(
    raw: &str,
    allow_http: bool,
    allow_private_networks: bool,
) -> Result<String, ForwarderError> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| bad(format!("dataPlaneUrl is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(bad("dataPlaneUrl must use https")),
        other => {
            return Err(bad(format!(
                "dataPlaneUrl must be http or https, not {other:?}"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("dataPlaneUrl has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "dataPlaneUrl must not contain credentials; send the write key as writeKey",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("dataPlaneUrl must not have a query or fragment"));
    }
    rc_common::outbound::check_url(&url, allow_private_networks)
        .map_err(|e| bad(format!("dataPlaneUrl {e}")))?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn view(ws: &str, integ: &Integration, state: &AppState) -> Value {
    let masked = state
        .ctx
        .cipher
        .as_ref()
        .and_then(|c| c.open(&integ.write_key_sealed, ws).ok())
        .map(|k| mask(&k))
        .unwrap_or_else(|| "••••".into());
    json!({
        "writeKey": masked,
        "dataPlaneUrl": integ.data_plane_url,
        "enabled": integ.enabled,
        "events": {
            "statuses": integ.statuses,
            "profileUpdates": integ.profile_updates,
            "tenantUpdates": integ.tenant_updates,
        },
        "paused": integ.paused_reason.is_some(),
        "pausedReason": integ.paused_reason,
        "updatedAt": integ.updated_at,
    })
}

async fn get_integration(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, ForwarderError> {
    let integ = state.ctx.store.get(&ws).await?.ok_or_else(|| {
        ForwarderError::NotFound("no RudderStack integration is configured".into())
    })?;
    Ok(Json(view(&ws, &integ, &state)))
}

async fn put_integration(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ForwarderError> {
    let body: PutBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid body: {e}")))?;
    let cipher =
        state.ctx.cipher.as_ref().ok_or_else(|| {
            ForwarderError::Unavailable("secrets.encryption_key is not set".into())
        })?;
    let existing = state.ctx.store.get(&ws).await?;
    let url = match (&body.data_plane_url, &existing) {
        (Some(raw), _) => validate_url(
            raw,
            state.ctx.settings.allow_http,
            state.ctx.outbound.allow_private_networks,
        )?,
        (None, Some(e)) => e.data_plane_url.clone(),
        (None, None) => return Err(bad("dataPlaneUrl is required")),
    };
    let sealed = match (body.write_key.as_deref().map(str::trim), &existing) {
        (Some(k), _) if !k.is_empty() => {
            if k.len() > 256 || k.chars().any(|c| c.is_control() || c == ':') {
                return Err(bad("writeKey is malformed"));
            }
            cipher.seal(k, &ws)
        }
        (_, Some(e)) => e.write_key_sealed.clone(),
        _ => return Err(bad("writeKey is required")),
    };
    let statuses = match body.events.statuses {
        None => match &existing {
            Some(e) => e.statuses.clone(),
            None => mapping::SENDABLE_STATUSES
                .iter()
                .map(|(s, _)| s.to_string())
                .collect(),
        },
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for s in list {
                let up = s.trim().to_ascii_uppercase();
                if mapping::event_name(&up).is_none() {
                    return Err(bad(format!(
                        "events.statuses: {s:?} is not sent; use SENT, DELIVERED, OPENED, CLICKED, UNDELIVERABLE, UNROUTABLE"
                    )));
                }
                if !out.contains(&up) {
                    out.push(up);
                }
            }
            out
        }
    };
    let kept = |new: Option<bool>, old: fn(&Integration) -> bool, default: bool| {
        new.or(existing.as_ref().map(old)).unwrap_or(default)
    };
    let enabled = kept(body.enabled, |e| e.enabled, true);
    let profile_updates = kept(body.events.profile_updates, |e| e.profile_updates, false);
    let tenant_updates = kept(body.events.tenant_updates, |e| e.tenant_updates, false);
    if statuses.is_empty() && !profile_updates && !tenant_updates {
        return Err(bad("nothing to send: choose at least one status or kind"));
    }
    let integ = Integration {
        write_key_sealed: sealed,
        data_plane_url: url,
        enabled,
        statuses,
        profile_updates,
        tenant_updates,
        // A PUT is the fix for a refused key: it resumes.
        paused_reason: None,
        updated_at: mapping::rfc3339(time::OffsetDateTime::now_utc()),
        version: existing.as_ref().map_or(1, |e| e.version + 1),
    };
    // The consumer exists before the answer: events published after it are forwarded.
    state
        .ctx
        .ensure_consumer(&ws, &integ)
        .await
        .map_err(|e| ForwarderError::Unavailable(format!("nats: {e}")))?;
    state.ctx.store.put(&ws, &integ).await?;
    state.ctx.store.set_field(&ws, "paused_reason", "").await;
    if let Err(err) = state.ctx.reconcile().await {
        tracing::warn!(workspace = %ws, error = %err, "Reconcile after PUT failed; the loop retries");
    }
    tracing::info!(workspace = %ws, enabled = integ.enabled, "RudderStack integration saved");
    Ok(Json(view(&ws, &integ, &state)))
}

async fn delete_integration(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<StatusCode, ForwarderError> {
    let existed = state.ctx.store.delete(&ws).await?;
    let _ = state.ctx.reconcile().await;
    state.ctx.delete_consumer(&ws).await;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ForwarderError::NotFound(
            "no RudderStack integration is configured".into(),
        ))
    }
}

async fn test_integration(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, ForwarderError> {
    let integ = state.ctx.store.get(&ws).await?.ok_or_else(|| {
        ForwarderError::NotFound("no RudderStack integration is configured".into())
    })?;
    let key = state
        .ctx
        .cipher
        .as_ref()
        .and_then(|c| c.open(&integ.write_key_sealed, &ws).ok())
        .ok_or_else(|| ForwarderError::Unavailable("the stored write key does not open".into()))?;
    let nonce = format!("{:016x}", rand::random::<u64>());
    let event = mapping::test_event(time::OffsetDateTime::now_utc(), &nonce);
    let body = serde_json::to_vec(&json!({"batch": [event]})).expect("serializable");
    let url = format!("{}/v1/batch", integ.data_plane_url);
    Ok(Json(
        match worker::raw_post(
            &state.ctx.http,
            &worker::dataplane::Target {
                url: &url,
                write_key: &key,
                allow_private_networks: state.ctx.outbound.allow_private_networks,
            },
            &body,
        )
        .await
        {
            Ok((status, text, _)) => json!({
                "ok": (200..300).contains(&status),
                "status": status,
                "body": text.chars().take(1024).collect::<String>(),
                "messageId": event["messageId"],
            }),
            Err(err) => json!({"ok": false, "status": null, "error": err.to_string()}),
        },
    ))
}

async fn status(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, ForwarderError> {
    let integ = state.ctx.store.get(&ws).await?.ok_or_else(|| {
        ForwarderError::NotFound("no RudderStack integration is configured".into())
    })?;
    let stats = state.ctx.store.stats(&ws).await?;
    let num = |k: &str| {
        stats
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let text = |k: &str| stats.get(k).filter(|v| !v.is_empty()).cloned();
    let (pending, ack_pending) = state.ctx.pending(&ws).await.unwrap_or((0, 0));
    let circuit = state.ctx.runtime(&ws).circuit();
    let dead_letters = DeadLetters::new(state.ctx.js.clone())
        .count(Scope {
            service: DlqService::Forwarder,
            workspace: Some(&ws),
        })
        .await
        .unwrap_or(0);
    let state_name = if !integ.enabled {
        "disabled"
    } else if integ.paused_reason.is_some() {
        "paused"
    } else {
        "active"
    };
    Ok(Json(json!({
        "state": state_name,
        "pausedReason": integ.paused_reason,
        "delivered": num("delivered"),
        "failed": num("failed"),
        "pending": pending + ack_pending as u64,
        "pendingInStream": pending,
        "pendingUnacked": ack_pending,
        "deadLetters": dead_letters,
        "lastError": text("last_error"),
        "lastErrorAt": text("last_error_at"),
        "lastDeliveredAt": text("last_delivered_at"),
        "circuit": circuit.as_str(),
    })))
}

#[cfg(test)]
mod tests {
    use super::validate_url;

    #[test]
    fn data_plane_urls_are_validated() {
        assert_eq!(
            validate_url("https://acme.dataplane.rudderstack.com/", false, false).unwrap(),
            "https://acme.dataplane.rudderstack.com"
        );
        assert!(validate_url("http://127.0.0.1:8080", true, true).is_ok());
        // The SSRF guard: literal private addresses need outbound.allow_private_networks.
        for private in [
            "https://127.0.0.1:8080",
            "https://10.0.0.5",
            "https://169.254.169.254",
            "https://[::1]",
            "https://localhost:8080",
        ] {
            let err = validate_url(private, true, false).unwrap_err().to_string();
            assert!(err.contains("may not reach"), "{private}: {err}");
        }
        for bad in [
            "http://127.0.0.1:8080",
            "ftp://x.example",
            "https://key:@x.example",
            "https://u:p@x.example",
            "https://x.example/?writeKey=1",
            "nonsense",
        ] {
            assert!(validate_url(bad, false, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_settings_accept_only_https() {
        let s = crate::ForwarderSettings::default();
        let err = validate_url("http://dp.example.com", s.allow_http, false).unwrap_err();
        assert!(err.to_string().contains("must use https"), "{err}");
        assert!(validate_url("https://dp.example.com", s.allow_http, false).is_ok());
    }
}
