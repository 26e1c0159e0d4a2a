//! Deadlines for code that runs inside a caller's call (embedded peers).
//!
//! The engine counts epochs: a ticker thread advances them every
//! [`EPOCH_TICK`], and compiled code checks the count at function entries
//! and loop heads. An embedded peer's store asks at every tick whether its
//! call's deadline has passed and traps with [`DeadlinePassed`] if so; a
//! peer blocked in a host call (a sleep) is stopped when the call returns.

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

/// Advances `engine`'s epoch every tick for as long as the process lives.
pub(crate) fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new().name("cwasi-epoch".into()).spawn(move || {
        while let Some(engine) = engine.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    })?;
    Ok(())
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
