//! `/profiles/{user_id}`: Courier's profile API.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rc_common::auth::Workspace;
use serde_json::{Map, Value, json};

use crate::patch::PatchError;
use crate::store::{self, Applied, Reset, Stamp, Write};
use crate::{AppState, ProfilesError};

const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

use rc_common::clock::now_ms;

/// A write refused by the profile size bound answers 413.
fn too_large(applied: Applied, max: usize) -> Result<Applied, ProfilesError> {
    match applied {
        Applied::TooLarge(bytes) => Err(ProfilesError::TooLarge(format!(
            "the profile would be about {bytes} bytes of JSON, more than {max}"
        ))),
        other => Ok(other),
    }
}

fn success() -> Response {
    (StatusCode::OK, Json(json!({"status": "SUCCESS"}))).into_response()
}

fn check_user_id(uid: &str) -> Result<(), ProfilesError> {
    if uid.is_empty() || uid.len() > 1024 {
        return Err(ProfilesError::Invalid(
            "user_id must be 1-1024 characters".into(),
        ));
    }
    Ok(())
}

fn body_object(body: &[u8], key: &str) -> Result<Value, ProfilesError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ProfilesError::Invalid(format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(mut m) => m
            .remove(key)
            .ok_or_else(|| ProfilesError::Invalid(format!("request body must contain \"{key}\""))),
        _ => Err(ProfilesError::Invalid(
            "request body must be a JSON object".into(),
        )),
    }
}

fn profile_object(body: &[u8]) -> Result<Map<String, Value>, ProfilesError> {
    match body_object(body, "profile")? {
        Value::Object(m) => Ok(m),
        _ => Err(ProfilesError::Invalid(
            "\"profile\" must be a JSON object".into(),
        )),
    }
}

async fn announce(state: &AppState, ws: &str, uid: &str, applied: &Applied, cause: &str) {
    if let Applied::Ok {
        profile,
        changed: true,
    } = applied
        && let Err(e) = state
            .publisher
            .profile_updated(ws, uid, profile.as_deref(), "api", cause)
            .await
    {
        // The profile is stored; only the notification is lost (see the README).
        metrics::counter!("profiles_publish_failures_total").increment(1);
        tracing::warn!(workspace = ws, error = %e, "ProfileUpdated not published");
    }
}

pub async fn get_profile(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
) -> Result<Response, ProfilesError> {
    check_user_id(&uid)?;
    let Some(profile) = store::get(&state.redis, &ws, &uid).await? else {
        return Err(ProfilesError::NotFound(format!(
            "profile {uid:?} not found"
        )));
    };
    let profile: Value = serde_json::from_str(&profile)
        .map_err(|e| ProfilesError::Unavailable(format!("stored profile is corrupt: {e}")))?;
    Ok(Json(json!({
        "profile": profile,
        "preferences": {"categories": {}, "notifications": {}}
    }))
    .into_response())
}

/// `x-idempotency-expiration`: epoch milliseconds, epoch seconds, or RFC 3339.
fn idempotency_ttl(headers: &HeaderMap, default_secs: u64) -> Result<u64, ProfilesError> {
    let Some(raw) = headers.get("x-idempotency-expiration") else {
        return Ok(default_secs.clamp(1, MAX_TTL_SECS));
    };
    let raw = raw
        .to_str()
        .map_err(|_| ProfilesError::Invalid("x-idempotency-expiration is not text".into()))?
        .trim();
    let now = now_ms();
    let at_ms = if let Ok(n) = raw.parse::<i64>() {
        if n > 100_000_000_000 { n } else { n * 1000 }
    } else {
        let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                ProfilesError::Invalid(
                    "x-idempotency-expiration must be epoch milliseconds or an RFC 3339 time"
                        .into(),
                )
            })?;
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    };
    if at_ms <= now {
        return Err(ProfilesError::Invalid(
            "x-idempotency-expiration is in the past".into(),
        ));
    }
    Ok((((at_ms - now) / 1000) as u64).clamp(1, MAX_TTL_SECS))
}

