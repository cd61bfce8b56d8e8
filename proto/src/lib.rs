//! Generated types of the public NATS contract (see `proto/*.proto` and the README).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/rudder_courier.v1.rs"));
}

pub use prost::Message;
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
            EventType::Unspecified => "unspecified",
        }
    }
}
