//! Quokka's engine: runs an app thread-per-core, shared-nothing.
//!
//! An app is built once with the scale-free API in [`app`] (sources, stateless steps, `key_by`,
//! a stateful step, more steps, and again `key_by` and a stateful step as often as needed, then
//! sinks; event time, timers and windows). The engine starts one glommio executor per core; each
//! core owns a set of *slots* ([`hash`]: `stable_hash(key) % n_slots`) and every state entity in
//! them ([`store`]). A routing table maps each slot to its core; a keyed message is applied on
//! the owner core, reached by a function call, a batch on a bounded channel, or a link to
//! another node. [`metrics`] gathers per-core counters and source-to-sink latency.
//!
//! Modules depend downward only, in this order (a tidy test, `layers`, enforces it):
//! - pure parts, no I/O: `hash`, `routing`, `step` (what app steps see), `time` (timers,
//!   watermarks), [`window`], `sink_buffer`, `metrics`, [`store`], [`archive`], `planner`,
//!   [`autoscale`] (the policy that grows and shrinks the cores),
//!   `migration` (the per-core protocol, a change's steps and the coordinator's step window),
//!   `checkpoint` (manifests, barrier alignment);
//! - `dataflow`: the app erased into per-connection and per-core objects; [`app`]: the builder;
//! - `runtime`: one node's cores (executors, channels, the messages cores exchange);
//! - [`cluster`]: links between nodes and their wire format;
//! - `node`: the [`Engine`], its coordinator, status, joining and leaving.
//!
//! The engine knows no app (apps live in `quokka-apps`) and does its socket work through
//! `quokka-io`.

pub mod app;
pub mod archive;
pub mod autoscale;
mod checkpoint;
pub mod cluster;
mod dataflow;
pub mod hash;
#[cfg(test)]
mod layers;
pub mod metrics;
mod migration;
mod node;
mod planner;
mod routing;
mod runtime;
mod sink_buffer;
mod step;
pub mod store;
mod time;
pub mod window;

pub use app::{
    App, Context, DecodeError, Emit, Message, Open, State, Time, Window, Windowed, Windows,
};
pub use cluster::Ending;
pub use metrics::Summary;
pub use node::{
    ChangeError, ChangeReport, ChangeTally, CheckpointError, CheckpointInfo, CheckpointStatus,
    Engine, JoinError, JoinRefusal, LostReport, MigrationProgress, NodeInfo, RecoveryError,
    RecoveryStatus, SourcesClosed, StartError, StateDirError, Status, MAX_SLOTS_PER_STEP,
};
pub use quokka_io::file::FileFormat;
pub use runtime::{auto_cores, default_cores, usable_cpus, Config, FileInput, Guarantee, Input};
