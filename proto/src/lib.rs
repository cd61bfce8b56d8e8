//! Generated types of the public NATS contract (see `proto/*.proto` and the README).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/rudder_courier.v1.rs"));
}

pub use prost::Message;

/// The protobuf package of every message here.
pub const PACKAGE: &str = "rudder_courier.v1";

/// The encoded `FileDescriptorSet` these types were generated from (imports included), for
/// reading a payload by its message name.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
pub use v1::{
    Envelope, EventType, MessageEvent, MessageRequest, ProfileUpdateRequest, ProfileUpdated,
    RunEvent, TenantUpdated,
};

impl EventType {
    /// The lower-case name used in subjects (`events.<ws>.<name>`).
    pub fn subject_token(self) -> &'static str {
        match self {
            EventType::Identify => "identify",
            EventType::Track => "track",
            EventType::Group => "group",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Alias => "alias",
            EventType::Unspecified => "unspecified",
        }
    }

    /// The type named by an event's `type` field, matched case-insensitively as RudderStack
    /// does; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            EventType::Identify,
            EventType::Track,
            EventType::Group,
            EventType::Page,
            EventType::Screen,
            EventType::Alias,
        ]
        .into_iter()
        .find(|t| t.subject_token().eq_ignore_ascii_case(name))
    }

    /// Whether events of this type are named (track `event`, page / screen `name`), so the
    /// catalog and the mappings key them by that name.
    pub fn is_named(self) -> bool {
        matches!(self, EventType::Track | EventType::Page | EventType::Screen)
    }
}
