//! The wasmtime engine of cwasi.
//!
//! [`WasmtimeEngine`] runs a WASI preview-1 module: it loads the compiled
//! module from the cache (or compiles and stores it), builds the guest's WASI
//! context from the [`cwasi_engine::GuestSpec`], caps linear memory and calls
//! the entry point. It moves bytes and nothing else: no transport code here.

mod deadline;
mod embedded;
mod host_api;
mod limits;
mod module_loader;
mod preopen;
mod run;

pub use run::WasmtimeEngine;
