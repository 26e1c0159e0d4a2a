//! The `cwasi` imports as an embedded peer sees them: serving its caller
//! through the exchange, calling out like any function (within its
//! allow-list and by the deadline of the request it serves).

use cwasi_abi::{self as abi, Status};
use wasmtime::{Caller, Extern, Linker};

use crate::embedded::{Exchange, PeerState, RawBytes};
use cwasi_engine::guest_memory::{guest_slice, guest_slice_mut, write_u32};

type PeerCaller<'a> = Caller<'a, PeerState>;

pub(crate) fn add_to_linker(linker: &mut Linker<PeerState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(abi::MODULE, abi::SERVE_NEXT, |mut caller: PeerCaller<'_>, (len_out,): (i32,)| {
        Box::new(async move {
            let exchange = caller.data().exchange.clone();
            // Pending parks the peer's fiber until a call offers a request.
            let len = std::future::poll_fn(|_| exchange.poll_request()).await;
            // Its calls end by its caller's deadline and continue its trace.
            caller.data_mut().host.serve_embedded_call(exchange.call());
            status(with_memory(&mut caller, |memory, _| write_u32(memory, len_out, len as u32)))
        })
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_READ, |mut caller: PeerCaller<'_>, buf: i32, buf_len: i32| {
        status(with_memory(&mut caller, |memory, exchange| {
            let request = exchange.request().ok_or(Status::NoRequest)?;
            let out = guest_slice_mut(memory, buf, buf_len)?;
            if out.len() != request.len() {
                return Err(Status::LengthMismatch);
            }
            Exchange::copy_request(request, out);
            Ok(())
        }))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_REPLY, |mut caller: PeerCaller<'_>, buf: i32, buf_len: i32| {
        status(with_memory(&mut caller, |memory, exchange| {
            exchange.request().ok_or(Status::NoRequest)?;
            exchange.set_reply(RawBytes::new(guest_slice(memory, buf, buf_len)?));
            Ok(())
        }))
    })?;
    linker.func_wrap(abi::MODULE, abi::SERVE_FAIL, |mut caller: PeerCaller<'_>, msg: i32, msg_len: i32| {
        status(with_memory(&mut caller, |memory, exchange| {
            exchange.request().ok_or(Status::NoRequest)?;
            exchange.set_failure(String::from_utf8_lossy(guest_slice(memory, msg, msg_len)?).into_owned());
            Ok(())
        }))
    })?;
    crate::host_api::add_call_imports(linker, |state: &mut PeerState| &mut state.host)?;
    Ok(())
}

fn with_memory(
    caller: &mut PeerCaller<'_>,
    f: impl FnOnce(&mut [u8], &Exchange) -> Result<(), Status>,
) -> Result<(), Status> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(Status::BadPointer);
    };
    let (memory, state) = memory.data_and_store_mut(caller);
    f(memory, &state.exchange)
}

fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}
