//! The `cwasi` import module on wasmtime: resolve and bounds-check guest
//! pointers, then hand plain byte slices to `cwasi_comm::GuestHost`.

use cwasi_abi::{self as abi, Status};
use wasmtime::{Caller, Extern, Linker};

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

/// The guest's `(ptr, len)` as a slice, if it lies inside its memory.
/// Both are unsigned 32-bit values passed as `i32`.
fn range(memory_len: usize, ptr: i32, len: i32) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize).ok_or(Status::BadPointer)?;
    if end > memory_len {
        return Err(Status::BadPointer);
    }
    Ok(start..end)
}

fn guest_slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    Ok(&memory[range(memory.len(), ptr, len)?])
}

fn guest_slice_mut(memory: &mut [u8], ptr: i32, len: i32) -> Result<&mut [u8], Status> {
    let range = range(memory.len(), ptr, len)?;
    Ok(&mut memory[range])
}

fn write_u32(memory: &mut [u8], ptr: i32, value: u32) -> Result<(), Status> {
    guest_slice_mut(memory, ptr, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_memory_are_bad_pointers() {
        assert_eq!(range(100, 0, 100), Ok(0..100));
        assert_eq!(range(100, 100, 0), Ok(100..100));
        assert_eq!(range(100, 90, 11), Err(Status::BadPointer));
        assert_eq!(range(100, -1, 1), Err(Status::BadPointer));
        assert_eq!(range(100, 4, -1), Err(Status::BadPointer));
        let mut memory = [0u8; 8];
        assert_eq!(write_u32(&mut memory, 6, 1), Err(Status::BadPointer));
        write_u32(&mut memory, 4, 0x0403_0201).unwrap();
        assert_eq!(memory, [0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
