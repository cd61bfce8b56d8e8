//! From pulled messages to request bodies: each message mapped to its RudderStack event (or
//! to nothing, or to a reason to dead-letter it), then cut into chunks under the byte bound.

use std::collections::VecDeque;

use async_nats::jetstream::Message;
use prost::Message as _;
use rc_common::subjects::{self, kinds};
use time::OffsetDateTime;

use super::dataplane::BODY_OVERHEAD;
use crate::mapping;

/// RudderStack's gateway limit on a decompressed body.
pub const GATEWAY_MAX_BYTES: usize = 4_096_000;

/// A message and its RudderStack event, serialized.
pub struct Item {
    pub message: Message,
    pub json: Vec<u8>,
}

/// The serialized RudderStack event for a COURIER message; `Ok(None)` for a kind this
/// integration does not send, `Err(reason)` for a message that can never be sent.
pub fn event_json(
    subject: &str,
    payload: &[u8],
    now: OffsetDateTime,
) -> Result<Option<Vec<u8>>, String> {
    let kind = subjects::parse_courier(subject).map_or("", |s| s.kind);
    let event = if kind.starts_with("message.") {
        let ev = rc_proto::MessageEvent::decode(payload)
            .map_err(|e| format!("undecodable MessageEvent: {e}"))?;
        mapping::message_event(&ev, now)
    } else if kind == kinds::PROFILE_UPDATED {
        let ev = rc_proto::ProfileUpdated::decode(payload)
            .map_err(|e| format!("undecodable ProfileUpdated: {e}"))?;
        mapping::profile_event(&ev, now)
    } else if kind == kinds::TENANT_UPDATED {
        let ev = rc_proto::TenantUpdated::decode(payload)
            .map_err(|e| format!("undecodable TenantUpdated: {e}"))?;
        mapping::tenant_event(&ev, now)
    } else {
        None
    };
    match event {
        Some(e) if !mapping::has_identity(&e) => {
            Err("event has neither userId nor anonymousId".to_string())
        }
        Some(e) => Ok(Some(serde_json::to_vec(&e).expect("serializable"))),
        None => Ok(None),
    }
}

/// The request-body bound actually used: the setting, kept between 1 kB and the gateway's limit.
pub fn max_body_bytes(setting: usize) -> usize {
    setting.clamp(1_000, GATEWAY_MAX_BYTES - 64)
}

/// Cuts `items` (in order) into chunks whose `{"batch":[…]}` body stays within `max_bytes`;
/// an item larger than the bound on its own gets a chunk of its own (the data plane decides).
pub fn chunks<T>(
    items: impl IntoIterator<Item = T>,
    max_bytes: usize,
    len: impl Fn(&T) -> usize,
) -> VecDeque<Vec<T>> {
    let mut queue = VecDeque::new();
    let mut current: Vec<T> = Vec::new();
    let mut size = BODY_OVERHEAD;
    for item in items {
        let n = len(&item) + 1;
        if !current.is_empty() && size + n > max_bytes {
            queue.push_back(std::mem::take(&mut current));
            size = BODY_OVERHEAD;
        }
        size += n;
        current.push(item);
    }
    if !current.is_empty() {
        queue.push_back(current);
    }
    queue
}

/// Halves a chunk the data plane found too large; `None` for a single item.
pub fn split<T>(mut chunk: Vec<T>) -> Result<(Vec<T>, Vec<T>), Vec<T>> {
    if chunk.len() < 2 {
        return Err(chunk);
    }
    let b = chunk.split_off(chunk.len() / 2);
    Ok((chunk, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::dataplane::batch_body;

    #[test]
    fn chunks_stay_within_the_bound_and_keep_order() {
        let items: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'1'; 10 + i as usize]).collect();
        let max = 200;
        let queue = chunks(items.clone(), max, |i| i.len());
        assert!(queue.len() > 1);
        for chunk in &queue {
            let body = batch_body(chunk.iter().map(Vec::as_slice));
            assert!(body.len() <= max || chunk.len() == 1, "{}", body.len());
        }
        let flat: Vec<Vec<u8>> = queue.into_iter().flatten().collect();
        assert_eq!(flat, items, "nothing lost or reordered");
    }

    #[test]
    fn an_oversized_item_goes_alone() {
        let items = vec![vec![0u8; 10], vec![0u8; 500], vec![0u8; 10]];
        let queue = chunks(items, 100, |i| i.len());
        let sizes: Vec<usize> = queue.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert!(chunks(Vec::<Vec<u8>>::new(), 100, |i| i.len()).is_empty());
    }

    #[test]
    fn the_bound_never_passes_the_gateway_limit() {
        assert_eq!(max_body_bytes(0), 1_000);
        assert_eq!(max_body_bytes(500_000), 500_000);
        assert!(max_body_bytes(usize::MAX) < GATEWAY_MAX_BYTES);
    }

    #[test]
    fn split_halves_and_refuses_a_single_item() {
        assert_eq!(split(vec![1, 2, 3]), Ok((vec![1], vec![2, 3])));
        assert_eq!(split(vec![1]), Err(vec![1]));
    }

    #[test]
    fn messages_map_to_events_or_reasons() {
        let now = OffsetDateTime::now_utc();
        let ev = rc_proto::MessageEvent {
            workspace_id: "acme".into(),
            message_id: "m-1".into(),
            status: "DELIVERED".into(),
            recipient: "u_1".into(),
            ..Default::default()
        };
        let json = event_json("courier.acme.message.delivered", &ev.encode_to_vec(), now)
            .unwrap()
            .expect("an event");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["event"], "Message Delivered");
        assert_eq!(v["userId"], "u_1");
        // Not something the forwarder sends.
        assert_eq!(event_json("courier.acme.run.completed", b"", now), Ok(None));
        // Hostile payloads are reasons, not panics.
        let err = event_json("courier.acme.message.sent", b"\xff\xff\xff", now).unwrap_err();
        assert!(err.starts_with("undecodable MessageEvent"), "{err}");
        assert!(event_json("courier.acme.profile.updated", b"\x0a\xff", now).is_err());
    }
}
