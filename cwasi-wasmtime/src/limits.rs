use wasmtime::ResourceLimiter;

/// Caps linear memory and remembers a denied growth, so that the trap that
/// usually follows (an allocator aborting) can be reported as what it is.
#[derive(Debug, Default)]
pub(crate) struct GuestLimiter {
    memory_limit: Option<usize>,
    /// The size the guest asked for when it was refused.
    pub(crate) denied_growth: Option<usize>,
}

impl GuestLimiter {
    pub(crate) fn new(memory_limit: Option<u64>) -> Self {
        Self { memory_limit: memory_limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)), denied_growth: None }
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.memory_limit
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        match self.memory_limit {
            Some(limit) if desired > limit => {
                self.denied_growth = Some(desired);
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
