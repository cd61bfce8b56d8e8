//! One delivery task and one durable JetStream consumer per workspace (`forwarder-<ws>`), so a
//! dead data plane only ever holds its own workspace's messages (each consumer has its own
//! `max_ack_pending` window), plus the manager that starts, restarts and stops them.
//!
//! - [`reconciler`]: the per-workspace consumers and tasks, kept in line with Redis;
//! - [`pull`]: a task's loop: long-poll, top up for `linger`, hand the batch on;
//! - [`batch`]: messages → RudderStack events → chunks under the byte bound;
//! - [`destination`]: one chunk until it is settled (acked, split, dead-lettered, or paused);
//! - [`circuit`]: backoff and circuit policy;
//! - [`dataplane`]: the HTTP request and the classification of its answer.

pub mod batch;
pub mod circuit;
pub mod dataplane;
pub mod destination;
pub mod pull;
pub mod reconciler;

pub use circuit::{Circuit, Runtime};
pub use dataplane::{PostError, raw_post};
pub use reconciler::{Ctx, consumer_config, consumer_name, filter_subjects};
