//! The `cwasi` import module on wasmtime: hand the guest's memory and the
//! raw arguments to `cwasi_engine::guest_abi`, which bounds-checks them.
//! They are bound once, for a container's guest and for an embedded peer
//! alike (their store data differ; only how `serve_next` waits does).

use cwasi_abi as abi;
use cwasi_engine::{GuestHost, guest_abi};
use wasmtime::{Caller, Extern, Linker};

/// Where a store's data keeps its `GuestHost`.
pub(crate) type HostOf<T> = fn(&mut T) -> &mut GuestHost;

/// How `serve_next` waits for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Blocks the thread (a container's guest: the thread is its own).
    Blocks,
    /// Parks the instance, whose run is an async call (an embedded peer:
    /// its caller resumes it with the next request).
    Parks,
}

/// Every import `cwasi-abi` lists, bound to `guest_abi`'s function of the
/// same name, for store data that keeps its `GuestHost` at `host`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    host: HostOf<T>,
    waiting: Waiting,
) -> wasmtime::Result<()> {
    macro_rules! bind {
        ($($name:ident($($param:ident),*);)*) => {$(
            if !(waiting == Waiting::Parks && stringify!($name) == abi::SERVE_NEXT) {
                linker.func_wrap(abi::MODULE, stringify!($name), move |mut c: Caller<'_, T>, $($param: i32),*| {
                    with_memory(&mut c, host, |memory, host| guest_abi::$name(host, memory, $($param),*))
                })?;
            }
        )*};
    }
    cwasi_abi::for_each_import!(bind);
    if waiting == Waiting::Parks {
        linker.func_wrap_async(abi::MODULE, abi::SERVE_NEXT, move |mut c: Caller<'_, T>, (len_out,): (i32,)| {
            Box::new(async move {
                let checked = with_memory(&mut c, host, |memory, _| guest_abi::check_len_out(memory, len_out));
                if checked != abi::Status::Ok as i32 {
                    return checked;
                }
                // Pending suspends the instance's fiber: it is parked.
                let next = std::future::poll_fn(|_| host(c.data_mut()).poll_serve_next()).await;
                with_memory(&mut c, host, |memory, _| guest_abi::serve_next_done(memory, len_out, next))
            })
        })?;
    }
    Ok(())
}

/// Runs `f` with the caller's linear memory and its `GuestHost`.
fn with_memory<T>(
    caller: &mut Caller<'_, T>,
    host: HostOf<T>,
    f: impl FnOnce(&mut [u8], &mut GuestHost) -> i32,
) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return abi::Status::BadPointer as i32;
    };
    let (memory, state) = memory.data_and_store_mut(caller);
    f(memory, host(state))
}
