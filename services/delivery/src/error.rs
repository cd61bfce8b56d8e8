//! The delivery error type: the one API error of every service (`rc_common::error`), plus how a
//! provider registry failure maps onto it.

pub use rc_common::error::ApiError as DeliveryError;

impl From<crate::providers::RegistryError> for DeliveryError {
    fn from(e: crate::providers::RegistryError) -> Self {
        match e {
            crate::providers::RegistryError::Invalid(m) => DeliveryError::Invalid(m),
            crate::providers::RegistryError::Redis(r) => r.into(),
        }
    }
}
