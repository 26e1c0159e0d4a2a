//! `cwasi-comm` owns everything about one function talking to another.
//!
//! ```text
//! calling: guest import (engine) ──> GuestHost ──> Router ──> Transport ─┬─ embedded: an instance in the caller's engine
//!                                                                         ├─ local:    shared memory + futex wake-ups (this node)
//!                                                                         └─ remote:   Redis (another node)
//! serving: source (in-process | FunctionServer: local + remote) ──> GuestHost::serve_next ──> handler
//! ```
//!
//! A function's identity and its rights to call peers come from the pod's
//! `cwasi.io/*` annotations ([`FunctionConfig`]). [`Router`] resolves where a
//! peer runs (the [`NodeRegistry`] tells which functions serve on this node)
//! and picks a [`Transport`], each of which says whether it reaches the peer;
//! a guest's [`HostParts`] build its router once, with the embedded peers
//! its engine runs. [`FunctionServer`] is the serving side: it
//! registers the function and hands requests to the guest's handler.
//! [`GuestHost`] implements the guest ABI (`cwasi-abi`) on plain byte slices,
//! so engines only bounds-check guest pointers and move bytes. Nothing in this
//! crate knows about WebAssembly.

pub mod annotations;
mod channel;
mod error;
mod guest_host;
mod host_parts;
pub mod idle_peers;
pub mod in_process;
pub mod local;
mod log_budget;
pub mod pages;
mod payload;
mod peer_hosts;
pub mod registry;
pub mod remote;
mod router;
mod server;
pub mod stats;
pub mod threads;
pub mod trace;

pub use annotations::{AnnotationError, FunctionConfig, Mode, PeerPolicy};
pub use channel::{PendingReply, Transport};
pub use error::CallError;
pub use guest_host::{CALL_EVENTS_TARGET, GuestHost};
pub use host_parts::HostParts;
pub use payload::Payload;
pub use peer_hosts::PeerHosts;
pub use registry::{NodeRegistry, Registration};
pub use router::{DEFAULT_CALL_TIMEOUT, Router};
pub use server::{FunctionServer, IncomingRequest};
pub use trace::TraceContext;

/// The largest payload cwasi carries (guest lengths are 32-bit).
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;
