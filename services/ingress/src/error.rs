//! The ingress error type: the one API error of every service (`rc_common::error`).
//!
//! RudderStack drops an event for good on 3xx and most 4xx, and retries 408/429/5xx (see
//! `reference/rudderstack.md` §2), so the status must say exactly whether a retry can help.

pub use rc_common::error::{ApiError as IngressError, ItemError as EventError};

impl From<crate::event::Rejection> for IngressError {
    fn from(r: crate::event::Rejection) -> Self {
        match r {
            crate::event::Rejection::Invalid(m) => IngressError::Invalid(m),
            crate::event::Rejection::TooLarge(m) => IngressError::TooLarge(m),
        }
    }
}
