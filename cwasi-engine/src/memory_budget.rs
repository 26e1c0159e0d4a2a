//! One memory limit for everything a container runs.
//!
//! A container's guest, its handler instances (`cwasi.io/concurrency`) and
//! its embedded peers each have their own linear memory, but the container
//! has one limit (`linux.resources.memory.limit`). Each instance draws on one
//! [`MemoryBudget`] through its own [`MemoryShare`]: a growth that would take
//! the container past its limit is refused (the guest sees `memory.grow`
//! return -1), whichever instance asks, and an instance that ends gives its
//! memory back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The container's memory limit and what its instances hold of it. Clones
/// share the budget.
#[derive(Debug, Clone, Default)]
pub struct MemoryBudget {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// `None`: no limit.
    limit: Option<u64>,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self { shared: Arc::new(Shared { limit, used: AtomicU64::new(0) }) }
    }

    pub fn limit(&self) -> Option<u64> {
        self.shared.limit
    }

    /// Bytes the container's instances hold now.
    pub fn used(&self) -> u64 {
        self.shared.used.load(Ordering::Acquire)
    }

    /// A new instance's account.
    pub fn share(&self) -> MemoryShare {
        MemoryShare { budget: self.clone(), held: 0, pending: 0, denied: DeniedGrowth::default() }
    }

    fn take(&self, bytes: u64) -> bool {
        let Some(limit) = self.shared.limit else {
            self.shared.used.fetch_add(bytes, Ordering::AcqRel);
            return true;
        };
        self.shared
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.shared.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one instance holds of the budget, given back when it is dropped
/// (the instance's store ended).
#[derive(Debug)]
pub struct MemoryShare {
    budget: MemoryBudget,
    held: u64,
    /// Taken for the last growth allowed, until the engine reports that it
    /// failed after all.
    pending: u64,
    denied: DeniedGrowth,
}

/// The size an instance asked for when the budget refused it (0: never),
/// readable after the instance is gone: the trap that usually follows a
/// refusal (an allocator aborting) can then be reported as what it is.
#[derive(Debug, Clone, Default)]
pub struct DeniedGrowth(Arc<AtomicU64>);

impl DeniedGrowth {
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|&wanted| wanted > 0)
    }

    /// Why a trap after a refused growth happened, or `None`.
    pub fn explain(&self, budget: &MemoryBudget) -> Option<String> {
        let (wanted, limit) = (self.get()?, budget.limit()?);
        Some(format!(
            "it asked for {wanted} bytes of linear memory while the container's instances held {} \
             of its {limit}-byte limit (linux.resources.memory.limit)",
            budget.used()
        ))
    }
}

impl MemoryShare {
    /// Whether one of the instance's memories may grow from `current` to
    /// `desired` bytes (its first allocation counts as a growth from 0).
    pub fn grow(&mut self, current: u64, desired: u64) -> bool {
        let more = desired.saturating_sub(current);
        if !self.budget.take(more) {
            self.denied.0.store(desired, Ordering::Release);
            return false;
        }
        self.held += more;
        self.pending = more;
        true
    }

    /// The last growth allowed did not happen (the engine failed it).
    pub fn grow_failed(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.held -= pending;
        self.budget.give_back(pending);
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The growth the budget refused this instance, if it did.
    pub fn denied(&self) -> &DeniedGrowth {
        &self.denied
    }
}

impl Drop for MemoryShare {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn instances_share_one_limit_and_give_back_when_they_end() {
        let budget = MemoryBudget::new(Some(64 * MIB));
        let (mut guest, mut peer_a, mut peer_b) = (budget.share(), budget.share(), budget.share());
        assert!(guest.grow(0, 2 * MIB));
        assert!(peer_a.grow(0, 26 * MIB));
        assert!(peer_b.grow(0, 26 * MIB));
        assert_eq!(budget.used(), 54 * MIB);
        // A third of 26 MiB does not fit, whoever asks.
        let mut peer_c = budget.share();
        assert!(!peer_c.grow(0, 26 * MIB));
        assert_eq!(peer_c.denied().get(), Some(26 * MIB));
        assert!(peer_c.denied().explain(&budget).unwrap().contains("of its 67108864-byte limit"));
        assert_eq!(peer_a.denied().get(), None);
        assert!(!guest.grow(2 * MIB, 28 * MIB));
        assert!(peer_c.grow(0, 10 * MIB));
        assert_eq!(budget.used(), 64 * MIB);
        drop(peer_a);
        assert_eq!(budget.used(), 38 * MIB);
        assert!(guest.grow(2 * MIB, 28 * MIB));
    }

    #[test]
    fn a_growth_the_engine_failed_is_given_back() {
        let budget = MemoryBudget::new(Some(10 * MIB));
        let mut share = budget.share();
        assert!(share.grow(0, MIB));
        assert!(share.grow(MIB, 9 * MIB));
        share.grow_failed();
        assert_eq!(budget.used(), MIB);
        assert!(share.grow(MIB, 10 * MIB));
        drop(share);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn no_limit_counts_without_refusing() {
        let budget = MemoryBudget::new(None);
        let mut share = budget.share();
        assert!(share.grow(0, u64::MAX / 2));
        assert_eq!(budget.used(), u64::MAX / 2);
    }
}
