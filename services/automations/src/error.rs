//! The automations error type: the one API error of every service (`rc_common::error`).

pub use rc_common::error::ApiError as AutomationError;
