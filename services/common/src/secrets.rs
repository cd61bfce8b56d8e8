//! Secrets at rest (provider credentials, RudderStack write keys): AES-256-GCM with a key from
//! config (`RC_SECRETS__ENCRYPTION_KEY`, base64 of 32 bytes), and masking for display.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SecretsSettings {
    /// Base64 of 32 random bytes (`openssl rand -base64 32`). Required by services that store
    /// secrets; never logged.
    pub encryption_key: String,
}

impl std::fmt::Display for SecretsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsSettings { encryption_key: <redacted> }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secrets.encryption_key must be base64 of exactly 32 bytes (set RC_SECRETS__ENCRYPTION_KEY)"
    )]
    BadKey,
    #[error("stored secret is malformed or was sealed with another key")]
    Undecryptable,
}

const VERSION: &str = "v1:";

/// Seals and opens secrets. Cheap to clone.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    pub fn from_settings(settings: &SecretsSettings) -> Result<Self, SecretError> {
        let key = STANDARD
            .decode(settings.encryption_key.trim())
            .map_err(|_| SecretError::BadKey)?;
        if key.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(Self {
            aead: Aes256Gcm::new_from_slice(&key).map_err(|_| SecretError::BadKey)?,
        })
    }

    /// A fresh random key, base64 (for tests and `make run`).
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// `v1:<base64(nonce ‖ ciphertext)>`. `context` (e.g. the workspace id) is bound as
    /// associated data, so a sealed value copied to another workspace does not open.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption does not fail for in-memory buffers");
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{VERSION}{}", STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let raw = sealed
            .strip_prefix(VERSION)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|r| r.len() > 12)
            .ok_or(SecretError::Undecryptable)?;
        let (nonce, ciphertext) = raw.split_at(12);
        let plain = self
            .aead
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| SecretError::Undecryptable)
    }
}

/// For display: the last four characters only (`••••f9a2`); short secrets are fully hidden.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n <= 8 {
        return "••••".to_string();
    }
    let tail: String = secret.chars().skip(n - 4).collect();
    format!("••••{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::from_settings(&SecretsSettings {
            encryption_key: Cipher::generate_key(),
        })
        .unwrap()
    }

    #[test]
    fn round_trip_and_context_binding() {
        let c = cipher();
        let sealed = c.seal("2AbcWriteKey", "ws-a");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("2AbcWriteKey"));
        assert_eq!(c.open(&sealed, "ws-a").unwrap(), "2AbcWriteKey");
        assert!(c.open(&sealed, "ws-b").is_err(), "bound to its workspace");
        assert!(cipher().open(&sealed, "ws-a").is_err(), "other key");
        assert_ne!(c.seal("x", "w"), c.seal("x", "w"), "random nonce");
    }

    #[test]
    fn bad_keys_are_refused() {
        for key in ["", "not base64!", "c2hvcnQ="] {
            let s = SecretsSettings {
                encryption_key: key.into(),
            };
            assert!(Cipher::from_settings(&s).is_err());
        }
    }

    #[test]
    fn masking_shows_only_a_tail() {
        assert_eq!(mask("1234567890abcdef"), "••••cdef");
        assert_eq!(mask("short"), "••••");
    }
}
