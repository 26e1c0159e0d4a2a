//! The WasmEdge engine of cwasi.
//!
//! [`WasmEdgeEngine`] runs a WASI preview-1 module on libwasmedge (built
//! without LLVM: the interpreter), with the guest's args, env, preopens and
//! stdio, the `cwasi` imports, a page cap for the memory limit, and embedded
//! peers. Like the wasmtime engine it only moves bytes between guest memory
//! and `cwasi-comm`.
//!
//! Differences from the wasmtime engine: no compiled-module cache (the
//! interpreter compiles nothing); an embedded peer instance runs on a thread
//! of libwasmedge's asynchronous invocation and parks between calls in
//! `serve_next` on that thread (wasmtime suspends a fiber instead), so that
//! a call's deadline can stop it (`async_run`); as WasmEdge has no
//! resource-limiter callback, each module's `memory.grow` is routed through
//! an import that asks the container's memory budget (`growth_gate`), and a
//! growth the engine itself refuses is read from libwasmedge's log
//! (`grow_refusals`).

mod async_run;
mod embedded;
mod grow_refusals;
mod growth_gate;
mod host_api;
mod run;
mod setup;

pub use run::WasmEdgeEngine;
