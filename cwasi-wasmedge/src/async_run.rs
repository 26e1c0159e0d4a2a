//! Runs an embedded peer's `_start` on a thread of libwasmedge's
//! asynchronous invocation, where it serves its callers until it ends or a
//! caller's deadline passes: a cancel sets the executor's stop flag, which
//! the interpreter checks as it runs. (The SDK's own `run_func_with_timeout`
//! instead leaves the interpreter with a `siglongjmp` from a signal handler,
//! skipping its C++ destructors and any lock it holds, in a process that
//! keeps serving afterwards.)

use std::ffi::CStr;
use std::ptr;

use wasmedge_sdk::Instance;
use wasmedge_sys::instance::function::AsFunc as _;
use wasmedge_sys::{AsInstance as _, ffi};

/// How a run ended.
pub(crate) enum Ran {
    /// Returned, or exited (`proc_exit`).
    Ended,
    Trapped(String),
    /// Stopped by a cancel.
    Cancelled,
}

/// How long a cancelled run may take to notice: past it, the run is left
/// to itself (leaked) rather than waited for.
const CANCEL_PATIENCE_MS: u64 = 1000;

/// A peer's `_start`, running.
pub(crate) struct AsyncRun {
    executor: *mut ffi::WasmEdge_ExecutorContext,
    run: *mut ffi::WasmEdge_Async,
    ended: bool,
    /// A cancel was sent (and its patience spent): not waited for again.
    cancelled: bool,
}

// SAFETY: both handles are libwasmedge objects made for use across threads
// (the run executes on a thread of its own; waiting and cancelling from
// another thread is what its API is for); this struct is their one owner.
unsafe impl Send for AsyncRun {}

impl AsyncRun {
    /// Starts `instance`'s `_start`. The caller keeps `instance` (and what
    /// it imports) alive until this run is dropped.
    pub(crate) fn start(instance: &mut Instance) -> anyhow::Result<Self> {
        let start = instance.get_func_mut("_start").map_err(|e| anyhow::anyhow!("no _start: {e}"))?;
        // SAFETY: a new executor with the default configuration only runs the
        // function (the memory limit was fixed when `instance` was made); the
        // function belongs to `instance`, which the caller keeps alive for as
        // long as the run (see `Drop`).
        unsafe {
            let executor = ffi::WasmEdge_ExecutorCreate(ptr::null(), ptr::null_mut());
            anyhow::ensure!(!executor.is_null(), "libwasmedge could not create an executor");
            let run = ffi::WasmEdge_ExecutorAsyncInvoke(executor, start.get_func_raw(), ptr::null(), 0);
            if run.is_null() {
                ffi::WasmEdge_ExecutorDelete(executor);
                anyhow::bail!("libwasmedge could not start the run");
            }
            Ok(Self { executor, run, ended: false, cancelled: false })
        }
    }

    /// How the run ended, if it did (waiting at most `wait_ms`).
    pub(crate) fn ended(&mut self, wait_ms: u64) -> Option<Ran> {
        // SAFETY: `run` is live until drop; waiting and getting its result
        // are what the handle is for.
        unsafe {
            if !ffi::WasmEdge_AsyncWaitFor(self.run, wait_ms) {
                return None;
            }
            self.ended = true;
            Some(outcome(ffi::WasmEdge_AsyncGet(self.run, ptr::null_mut(), 0)))
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Stops the run and waits (a while, once) for it to end.
    pub(crate) fn cancel(&mut self) {
        if !self.ended && !std::mem::replace(&mut self.cancelled, true) {
            // SAFETY: as above.
            unsafe { ffi::WasmEdge_AsyncCancel(self.run) };
            self.ended(CANCEL_PATIENCE_MS);
        }
    }
}

impl Drop for AsyncRun {
    fn drop(&mut self) {
        self.cancel();
        if !self.ended {
            // Still running (blocked in a host call): its thread still uses
            // both handles and the instance; keep them all.
            tracing::error!("an embedded peer ignored its cancel; its run is abandoned");
            return;
        }
        // SAFETY: the run ended; nothing uses the handles any more.
        unsafe {
            ffi::WasmEdge_AsyncDelete(self.run);
            ffi::WasmEdge_ExecutorDelete(self.executor);
        }
    }
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
            return Ran::Cancelled;
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
