//! The `cwasi` import module on WasmEdge: hand the guest's memory and the
//! raw arguments to `cwasi_engine::guest_abi`, which bounds-checks them.

use cwasi_abi as abi;
use cwasi_engine::{GuestHost, guest_abi};
use wasmedge_sdk::error::CoreError;
use wasmedge_sdk::{CallingFrame, ImportObject, ImportObjectBuilder, Instance, WasmValue};

pub(crate) type HostResult = Result<Vec<WasmValue>, CoreError>;

pub(crate) fn import_object(host: GuestHost) -> anyhow::Result<ImportObject<GuestHost>> {
    let mut builder = ImportObjectBuilder::new(abi::MODULE, host)?;
    builder
        .with_func::<(i32, i32, i32, i32, i32), i32>(abi::CALL_START, call_start)?
        .with_func::<(i32, i32, i32, i32, i32, i32), i32>(abi::CALL_START_TIMEOUT, call_start_timeout)?
        .with_func::<(i32, i32), i32>(abi::CALL_WAIT, call_wait)?
        .with_func::<(i32, i32, i32), i32>(abi::CALL_READ, call_read)?
        .with_func::<i32, i32>(abi::SERVE_NEXT, serve_next)?
        .with_func::<(i32, i32), i32>(abi::SERVE_READ, serve_read)?
        .with_func::<(i32, i32), i32>(abi::SERVE_REPLY, serve_reply)?
        .with_func::<(i32, i32), i32>(abi::SERVE_FAIL, serve_fail)?;
    Ok(builder.build())
}

/// The whole linear memory of the calling instance as one slice.
pub(crate) fn with_memory(frame: &mut CallingFrame, f: impl FnOnce(&mut [u8]) -> i32) -> i32 {
    let Some(memory) = frame.memory_mut(0) else {
        return abi::Status::BadPointer as i32;
    };
    let len = memory.size() as usize * 65536;
    // No guest code runs during a host call, so the memory cannot grow or
    // move while the slice lives; `mut_slice` checks the range.
    match memory.mut_slice::<u8>(0, len) {
        Some(bytes) => f(bytes),
        None if len == 0 => f(&mut []),
        None => abi::Status::BadPointer as i32,
    }
}

pub(crate) fn ints(args: &[WasmValue]) -> Vec<i32> {
    args.iter().map(WasmValue::to_i32).collect()
}

pub(crate) fn done(status: i32) -> HostResult {
    Ok(vec![WasmValue::from_i32(status)])
}

fn call_start(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::call_start(host, m, a[0], a[1], a[2], a[3], a[4])))
}

fn call_start_timeout(
    host: &mut GuestHost,
    _: &mut Instance,
    frame: &mut CallingFrame,
    args: Vec<WasmValue>,
) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::call_start_timeout(host, m, a[0], a[1], a[2], a[3], a[4], a[5])))
}

fn call_wait(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::call_wait(host, m, a[0], a[1])))
}

fn call_read(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::call_read(host, m, a[0], a[1], a[2])))
}

fn serve_next(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::serve_next(host, m, a[0])))
}

fn serve_read(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::serve_read(host, m, a[0], a[1])))
}

fn serve_reply(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::serve_reply(host, m, a[0], a[1])))
}

fn serve_fail(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| guest_abi::serve_fail(host, m, a[0], a[1])))
}
