//! The WasmEdge engine of cwasi.
//!
//! [`WasmEdgeEngine`] runs a WASI preview-1 module on libwasmedge (built
//! without LLVM: the interpreter), with the guest's args, env, preopens and
//! stdio, the `cwasi` imports, a page cap for the memory limit, and embedded
//! peers. Like the wasmtime engine it only moves bytes between guest memory
//! and `cwasi-comm`.
//!
//! Differences from the wasmtime engine: no compiled-module cache (the
//! interpreter compiles nothing); an embedded peer is instantiated per call,
//! runs on a thread of libwasmedge's asynchronous invocation so that a
//! call's deadline can stop it (`timed_run`), and its reply is copied once
//! more (WasmEdge cannot park a guest between host calls); as WasmEdge has no
//! resource-limiter callback, a denied memory growth is read from
//! libwasmedge's log (`grow_refusals`).

mod embedded;
mod grow_refusals;
mod host_api;
mod run;
mod timed_run;

pub use run::WasmEdgeEngine;
