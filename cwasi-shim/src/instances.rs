//! The handler instances of one guest process and how they stop.
//!
//! A serving container runs `cwasi.io/concurrency` instances of its module,
//! each on its own thread with its own store, memory and host, all
//! fed by one shared [`FunctionServer`]; they draw on one memory budget,
//! the container's limit, so together they stay inside it. The first
//! instance to end ends the process (and the container) with its status.
//!
//! SIGTERM (a container stop, a rolling restart) drains a serving function:
//! it leaves the node registry, takes no new request, finishes the ones it
//! is handling, then exits with 143 as if the signal had killed it. Callers
//! whose requests were still queued send them to another instance.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use cwasi_comm::{FunctionServer, HostParts};
use cwasi_engine::{GuestSpec, MemoryBudget};
use nix::sys::signal::{SigSet, Signal};

/// How long a stopping function may take to finish the requests it has.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// Runs one instance per host, each on its own thread; returns the exit
/// status of the first to end.
pub fn run_all(guest: &GuestSpec, hosts: Vec<HostParts>, run: fn(&GuestSpec, HostParts) -> i32) -> i32 {
    if hosts.len() == 1 {
        let host = hosts.into_iter().next().expect("one host");
        return run(guest, host);
    }
    let mut share = guest.clone();
    share.shared_memory = Some(MemoryBudget::new(guest.memory_limit));
    let (ended, first) = mpsc::channel();
    for (index, host) in hosts.into_iter().enumerate() {
        let (share, ended) = (share.clone(), ended.clone());
        let spawned = cwasi_comm::threads::spawn(&format!("cwasi-instance-{index}"), move || {
            let status = run(&share, host);
            tracing::info!(instance = index, status, "handler instance ended");
            let _ = ended.send(status);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start handler instance {index}");
            eprintln!("cwasi: cannot start handler instance {index}: {e}");
            return 1;
        }
    }
    first.recv().unwrap_or(1)
}

/// SIGTERM and SIGINT, blocked in the thread that made this (and every
/// thread it starts afterwards) until [`StopSignals::handle`] takes them.
pub struct StopSignals(SigSet);

/// Blocks the stop signals. Call before any other thread starts: a thread
/// started earlier keeps the default action, which would end the process
/// without draining.
pub fn block_stop_signals() -> nix::Result<StopSignals> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    Ok(StopSignals(signals))
}

impl StopSignals {
    /// Makes a stop signal end the guest process gracefully: a serving
    /// function drains first.
    pub fn handle(self, server: Option<Arc<FunctionServer>>) -> std::io::Result<()> {
        let signals = self.0;
        cwasi_comm::threads::spawn("cwasi-stop", move || {
            let signal = loop {
                if let Ok(signal) = signals.wait() {
                    break signal;
                }
            };
            if let Some(server) = server {
                tracing::info!(%signal, "stopping: finishing the requests being handled");
                let finished = server.drain(DRAIN_PATIENCE);
                tracing::info!(finished, "stopped serving");
            }
            exit_now(128 + signal as i32);
        })?;
        Ok(())
    }
}

/// Ends the process at once with `status`, after flushing what the guest
/// wrote and the last call spans.
fn exit_now(status: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    crate::telemetry::otlp::flush();
    // SAFETY: _exit only ends the process. It is used instead of
    // `process::exit` so that no destructor or atexit handler runs while
    // other threads (a guest mid-call) still use what those tear down.
    unsafe { libc::_exit(status) }
}
