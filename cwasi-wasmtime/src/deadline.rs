//! Deadlines for code that runs inside a caller's call (embedded peers).
//!
//! The engine counts epochs: a ticker thread advances them every
//! [`EPOCH_TICK`] while a peer runs, and compiled code checks the count at function entries
//! and loop heads. An embedded peer's store asks at every tick whether its
//! call's deadline has passed and traps with [`DeadlinePassed`] if so. A
//! peer waiting in a host call (a sleep) is not running code: its caller
//! stops it at the deadline (`embedded`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Engine, StoreContextMut, UpdateDeadline};

/// How often running peers look at their deadline.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// An epoch deadline that is never reached (about 89 000 years of ticks).
pub(crate) const NEVER: u64 = 1 << 48;

/// The trap that ends a peer still running at its call's deadline.
#[derive(Debug)]
pub(crate) struct DeadlinePassed;

impl std::fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call's deadline passed")
    }
}

impl std::error::Error for DeadlinePassed {}

/// Advances an engine's epoch every tick, but only around embedded calls: it
/// parks after a second without one, so a guest process that is idle or
/// runs its own code gets no wake-ups from it (they would steal the core
/// from local-mode waiters), and a busy one pays no syscall per call.
pub(crate) struct EpochTicker {
    shared: Arc<TickerState>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct TickerState {
    /// Embedded calls running now.
    running: AtomicUsize,
    /// Embedded calls started so far: unchanged for a second means idle.
    started: AtomicUsize,
    parked: AtomicBool,
}

/// Keeps the ticker going while it lives.
pub(crate) struct Running<'a>(&'a EpochTicker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ticks without a call before the ticker parks.
const IDLE_TICKS: u32 = 100;

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let (engine, shared) = (engine.weak(), Arc::new(TickerState::default()));
        let state = shared.clone();
        let handle = std::thread::Builder::new().name("cwasi-epoch".into()).spawn(move || {
            let (mut seen, mut idle) = (usize::MAX, 0u32);
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                let started = state.started.load(Ordering::SeqCst);
                idle = if started == seen { idle + 1 } else { 0 };
                seen = started;
                if idle >= IDLE_TICKS {
                    // Announce the park before the last look, so that a call
                    // starting now either is seen here or sees `parked`.
                    state.parked.store(true, Ordering::SeqCst);
                    if state.running.load(Ordering::SeqCst) == 0 {
                        std::thread::park();
                    }
                    state.parked.store(false, Ordering::SeqCst);
                    idle = 0;
                } else {
                    std::thread::sleep(EPOCH_TICK);
                }
            }
        })?;
        Ok(Self { shared, thread: handle.thread().clone() })
    }

    /// Ticks at least until the returned guard is dropped.
    pub(crate) fn running(&self) -> Running<'_> {
        self.shared.started.fetch_add(1, Ordering::SeqCst);
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running(self)
    }
}

/// At each tick: trap once `deadline()` has passed, else check again at the next.
pub(crate) fn check_every_tick<T>(
    deadline: impl Fn(&T) -> Option<Instant> + Send + Sync + 'static,
) -> impl FnMut(StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static {
    move |store| match deadline(store.data()) {
        Some(at) if Instant::now() >= at => Err(wasmtime::Error::new(DeadlinePassed)),
        _ => Ok(UpdateDeadline::Continue(1)),
    }
}
