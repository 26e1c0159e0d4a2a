//! Threads that log as the thread that started them did.

use std::io;
use std::thread::JoinHandle;

/// Spawns a named thread inside the current `tracing` span, so that its log
/// lines carry the same context (in a guest process: the container and the
/// function) as its parent's.
pub fn spawn<F, T>(name: &str, body: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || span.in_scope(body))
}
