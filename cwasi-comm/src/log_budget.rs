//! A cap on the lines a guest's failed calls write: a guest looping on a
//! refused call (microseconds each) must not flood the node's log.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lines per second a guest's failures may write; the rest are counted and
/// the count goes out with the next line written.
const PER_SECOND: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

pub(crate) struct LogBudget {
    window_start: Cell<Instant>,
    written: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogBudget {
    pub(crate) fn new() -> Self {
        Self { window_start: Cell::new(Instant::now()), written: Cell::new(0), suppressed: Cell::new(0) }
    }

    /// `Some(lines suppressed since the last one written)` when a line may
    /// be written now; `None` (and counted) when not.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window_start.get()) >= WINDOW {
            self.window_start.set(now);
            self.written.set(0);
        }
        if self.written.get() < PER_SECOND {
            self.written.set(self.written.get() + 1);
            Some(self.suppressed.replace(0))
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_its_count_goes_out_with_the_next_window() {
        let budget = LogBudget::new();
        let start = budget.window_start.get();
        let allowed = (0..1000).filter(|_| budget.allow_at(start).is_some()).count();
        assert_eq!(allowed, PER_SECOND as usize);
        assert_eq!(budget.allow_at(start + WINDOW), Some(1000 - u64::from(PER_SECOND)));
        assert_eq!(budget.allow_at(start + WINDOW), Some(0));
    }
}
