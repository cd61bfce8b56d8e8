//! HTTP API: providers, messages (Courier shape), history, inbound status reports, inbox.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rc_common::auth::Workspace;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::DeliveryError;
use crate::providers::ProviderInput;
use crate::store::{self, StatusChange};

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DeliveryError> {
    serde_json::from_slice(body).map_err(|e| DeliveryError::Invalid(format!("invalid body: {e}")))
}

pub async fn put_provider(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, DeliveryError> {
    let input: ProviderInput = json_body(&body)?;
    let view = state.registry.put(&ws, &name, input).await?;
    tracing::info!(workspace = %ws, provider = %name, "Provider configured");
    Ok(Json(view))
}

pub async fn get_provider(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(name): Path<String>,
) -> Result<Json<Value>, DeliveryError> {
    state
        .registry
        .get_masked(&ws, &name)
        .await?
        .map(Json)
        .ok_or_else(|| DeliveryError::NotFound(format!("provider {name:?} not found")))
}

pub async fn list_providers(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
) -> Result<Json<Value>, DeliveryError> {
    let items = state.registry.list_masked(&ws).await?;
    Ok(Json(json!({"results": items})))
}

pub async fn delete_provider(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(name): Path<String>,
) -> Result<StatusCode, DeliveryError> {
    if state.registry.delete(&ws, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(DeliveryError::NotFound(format!(
            "provider {name:?} not found"
        )))
    }
}

pub async fn get_message(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, DeliveryError> {
    let record = state
        .store
        .load(&ws, &id)
        .await?
        .ok_or_else(|| DeliveryError::NotFound(format!("message {id:?} not found")))?;
    Ok(Json(record.to_json()))
}

pub async fn get_history(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
) -> Result<Json<Value>, DeliveryError> {
    if state.store.load(&ws, &id).await?.is_none() {
        return Err(DeliveryError::NotFound(format!("message {id:?} not found")));
    }
    let results = state.store.history(&ws, &id).await?;
    Ok(Json(json!({"results": results})))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    recipient: Option<String>,
    status: Option<String>,
    /// Messages with a provider attempt on this channel.
    channel: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Newest first. The cursor is `<enqueued ms>:<message id>` of the last item returned.
pub async fn list_messages(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, DeliveryError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let status = q.status.as_deref().map(str::to_ascii_uppercase);
    if let Some(s) = &status
        && store::rank(s).is_none()
    {
        return Err(DeliveryError::Invalid(format!("unknown status {s:?}")));
    }
    let channel = q.channel.as_deref();
    if let Some(c) = channel
        && !crate::providers::CHANNELS.contains(&c)
    {
        return Err(DeliveryError::Invalid(format!(
            "channel: one of {}",
            crate::providers::CHANNELS.join(", ")
        )));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let (score, id) = c
                .split_once(':')
                .and_then(|(s, id)| Some((s.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| DeliveryError::Invalid("invalid cursor".into()))?;
            Some((score, id))
        }
    };
    let key = match q.recipient.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => store::recipient_index_key(&ws, r),
        None => store::index_key(&ws),
    };
    const CHUNK: usize = 100;
    const MAX_SCAN: usize = 2_000;
    let mut results = Vec::new();
    let mut offset = 0;
    let mut last: Option<(i64, String)> = None;
    let mut exhausted = false;
    'scan: while results.len() < limit && offset < MAX_SCAN {
        let chunk = state
            .store
            .page(&key, cursor.clone(), CHUNK, offset)
            .await?;
        if chunk.is_empty() {
            exhausted = true;
            break;
        }
        offset += chunk.len();
        for (id, score) in chunk {
            // Same score as the cursor: ids at or above the cursor's were already returned.
            if let Some((cs, cid)) = &cursor
                && score == *cs
                && id.as_str() >= cid.as_str()
            {
                continue;
            }
            last = Some((score, id.clone()));
            let Some(record) = state.store.load(&ws, &id).await? else {
                continue;
            };
            if status.as_ref().is_some_and(|s| *s != record.status)
                || channel.is_some_and(|c| !record.providers.iter().any(|p| p.channel == c))
            {
                continue;
            }
            results.push(record.to_json());
            if results.len() == limit {
                break 'scan;
            }
        }
    }
    let next = if exhausted {
        None
    } else {
        last.map(|(s, id)| format!("{s}:{id}"))
    };
    Ok(Json(json!({
        "results": results,
        "paging": {"cursor": next, "more": next.is_some()},
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundEvent {
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A provider or client reports DELIVERED, OPENED, CLICKED or a later UNDELIVERABLE (bounce).
pub async fn post_event(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, DeliveryError> {
    let input: InboundEvent = json_body(&body)?;
    let status: &'static str = match input.status.to_ascii_uppercase().as_str() {
        "DELIVERED" => "DELIVERED",
        "OPENED" => "OPENED",
        "CLICKED" => "CLICKED",
        "UNDELIVERABLE" => "UNDELIVERABLE",
        other => {
            return Err(DeliveryError::Invalid(format!(
                "status {other:?} cannot be reported; use DELIVERED, OPENED, CLICKED or UNDELIVERABLE"
            )));
        }
    };
    let record = state
        .store
        .load(&ws, &id)
        .await?
        .ok_or_else(|| DeliveryError::NotFound(format!("message {id:?} not found")))?;
    if matches!(
        record.status.as_str(),
        "UNROUTABLE" | "UNMAPPED" | "CANCELED"
    ) {
        return Err(DeliveryError::Invalid(format!(
            "message {id:?} was never sent (status {})",
            record.status
        )));
    }
    let change = StatusChange {
        status,
        reason: input.reason.unwrap_or_else(|| {
            if status == "UNDELIVERABLE" {
                "PROVIDER_ERROR".into()
            } else {
                String::new()
            }
        }),
        error: input.error.unwrap_or_default(),
    };
    state
        .store
        .transition(&ws, &id, &[], &[], &[change])
        .await?;
    state
        .publisher
        .publish_pending(&state.store, &ws, &id)
        .await
        .map_err(DeliveryError::Unavailable)?;
    let record = state
        .store
        .load(&ws, &id)
        .await?
        .ok_or_else(|| DeliveryError::NotFound(format!("message {id:?} not found")))?;
    Ok(Json(record.to_json()))
}

#[derive(Debug, Deserialize)]
pub struct InboxQuery {
    limit: Option<isize>,
}

pub async fn get_inbox(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(user): Path<String>,
    Query(q): Query<InboxQuery>,
) -> Result<Response, DeliveryError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (items, order) = crate::send::inbox_keys(&ws, &user);
    let mut conn = state.store.redis();
    let ids: Vec<String> = conn.zrevrange(&order, 0, limit - 1).await?;
    let mut messages = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&items)
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        messages.extend(
            raw.into_iter()
                .flatten()
                .filter_map(|s| serde_json::from_str::<Value>(&s).ok()),
        );
    }
    Ok(Json(json!({"user_id": user, "messages": messages})).into_response())
}

/// `POST /messages/render`: a notification template's channels rendered with sample `data` and
/// `profile` exactly as a message's content is (the console's preview). Reads nothing stored, so
/// it is workspace-scoped by its key alone. Bounded as a stored template is: the whole body at
/// most 64 KiB of JSON, at most 16 channels, each rendering at most 256 KiB.
pub async fn render_preview(
    Workspace(_ws): Workspace,
    body: axum::body::Bytes,
) -> Result<Json<Value>, DeliveryError> {
    let b: Value = json_body(&body)?;
    rc_common::automation::validate_notification(&b).map_err(DeliveryError::Invalid)?;
    let empty = json!({});
    let vars = crate::render::Vars {
        data: b.get("data").unwrap_or(&empty),
        profile: b.get("profile").unwrap_or(&empty),
    };
    let mut out = serde_json::Map::new();
    for (channel, c) in b["channels"].as_object().into_iter().flatten() {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| c.get(*n)?.as_str())
                .map(|t| crate::render::render(t, &vars))
        };
        out.insert(
            channel.clone(),
            json!({"title": field(&["title", "subject"]), "body": field(&["body", "text"])}),
        );
    }
    Ok(Json(json!({ "channels": out })))
}