pub async fn post_profile(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ProfilesError> {
    check_user_id(&uid)?;
    let profile = profile_object(&body)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ProfilesError::Invalid("Idempotency-Key is not text".into()))?
                .trim()
                .to_string();
            if k.is_empty() || k.len() > 255 {
                return Err(ProfilesError::Invalid(
                    "Idempotency-Key must be 1-255 characters".into(),
                ));
            }
            Some(k)
        }
        None => None,
    };
    let cause = key
        .as_ref()
        .map(|k| format!("idem:{k}"))
        .unwrap_or_else(store::random_tiebreak);
    let mut write = Write::new(
        Stamp::Api {
            now_ms: now_ms(),
            tiebreak: store::tiebreak(&cause),
        },
        store::object_fields(&profile),
    );
    if let Some(k) = &key {
        let ttl = idempotency_ttl(&headers, state.settings.idempotency_ttl_secs)?;
        // Keys are unique per workspace (as Courier's): a retry for the same user replays the
        // first answer (whatever its body, as Courier does); the key reused for another user is
        // refused rather than answered with a success that wrote nothing.
        let owner = rc_common::keys::escape(&uid).to_string();
        if let Err(other) = store::claim_idempotency_key(&state.redis, &ws, k, &owner, ttl).await? {
            tracing::debug!(user = %other, "Idempotency-Key reused for another user");
            return Err(ProfilesError::Idempotency(format!(
                "Idempotency-Key {k:?} was already used in this workspace for another user"
            )));
        }
        write.marker = Some((
            store::idem_key(&ws, &uid, k),
            ttl,
            r#"{"status":"SUCCESS"}"#.into(),
        ));
    }
    let max = state.settings.max_profile_bytes;
    write.max_bytes = max;
    let applied = too_large(store::apply(&state.redis, &ws, &uid, &write).await?, max)?;
    if let Applied::Duplicate(first) = &applied {
        let body: Value =
            serde_json::from_str(first).unwrap_or_else(|_| json!({"status": "SUCCESS"}));
        let mut response = (StatusCode::OK, Json(body)).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    announce(&state, &ws, &uid, &applied, &cause).await;
    Ok(success())
}

/// The API write that makes `profile` the whole profile (null values dropped), bounded by
/// `max_bytes`, with its fresh cause.
fn replacement(profile: Map<String, Value>, max_bytes: usize) -> (Write, String) {
    let cause = store::random_tiebreak();
    let fields = profile
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let mut write = Write::new(
        Stamp::Api {
            now_ms: now_ms(),
            tiebreak: cause.clone(),
        },
        fields,
    );
    write.reset = Reset::Replace;
    write.max_bytes = max_bytes;
    (write, cause)
}

pub async fn put_profile(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ProfilesError> {
    check_user_id(&uid)?;
    let profile = profile_object(&body)?;
    let max = state.settings.max_profile_bytes;
    let (write, cause) = replacement(profile, max);
    let applied = too_large(store::apply(&state.redis, &ws, &uid, &write).await?, max)?;
    announce(&state, &ws, &uid, &applied, &cause).await;
    Ok(success())
}

pub async fn patch_profile(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ProfilesError> {
    check_user_id(&uid)?;
    let patch = body_object(&body, "patch")?;
    // Counted before the operations are decoded one by one.
    if let Some(list) = patch.as_array()
        && list.len() > state.settings.max_patch_ops
    {
        return Err(ProfilesError::TooLarge(format!(
            "a patch holds at most {} operations, not {}",
            state.settings.max_patch_ops,
            list.len()
        )));
    }
    let ops: Vec<crate::patch::Operation> = serde_json::from_value(patch).map_err(|e| {
        ProfilesError::Invalid(format!(
            "\"patch\" must be a list of JSON Patch operations: {e}"
        ))
    })?;
    if ops.is_empty() {
        return Ok(success());
    }
    // Optimistic: patch what is stored, write it back only if nothing changed meanwhile.
    for _ in 0..8 {
        let current = store::get(&state.redis, &ws, &uid).await?;
        let doc: Value = match &current {
            Some(p) => serde_json::from_str(p).map_err(|e| {
                ProfilesError::Unavailable(format!("stored profile is corrupt: {e}"))
            })?,
            None => json!({}),
        };
        let patched = crate::patch::apply(&doc, &ops, state.settings.patch_limits()).map_err(
            |e| match e {
                PatchError::Invalid(m) => ProfilesError::Invalid(m),
                PatchError::TooLarge(m) => ProfilesError::TooLarge(m),
            },
        )?;
        let Value::Object(patched) = patched else {
            return Err(ProfilesError::Invalid(
                "the patched profile must stay a JSON object".into(),
            ));
        };
        let max = state.settings.max_profile_bytes;
        let (mut write, cause) = replacement(patched, max);
        write.expect = Some(current);
        let applied = too_large(store::apply(&state.redis, &ws, &uid, &write).await?, max)?;
        if applied == Applied::Conflict {
            continue;
        }
        announce(&state, &ws, &uid, &applied, &cause).await;
        return Ok(success());
    }
    Err(ProfilesError::Conflict(
        "the profile kept changing while the patch was applied; retry".into(),
    ))
}

pub async fn delete_profile(
    State(state): State<AppState>,
    Workspace(ws): Workspace,
    Path(uid): Path<String>,
) -> Result<Response, ProfilesError> {
    check_user_id(&uid)?;
    let cause = store::random_tiebreak();
    let mut write = Write::new(
        Stamp::Api {
            now_ms: now_ms(),
            tiebreak: cause.clone(),
        },
        Vec::new(),
    );
    write.reset = Reset::Delete;
    let max = state.settings.max_profile_bytes;
    write.max_bytes = max;
    let applied = too_large(store::apply(&state.redis, &ws, &uid, &write).await?, max)?;
    announce(&state, &ws, &uid, &applied, &cause).await;
    Ok(success())
}
