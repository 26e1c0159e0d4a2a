//! Runs an embedded peer's `_start` until it ends or a call's deadline
//! passes: through libwasmedge's asynchronous invocation, whose cancel sets
//! the executor's stop flag, which the interpreter checks as it runs. The
//! SDK's own `run_func_with_timeout` instead leaves the interpreter with a
//! `siglongjmp` from a signal handler, skipping its C++ destructors and any
//! lock it holds, in a process that keeps serving afterwards.

use std::ffi::CStr;
use std::ptr;
use std::time::{Duration, Instant};

use wasmedge_sdk::Instance;
use wasmedge_sys::AsInstance as _;
use wasmedge_sys::ffi;
use wasmedge_sys::instance::function::AsFunc as _;

/// How a timed run ended.
pub(crate) enum Ran {
    /// Returned, or ended by the host (`serve_next` after the answer).
    Ended,
    Trapped(String),
    /// Stopped at the deadline.
    TimedOut,
}

/// How long a cancelled run may take to notice: past it, the run is left
/// to itself (leaked) rather than waited for.
const CANCEL_PATIENCE_MS: u64 = 1000;

/// Runs `instance`'s `_start` until `deadline`.
pub(crate) fn run_start_by(instance: &mut Instance, deadline: Instant) -> anyhow::Result<Ran> {
    let start = instance.get_func_mut("_start").map_err(|e| anyhow::anyhow!("no _start: {e}"))?;
    // SAFETY: the function instance belongs to `instance`, which outlives
    // the run: every path below waits for the run to end (or leaks the run
    // and its executor, never freeing what it may still use) before
    // returning. A new executor with the default configuration only runs
    // the function; the memory limit was fixed when `instance` was made.
    unsafe {
        let executor = ffi::WasmEdge_ExecutorCreate(ptr::null(), ptr::null_mut());
        anyhow::ensure!(!executor.is_null(), "libwasmedge could not create an executor");
        let run = ffi::WasmEdge_ExecutorAsyncInvoke(executor, start.get_func_raw(), ptr::null(), 0);
        if run.is_null() {
            ffi::WasmEdge_ExecutorDelete(executor);
            anyhow::bail!("libwasmedge could not start the run");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ended = ffi::WasmEdge_AsyncWaitFor(run, millis(left));
        let ran = if ended {
            outcome(ffi::WasmEdge_AsyncGet(run, ptr::null_mut(), 0))
        } else {
            ffi::WasmEdge_AsyncCancel(run);
            if !ffi::WasmEdge_AsyncWaitFor(run, CANCEL_PATIENCE_MS) {
                // Still running: its thread still uses both; keep them.
                tracing::error!("an embedded peer ignored its cancel at the deadline; its run is abandoned");
                return Ok(Ran::TimedOut);
            }
            Ran::TimedOut
        };
        ffi::WasmEdge_AsyncDelete(run);
        ffi::WasmEdge_ExecutorDelete(executor);
        Ok(ran)
    }
}

/// At least 1 ms: 0 would not wait at all.
fn millis(left: Duration) -> u64 {
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn outcome(result: ffi::WasmEdge_Result) -> Ran {
    // SAFETY: plain accessors of a result value; the message is a static
    // C string owned by libwasmedge.
    unsafe {
        let code = ffi::WasmEdge_ResultGetCode(result);
        if ffi::WasmEdge_ResultOK(result) || code == ffi::WasmEdge_ErrCode_Terminated {
            return Ran::Ended;
        }
        if code == ffi::WasmEdge_ErrCode_Interrupted {
            return Ran::TimedOut;
        }
        let message = ffi::WasmEdge_ResultGetMessage(result);
        let message = if message.is_null() {
            format!("error {code}")
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        Ran::Trapped(message)
    }
}
