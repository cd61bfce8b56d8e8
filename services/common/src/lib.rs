//! Plumbing shared by every rudder-courier service. No business logic lives here: only
//! configuration, telemetry, connections, the ops endpoints, shutdown and API-key auth
//! (every service authenticates the same workspace keys), the one outbound HTTP client
//! builder (`outbound`: TLS and the SSRF guard for webhooks, data planes and fetch-data), and
//! the automation contract (`automation`: validation and bounds shared by ingress and automations),
//! and the last-writer-wins document store profiles and accounts both keep in Redis (`lww`).

pub mod auth;
pub mod automation;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod deadletters;
pub mod error;
pub mod http;
pub mod keys;
pub mod lists;
pub mod lww;
pub mod nats;
pub mod ops;
pub mod outbound;
pub mod redis;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;

pub use shutdown::Shutdown;
