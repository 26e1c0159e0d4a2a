//! Which memory growths WasmEdge refused at the memory limit.
//!
//! WasmEdge has no resource-limiter callback: a `memory.grow` past the
//! configured page limit just returns -1, and the guest usually aborts
//! (`unreachable`) some instructions later, often well below the limit when
//! it asked for a large block. The one trace of the refusal is the error
//! libwasmedge logs in `MemoryInstance::growPage`, so its log goes to
//! [`on_log`] instead of stdout (the guest's own stream), and a refusal is
//! noted for the thread that ran the growth (the guest's), and counted for
//! all (an embedded peer's runs on a thread of its own).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmedge_sys::ffi;

/// libwasmedge 0.17's message when a growth passes the configured page limit.
const REFUSED_GROWTH: &str = "Memory Instance: Memory grow page failed, exceeded limited";

thread_local! {
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Refusals on any thread: an embedded peer runs on a thread of
/// libwasmedge's own (`async_run`), whose notes its caller cannot read.
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// Routes libwasmedge's errors to [`on_log`] (and nothing to stdout).
pub(crate) fn watch() {
    // SAFETY: `on_log` matches `WasmEdge_LogCallback_t` and never unwinds;
    // both calls only swap libwasmedge's global logger.
    unsafe {
        ffi::WasmEdge_LogSetCallback(Some(on_log));
        ffi::WasmEdge_LogSetErrorLevel();
    }
}

/// Whether a growth was refused on this thread since the last call; clears it.
pub(crate) fn take() -> bool {
    REFUSED.with(|r| r.replace(false))
}

/// Refusals so far, on every thread: compared before and after a run on
/// another thread. (A refusal of a guest running at the same time counts
/// too; it only changes the wording of an error.)
pub(crate) fn count() -> u64 {
    REFUSALS.load(Ordering::Relaxed)
}

unsafe extern "C" fn on_log(message: *const ffi::WasmEdge_LogMessage) {
    // SAFETY: libwasmedge passes a message valid for this call, whose
    // `Message` is `Length` bytes at `Buf` (checked for null).
    let text = unsafe {
        let Some(message) = message.as_ref() else { return };
        if message.Message.Buf.is_null() {
            return;
        }
        std::slice::from_raw_parts(message.Message.Buf.cast::<u8>(), message.Message.Length as usize)
    };
    let text = String::from_utf8_lossy(text);
    if text.starts_with(REFUSED_GROWTH) {
        REFUSED.with(|r| r.set(true));
        REFUSALS.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(target: "wasmedge", "{text}");
}
