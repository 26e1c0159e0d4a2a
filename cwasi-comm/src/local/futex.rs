//! Futex wait/wake on counters that live in memory shared between processes.
//!
//! Memory ordering: `publish` and `bump` are release stores (SeqCst) of the
//! value that hand data to whoever acquires it (`wait_until` loads it with
//! Acquire or SeqCst): the rings' `head`/`tail` (ring.rs) and the doorbell
//! (listener.rs). Sleeping needs more than release/acquire: a publisher that
//! stores the value then reads `waiters`, and a waiter that raises `waiters`
//! then reads the value, must not both miss the other's write (store then
//! load on each side, the Dekker pattern). All four accesses are SeqCst, so
//! they fall in one total order: either the publisher sees the waiter and
//! wakes it, or the waiter sees the new value and does not sleep. FUTEX_WAIT
//! itself re-checks the value in the kernel, atomically with going to sleep.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A 32-bit counter that another process can wait on, with its waiter count.
#[repr(C, align(64))]
pub(crate) struct SharedCounter {
    pub(crate) value: AtomicU32,
    waiters: AtomicU32,
}

impl SharedCounter {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self { value: AtomicU32::new(0), waiters: AtomicU32::new(0) }
    }
}

/// How long a waiter spins before it sleeps: long enough to catch a peer
/// answering a small call on the other core, short enough not to burn a core.
/// `CWASI_SPIN_US` overrides it (0 = sleep at once), for measurements.
const DEFAULT_SPIN: Duration = Duration::from_micros(60);
pub const SPIN_ENV: &str = "CWASI_SPIN_US";

fn spin_budget() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        std::env::var(SPIN_ENV).ok().and_then(|v| v.parse().ok()).map_or(DEFAULT_SPIN, Duration::from_micros)
    })
}

/// Polls `poll` for a while (the spin budget) before a waiter sleeps;
/// `Some` as soon as it answers.
pub(crate) fn spin_for<T>(mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let spin_until = Instant::now() + spin_budget();
    let mut spins = 0u32;
    loop {
        if let Some(found) = poll() {
            return Some(found);
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            if Instant::now() > spin_until {
                return None;
            }
            // More runnable threads than cores (a fan-out to several
            // functions): let the one we wait for have this core.
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

impl SharedCounter {
    /// Stores `value` and wakes sleeping waiters, if any (no syscall otherwise).
    pub(crate) fn publish(&self, value: u32) {
        // Ordering: SeqCst store (release for the data it hands over, paired
        // with the Acquire/SeqCst loads in `wait_until`), then SeqCst load of
        // `waiters`, paired with the waiter's SeqCst `fetch_add` then load
        // (module comment: neither side may miss the other).
        self.value.store(value, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            wake_all(&self.value);
        }
    }

    /// Adds one and wakes waiters.
    pub(crate) fn bump(&self) {
        // Ordering: as in `publish`; the SeqCst read-modify-write releases
        // what the bumping side wrote before (a ring's published `head`) to a
        // waiter that acquires the new value.
        self.value.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            wake_all(&self.value);
        }
    }

    /// Waits until `ready(value)`; between sleeps of at most `tick` it calls
    /// `check`, whose error ends the wait (peer gone, shutdown).
    pub(crate) fn wait_until<E>(
        &self,
        ready: impl Fn(u32) -> bool,
        tick: Duration,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<u32, E> {
        // Ordering: Acquire, paired with the release in `publish`/`bump`:
        // what the other side wrote before publishing `v` is visible to our
        // caller once `ready(v)`.
        if let Some(v) = spin_for(|| Some(self.value.load(Ordering::Acquire)).filter(|&v| ready(v))) {
            return Ok(v);
        }
        loop {
            // Ordering: SeqCst `fetch_add` then SeqCst load, paired with the
            // SeqCst store then load of `waiters` in `publish`/`bump`.
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let v = self.value.load(Ordering::SeqCst);
            if !ready(v) {
                wait(&self.value, v, tick);
            }
            // Ordering: SeqCst, only a count (no data rides on it).
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            // Ordering: Acquire, paired with the release in `publish`/`bump`.
            let v = self.value.load(Ordering::Acquire);
            if ready(v) {
                return Ok(v);
            }
            check()?;
        }
    }
}

fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `word` is a live, aligned AtomicU32 for the whole call and the
    // kernel only reads it; `timeout` outlives the call. Not FUTEX_PRIVATE:
    // the word lives in memory shared with another process. Spurious or
    // interrupted returns are fine, the caller re-checks the value.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned AtomicU32; FUTEX_WAKE does not access
    // memory beyond looking up waiters on that address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn waiter_sees_publish_from_another_thread() {
        let counter = Arc::new(SharedCounter::new());
        let publisher = {
            let counter = counter.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                counter.publish(5);
            })
        };
        let seen = counter.wait_until(|v| v == 5, Duration::from_secs(5), || Ok::<(), ()>(())).unwrap();
        assert_eq!(seen, 5);
        publisher.join().unwrap();
    }

    #[test]
    fn check_error_ends_the_wait() {
        let counter = SharedCounter::new();
        let mut ticks = 0;
        let result = counter.wait_until(
            |v| v == 1,
            Duration::from_millis(1),
            || {
                ticks += 1;
                if ticks == 3 { Err("gone") } else { Ok(()) }
            },
        );
        assert_eq!(result, Err("gone"));
    }
}
