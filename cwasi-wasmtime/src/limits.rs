use cwasi_engine::{DeniedGrowth, MemoryBudget, MemoryShare};
use wasmtime::ResourceLimiter;

/// What one table element costs the host (a function reference: a pointer).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// Draws an instance's linear memory and tables from its container's budget and
/// remembers a denied growth, so that the trap that usually follows (an
/// allocator aborting) can be reported as what it is.
#[derive(Debug)]
pub(crate) struct GuestLimiter {
    share: MemoryShare,
}

impl GuestLimiter {
    pub(crate) fn new(budget: &MemoryBudget) -> Self {
        Self { share: budget.share() }
    }

    pub(crate) fn denied(&self) -> &DeniedGrowth {
        self.share.denied()
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
        Ok(self.share.grow(current as u64, desired as u64))
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!("a memory growth failed after it was allowed: {error:?}");
        self.share.grow_failed();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        // A table's elements are host memory too: a guest growing a table
        // by millions of entries draws on the same budget.
        let bytes = |elements: usize| elements as u64 * TABLE_ELEMENT_BYTES;
        Ok(self.share.grow(bytes(current), bytes(desired)))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!("a table growth failed after it was allowed: {error:?}");
        self.share.grow_failed();
        Ok(())
    }
}
