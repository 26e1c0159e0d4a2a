use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cwasi_engine::{MemoryBudget, MemoryShare};
use wasmtime::ResourceLimiter;

/// Draws an instance's linear memory from its container's budget and
/// remembers a denied growth, so that the trap that usually follows (an
/// allocator aborting) can be reported as what it is.
#[derive(Debug)]
pub(crate) struct GuestLimiter {
    share: MemoryShare,
    denied: DeniedGrowth,
}

/// The size an instance asked for when it was refused (0: never refused),
/// readable after its store is gone (a peer's store lives in its future).
#[derive(Debug, Clone, Default)]
pub(crate) struct DeniedGrowth(Arc<AtomicU64>);

impl DeniedGrowth {
    pub(crate) fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|&wanted| wanted > 0)
    }

    /// Why a trap after a refused growth happened, or `None`.
    pub(crate) fn explain(&self, budget: &MemoryBudget) -> Option<String> {
        let (wanted, limit) = (self.get()?, budget.limit()?);
        Some(format!(
            "it asked for {wanted} bytes of linear memory while the container's instances held {} \
             of its {limit}-byte limit (linux.resources.memory.limit)",
            budget.used()
        ))
    }
}

impl GuestLimiter {
    pub(crate) fn new(budget: &MemoryBudget) -> Self {
        Self { share: budget.share(), denied: DeniedGrowth::default() }
    }

    pub(crate) fn denied(&self) -> &DeniedGrowth {
        &self.denied
    }

    pub(crate) fn budget(&self) -> &MemoryBudget {
        self.share.budget()
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            // The engine refuses it anyway: take nothing from the budget.
            return Ok(false);
        }
        if self.share.grow(current as u64, desired as u64) {
            return Ok(true);
        }
        self.denied.0.store(desired as u64, Ordering::Release);
        Ok(false)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!("a memory growth failed after it was allowed: {error:?}");
        self.share.grow_failed();
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
