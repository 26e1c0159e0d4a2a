//! The `cwasi` import module on wasmtime: hand the guest's memory and the
//! raw arguments to `cwasi_engine::guest_abi`, which bounds-checks them.

use cwasi_abi as abi;
use cwasi_engine::guest_abi;
use wasmtime::{Caller, Extern, Linker};

use crate::run::GuestState;

type GuestCaller<'a> = Caller<'a, GuestState>;

pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::MODULE,
        abi::CALL_START,
        |mut c: GuestCaller<'_>, peer: i32, peer_len: i32, req: i32, req_len: i32, handle_out: i32| {
            with_memory(&mut c, |memory, host| {
                guest_abi::call_start(host, memory, peer, peer_len, req, req_len, handle_out)
            })
        },
    )?;
    linker.func_wrap(
        abi::MODULE,
        abi::CALL_START_TIMEOUT,
        |mut c: GuestCaller<'_>, peer: i32, peer_len: i32, req: i32, req_len: i32, timeout_ms: i32, handle_out: i32| {
            with_memory(&mut c, |memory, host| {
                guest_abi::call_start_timeout(host, memory, peer, peer_len, req, req_len, timeout_ms, handle_out)
            })
        },
    )?;
    linker.func_wrap(abi::MODULE, abi::CALL_WAIT, |mut c: GuestCaller<'_>, handle: i32, len_out: i32| {
        with_memory(&mut c, |memory, host| guest_abi::call_wait(host, memory, handle, len_out))
    })?;
    linker.func_wrap(abi::MODULE, abi::CALL_READ, |mut c: GuestCaller<'_>, handle: i32, buf: i32, len: i32| {
        with_memory(&mut c, |memory, host| guest_abi::call_read(host, memory, handle, buf, len))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_NEXT, |mut c: GuestCaller<'_>, len_out: i32| {
        with_memory(&mut c, |memory, host| guest_abi::serve_next(host, memory, len_out))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_READ, |mut c: GuestCaller<'_>, buf: i32, len: i32| {
        with_memory(&mut c, |memory, host| guest_abi::serve_read(host, memory, buf, len))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_REPLY, |mut c: GuestCaller<'_>, buf: i32, len: i32| {
        with_memory(&mut c, |memory, host| guest_abi::serve_reply(host, memory, buf, len))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_FAIL, |mut c: GuestCaller<'_>, msg: i32, len: i32| {
        with_memory(&mut c, |memory, host| guest_abi::serve_fail(host, memory, msg, len))
    })?;
    Ok(())
}

/// Runs `f` with the guest's linear memory and its `GuestHost`.
fn with_memory(caller: &mut GuestCaller<'_>, f: impl FnOnce(&mut [u8], &mut cwasi_engine::GuestHost) -> i32) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return abi::Status::BadPointer as i32;
    };
    let (memory, state) = memory.data_and_store_mut(caller);
    f(memory, &mut state.host)
}
