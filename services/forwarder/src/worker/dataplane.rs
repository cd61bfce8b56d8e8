//! The HTTP client side of a data plane: one gzip'd, Basic-authenticated `POST /v1/batch` and
//! the classification of its answer.

use std::io::Write;
use std::time::Duration;

/// What the data plane said to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// 413: the batch is split (or a single event dead-lettered).
    TooLarge(String),
    /// Will not work until the integration changes (bad write key, wrong URL, refused address):
    /// the destination is paused.
    Refused(String),
    /// This batch will never be accepted: dead-lettered.
    Rejected(String),
    /// Transient: retried with backoff (and `Retry-After` as a minimum).
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

impl Answer {
    /// The `outcome` label of `forwarder_dataplane_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::TooLarge(_) => "too_large",
            Answer::Refused(_) => "refused",
            Answer::Rejected(_) => "rejected",
            Answer::Retry { .. } => "retry",
        }
    }

    /// Classifies an HTTP answer (`text` is cut to 512 characters for messages).
    pub fn classify(status: u16, text: &str, after: Option<Duration>) -> Answer {
        let short: String = text.chars().take(512).collect();
        let what = format!("data plane answered {status}: {}", short.trim());
        match status {
            200..=299 => Answer::Ok,
            413 => Answer::TooLarge(short),
            401 | 404 => Answer::Refused(what),
            408 | 429 | 500..=599 => Answer::Retry { error: what, after },
            _ => Answer::Rejected(what),
        }
    }
}

/// `{"batch":[e1,e2,…]}` from already serialized events.
pub fn batch_body<'a>(events: impl ExactSizeIterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let size: usize = events.clone().map(|e| e.len() + 1).sum::<usize>() + BODY_OVERHEAD;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"batch\":[");
    for (i, event) in events.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

/// Bytes of `{"batch":[` + `]}`.
pub const BODY_OVERHEAD: usize = 12;

pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body).expect("in-memory write");
    enc.finish().expect("in-memory write")
}

use rc_common::backoff::retry_after;

/// `POST <url>` with gzip and Basic auth; the data plane's answer, classified.
pub async fn post_batch(http: &reqwest::Client, to: &Target<'_>, body: &[u8]) -> Answer {
    match raw_post(http, to, body).await {
        Ok((status, text, after)) => Answer::classify(status, &text, after),
        // The SSRF guard's refusal lasts until the URL (or the setting) changes: pause.
        Err(blocked @ PostError::Blocked(_)) => Answer::Refused(blocked.to_string()),
        Err(PostError::Transport(error)) => Answer::Retry { error, after: None },
    }
}

/// Why a data-plane request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The outbound guard refused the address (see `rc_common::outbound`).
    #[error("data plane address refused: {0}")]
    Blocked(String),
    #[error("{0}")]
    Transport(String),
}

/// Where a batch goes.
pub struct Target<'a> {
    /// `…/v1/batch`.
    pub url: &'a str,
    pub write_key: &'a str,
    /// `outbound.allow_private_networks`: off, a literal private IP is refused before connecting.
    pub allow_private_networks: bool,
}

/// One request; `(status, body, Retry-After)` or why there was no answer.
pub async fn raw_post(
    http: &reqwest::Client,
    to: &Target<'_>,
    body: &[u8],
) -> Result<(u16, String, Option<Duration>), PostError> {
    let url = url::Url::parse(to.url)
        .map_err(|e| PostError::Transport(format!("data plane URL is invalid: {e}")))?;
    // Literal IPs never reach the guard's resolver: checked here, before any connection.
    rc_common::outbound::check_destination(&url, to.allow_private_networks)
        .map_err(|b| PostError::Blocked(b.to_string()))?;
    let response = http
        .post(url)
        .basic_auth(to.write_key, Some(""))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .body(gzip(body))
        .send()
        .await
        .map_err(|e| {
            if let Some(blocked) = rc_common::outbound::is_blocked(&e) {
                return PostError::Blocked(blocked.to_string());
            }
            let cause = rc_common::outbound::root_cause(&e);
            PostError::Transport(if e.is_timeout() {
                "data plane request timed out".to_string()
            } else if e.is_connect() {
                format!("data plane connection failed: {cause}")
            } else {
                format!("data plane request failed: {cause}")
            })
        })?;
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    Ok((status, text, after))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn answers_are_classified_by_status() {
        assert_eq!(Answer::classify(200, "", None), Answer::Ok);
        assert_eq!(Answer::classify(204, "", None), Answer::Ok);
        assert!(matches!(Answer::classify(413, "big", None), Answer::TooLarge(b) if b == "big"));
        for s in [401, 404] {
            assert!(
                matches!(Answer::classify(s, "no", None), Answer::Refused(_)),
                "{s}"
            );
        }
        let after = Some(Duration::from_secs(7));
        for s in [408, 429, 500, 503, 599] {
            match Answer::classify(s, " busy ", after) {
                Answer::Retry { error, after: a } => {
                    assert_eq!(error, format!("data plane answered {s}: busy"));
                    assert_eq!(a, after);
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        for s in [400, 403, 422, 302] {
            assert!(
                matches!(Answer::classify(s, "", None), Answer::Rejected(_)),
                "{s}"
            );
        }
    }

    #[test]
    fn a_hostile_answer_body_is_cut() {
        let huge = "x".repeat(1 << 20);
        match Answer::classify(400, &huge, None) {
            Answer::Rejected(m) => assert!(m.len() < 600, "{}", m.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_body_is_a_batch_and_gzip_round_trips() {
        let events: [&[u8]; 2] = [br#"{"a":1}"#, br#"{"b":2}"#];
        let body = batch_body(events.iter().copied());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"batch": [{"a": 1}, {"b": 2}]}));
        assert_eq!(batch_body(std::iter::empty::<&[u8]>()), br#"{"batch":[]}"#);
        assert_eq!(batch_body(std::iter::empty::<&[u8]>()).len(), BODY_OVERHEAD);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
