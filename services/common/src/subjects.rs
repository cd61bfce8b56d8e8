//! Every stream, subject and consumer name of the public NATS contract, in one place.

/// Inbound events accepted by the ingress: `events.<workspace>.<type>`.
pub const EVENTS_STREAM: &str = "EVENTS";
pub const EVENTS_SUBJECTS: &str = "events.>";
/// Events the platform generates: `courier.<workspace>.<kind>...`.
pub const COURIER_STREAM: &str = "COURIER";
pub const COURIER_SUBJECTS: &str = "courier.>";
/// Dead letters: `dlq.<service>.<workspace>`.
/// Floods moved aside by the shared consumers' fairness (`rc_common::consumer`): work-queue
/// retention, internal (not part of the public contract).
pub const SPILL_STREAM: &str = "SPILL";
pub const SPILL_SUBJECTS: &str = "spill.>";
/// `spill.<durable>.<original subject>`.
pub const SPILL_PREFIX: &str = "spill";

pub const DLQ_STREAM: &str = "DLQ";
pub const DLQ_SUBJECTS: &str = "dlq.>";

/// `events.<workspace>.<type>`.
pub fn event_subject(workspace: &str, event_type: &str) -> String {
    let mut s = String::with_capacity(8 + workspace.len() + event_type.len());
    s.push_str("events.");
    s.push_str(workspace);
    s.push('.');
    s.push_str(event_type);
    s
}

/// `Nats-Msg-Id` for an inbound event: `<workspace>:<message id>`.
pub fn event_msg_id(workspace: &str, message_id: &str) -> String {
    let mut s = String::with_capacity(workspace.len() + 1 + message_id.len());
    s.push_str(workspace);
    s.push(':');
    s.push_str(message_id);
    s
}

/// `courier.<workspace>.<kind>` (kind may hold dots, e.g. `message.delivered`).
pub fn courier_subject(workspace: &str, kind: &str) -> String {
    format!("courier.{workspace}.{kind}")
}

/// COURIER kinds (see proto/courier.proto).
pub mod kinds {
    pub const PROFILE_UPDATED: &str = "profile.updated";
    pub const PROFILE_UPDATE: &str = "profile.update";
    pub const TENANT_UPDATED: &str = "tenant.updated";
    pub const MESSAGE_REQUESTED: &str = "message.requested";
    /// `run.<state>`
    pub fn run(state: &str) -> String {
        format!("run.{state}")
    }
    /// `message.<status lower-case>`
    pub fn message_status(status: &str) -> String {
        format!("message.{}", status.to_ascii_lowercase())
    }
}

/// `events.*.<type>`: one event type of every workspace (a consumer filter).
pub fn events_of_type(event_type: &str) -> String {
    event_subject("*", event_type)
}

/// `courier.*.<kind>`: one COURIER kind of every workspace (a consumer filter).
pub fn courier_of_kind(kind: &str) -> String {
    courier_subject("*", kind)
}

/// A `courier.<workspace>.<kind>` subject, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CourierSubject<'a> {
    pub workspace: &'a str,
    /// May hold dots (`message.delivered`).
    pub kind: &'a str,
}

/// Parses `courier.<workspace>.<kind>`; `None` for any other subject or an empty part.
pub fn parse_courier(subject: &str) -> Option<CourierSubject<'_>> {
    let (workspace, kind) = subject.strip_prefix("courier.")?.split_once('.')?;
    (!workspace.is_empty() && !kind.is_empty()).then_some(CourierSubject { workspace, kind })
}

/// Durable consumer names: one per service consumer, so a rename is one edit here (a renamed
/// durable starts over from the stream's start, so never rename without a migration).
pub mod durables {
    pub const PROFILES_EVENTS: &str = "profiles";
    pub const PROFILES_UPDATES: &str = "profiles-updates";
    pub const ACCOUNTS_EVENTS: &str = "accounts";
    pub const AUTOMATIONS_EVENTS: &str = "automations";
    pub const DELIVERY_REQUESTS: &str = "delivery";

    /// The forwarder's consumer of one workspace: `forwarder-<workspace>`.
    pub fn forwarder(workspace: &str) -> String {
        format!("forwarder-{workspace}")
    }
}

/// `dlq.<service>.<workspace>`.
pub fn dlq_subject(service: &str, workspace: &str) -> String {
    format!("dlq.{service}.{workspace}")
}

/// `filter` (`events.*.identify`, `events.>`) narrowed to one workspace's subjects.
pub fn filter_for_workspace(filter: &str, workspace: &str) -> String {
    match filter.split_once('.') {
        Some((root, rest)) => match rest.split_once('.') {
            Some(("*", tail)) => format!("{root}.{workspace}.{tail}"),
            None if rest == ">" => format!("{root}.{workspace}.>"),
            _ => filter.to_owned(),
        },
        None => filter.to_owned(),
    }
}

/// The workspace token of `events.<ws>.…`, `courier.<ws>.…` or `dlq.<svc>.<ws>`.
pub fn workspace_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match parts.next()? {
        "events" | "courier" => parts.next(),
        "dlq" => parts.nth(1),
        _ => None,
    }
}

/// Dead-letter headers (the payload is the original message, unchanged).
pub mod dlq_headers {
    pub const ORIGINAL_SUBJECT: &str = "Rc-Original-Subject";
    pub const ORIGINAL_SEQUENCE: &str = "Rc-Original-Sequence";
    pub const DELIVERY_COUNT: &str = "Rc-Delivery-Count";
    pub const REASON: &str = "Rc-Reason";
    pub const SERVICE: &str = "Rc-Service";
}

/// Core NATS (no stream): automations replicas tell each other that a workspace's event →
/// automation mappings or templates changed, so their in-memory copies are dropped at once.
/// Internal to the automations service, not part of the public contract.
pub fn config_changed(workspace: &str) -> String {
    format!("{CONFIG_CHANGED_PREFIX}{workspace}")
}

const CONFIG_CHANGED_PREFIX: &str = "automations.config.";

/// Every workspace's [`config_changed`] (the replicas' subscription).
pub const CONFIG_CHANGED_ALL: &str = "automations.config.*";

/// The workspace a [`config_changed`] subject names.
pub fn config_changed_workspace(subject: &str) -> Option<&str> {
    subject.strip_prefix(CONFIG_CHANGED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_and_parsed() {
        assert_eq!(event_subject("acme", "track"), "events.acme.track");
        assert_eq!(event_msg_id("acme", "m1"), "acme:m1");
        assert_eq!(workspace_of("events.acme.track"), Some("acme"));
        assert_eq!(
            filter_for_workspace("events.*.identify", "acme"),
            "events.acme.identify"
        );
        assert_eq!(filter_for_workspace("events.>", "acme"), "events.acme.>");
        assert_eq!(workspace_of("courier.acme.message.sent"), Some("acme"));
        assert_eq!(workspace_of(&dlq_subject("profiles", "acme")), Some("acme"));
        assert_eq!(workspace_of("other.acme"), None);
        assert_eq!(events_of_type("group"), "events.*.group");
        assert_eq!(
            courier_of_kind(kinds::PROFILE_UPDATE),
            "courier.*.profile.update"
        );
        assert_eq!(
            parse_courier("courier.acme.message.delivered"),
            Some(CourierSubject {
                workspace: "acme",
                kind: "message.delivered"
            })
        );
        for bad in [
            "courier.acme",
            "courier..x",
            "courier.acme.",
            "events.acme.track",
            "courierx.a.b",
        ] {
            assert_eq!(parse_courier(bad), None, "{bad}");
        }
    }
}
