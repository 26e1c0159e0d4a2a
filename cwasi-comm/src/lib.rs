//! `cwasi-comm` owns everything about one function talking to another.
//!
//! A function's identity and its rights to call peers come from the pod's
//! `cwasi.io/*` annotations ([`FunctionConfig`]). The router, the channels of
//! the three modes (embedded, local, remote) and the wire format build on it.
//! Nothing in this crate knows about WebAssembly: engines hand it bytes.

pub mod annotations;

pub use annotations::{AnnotationError, FunctionConfig, Mode, PeerPolicy};
