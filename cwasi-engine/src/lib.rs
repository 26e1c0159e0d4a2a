//! The contract between the shim and a WebAssembly engine.
//!
//! The shim turns an OCI bundle into a [`GuestSpec`]; an [`Engine`] runs it
//! with WASI preview 1 and reports how the guest ended ([`GuestExit`]).
//! Engines compile a module once and keep it in a [`ModuleCache`] keyed by
//! the module's content hash.

mod cache;
pub mod guest_abi;
pub mod guest_memory;
mod memory_budget;
mod pinned_dir;
mod spec;

pub use cache::{CachedArtifact, ModuleCache};
pub use cwasi_comm::{GuestHost, HostParts};
pub use memory_budget::{DeniedGrowth, MemoryBudget, MemoryShare};
pub use pinned_dir::PinnedDir;
pub use spec::{EmbeddedModule, GuestExit, GuestSpec, Preopen};

/// A WebAssembly engine that runs WASI preview-1 guests.
pub trait Engine {
    /// Short name used in logs and cache paths (`wasmtime`, `wasmedge`).
    fn name(&self) -> &'static str;

    /// Runs the guest to completion on the calling thread. The host built
    /// from `host` (with the embedded peers the engine runs, if any) serves
    /// the guest's `cwasi` imports (calling peers, serving requests).
    ///
    /// An `Err` means the guest could not be started (unreadable or invalid
    /// module, missing export); everything the guest itself does, traps
    /// included, is a [`GuestExit`].
    fn run(&self, guest: &GuestSpec, host: HostParts) -> anyhow::Result<GuestExit>;
}
