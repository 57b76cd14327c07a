//! Quokka's engine: runs an app thread-per-core, shared-nothing.
//!
//! An app is built once with the scale-free API in [`app`] (sources, stateless steps, `key_by`,
//! one stateful step, more steps, a sink). The [`runtime`] starts one glommio executor per core;
//! each core owns a set of *slots* ([`hash`]: `stable_hash(key) % n_slots`) and every state
//! entity in them ([`store`]). A [`routing`] table maps each slot to its core; a keyed message is
//! applied on the owner core, reached by a function call or by a batch on a bounded channel.
//! [`metrics`] gathers per-core counters and source-to-sink latency.
//!
//! The engine knows no app (apps live in `quokka-apps`) and does its socket work through
//! `quokka-io`.

pub mod app;
pub mod archive;
pub mod cluster;
mod dataflow;
pub mod hash;
pub mod metrics;
pub mod migration;
pub mod planner;
pub mod routing;
pub mod runtime;
pub mod store;

pub use app::{App, DecodeError, Emit, Message, State};
pub use cluster::Ending;
pub use metrics::Summary;
pub use runtime::{ChangeError, ChangeReport, Config, Engine, StartError, Status};
