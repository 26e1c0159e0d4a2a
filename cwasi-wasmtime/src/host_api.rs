//! The `cwasi` import module on wasmtime: resolve and bounds-check guest
//! pointers, then hand plain byte slices to `cwasi_comm::GuestHost`.

use cwasi_abi::{self as abi, Status};
use wasmtime::{Caller, Extern, Linker};

use crate::guest_memory::{guest_slice, guest_slice_mut, write_u32};
use crate::run::GuestState;

type GuestCaller<'a> = Caller<'a, GuestState>;

pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        abi::MODULE,
        abi::CALL_START,
        |mut caller: GuestCaller<'_>, peer: i32, peer_len: i32, req: i32, req_len: i32, handle_out: i32| {
            with_memory(&mut caller, |memory, host| {
                let handle = host.call_start(guest_slice(memory, peer, peer_len)?, guest_slice(memory, req, req_len)?)?;
                write_u32(memory, handle_out, handle)
            })
        },
    )?;
    linker.func_wrap(abi::MODULE, abi::CALL_WAIT, |mut caller: GuestCaller<'_>, handle: i32, len_out: i32| {
        with_memory(&mut caller, |memory, host| {
            // Check the out-pointer before blocking on the reply.
            guest_slice(memory, len_out, 4)?;
            let len = host.call_wait(handle as u32)?;
            write_u32(memory, len_out, len)
        })
    })?;
    linker.func_wrap(abi::MODULE, abi::CALL_READ, |mut caller: GuestCaller<'_>, handle: i32, buf: i32, buf_len: i32| {
        with_memory(&mut caller, |memory, host| host.call_read(handle as u32, guest_slice_mut(memory, buf, buf_len)?))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_NEXT, |mut caller: GuestCaller<'_>, len_out: i32| {
        with_memory(&mut caller, |memory, host| {
            guest_slice(memory, len_out, 4)?;
            let len = host.serve_next()?;
            write_u32(memory, len_out, len)
        })
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_READ, |mut caller: GuestCaller<'_>, buf: i32, buf_len: i32| {
        with_memory(&mut caller, |memory, host| host.serve_read(guest_slice_mut(memory, buf, buf_len)?))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_REPLY, |mut caller: GuestCaller<'_>, buf: i32, buf_len: i32| {
        with_memory(&mut caller, |memory, host| host.serve_reply(guest_slice(memory, buf, buf_len)?))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_FAIL, |mut caller: GuestCaller<'_>, msg: i32, msg_len: i32| {
        with_memory(&mut caller, |memory, host| host.serve_fail(guest_slice(memory, msg, msg_len)?))
    })?;
    Ok(())
}

/// Runs `f` with the guest's linear memory and its `GuestHost`, and turns
/// the outcome into the status code the guest sees.
fn with_memory(
    caller: &mut GuestCaller<'_>,
    f: impl FnOnce(&mut [u8], &mut cwasi_engine::GuestHost) -> Result<(), Status>,
) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Status::BadPointer as i32;
    };
    let (memory, state) = memory.data_and_store_mut(caller);
    match f(memory, &mut state.host) {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}
