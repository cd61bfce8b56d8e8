//! In-memory sessions: a random id (the cookie) → the workspace API key and a per-session CSRF
//! token. The key stays in this process; a restart signs everyone out, which is the price of
//! never sending the key back to the browser, even encrypted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

pub const COOKIE: &str = "rc_console";
/// The sign-in form's double-submit token (there is no session yet to hold one).
pub const SIGNIN_COOKIE: &str = "rc_console_signin";

#[derive(Clone)]
pub struct Session {
    pub api_key: String,
    pub csrf: String,
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex: a session id or a CSRF token.
pub fn token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Constant-time comparison of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for a verified key; answers its id.
    pub fn create(&self, api_key: String) -> String {
        let id = token();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                api_key,
                csrf: token(),
                expires: now + self.ttl,
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let s = Sessions::new(Duration::from_secs(60), 2);
        let a = s.create("ka".into());
        let b = s.create("kb".into());
        let c = s.create("kc".into());
        assert!(s.get(&a).is_none(), "the oldest is dropped past the bound");
        assert_eq!(s.get(&b).unwrap().api_key, "kb");
        assert_eq!(s.get(&c).unwrap().api_key, "kc");
        s.remove(&c);
        assert!(s.get(&c).is_none());
        let expired = Sessions::new(Duration::ZERO, 2);
        let id = expired.create("k".into());
        assert!(expired.get(&id).is_none());
    }

    #[test]
    fn tokens_compare() {
        let t = token();
        assert_eq!(t.len(), 64);
        assert!(same(&t, &t.clone()));
        assert!(!same(&t, &token()));
        assert!(!same(&t, "short"));
    }
}
