//! The `cwasi` import module on WasmEdge: every import `cwasi-abi` lists,
//! bound to `cwasi_engine::guest_abi`'s function of the same name, which
//! gets the guest's memory and the raw arguments and bounds-checks them.
//! A container's guest and an embedded peer get the same imports.

use cwasi_abi as abi;
use cwasi_engine::{GuestHost, guest_abi};
use wasmedge_sdk::error::CoreError;
use wasmedge_sdk::{CallingFrame, ImportObject, ImportObjectBuilder, Instance, WasmValue};

type HostResult = Result<Vec<WasmValue>, CoreError>;

/// An `i32` per parameter, for the import's type.
macro_rules! i32_for {
    ($param:ident) => {
        i32
    };
}

/// One import's host function, which hands the guest's memory and the raw
/// arguments to `guest_abi`.
macro_rules! host_function {
    (serve_next($len_out:ident)) => {
        /// Holds no view of the guest's memory while it waits: an embedded
        /// peer's caller reads the peer's reply from that memory meanwhile.
        fn serve_next(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
            let [$len_out] = args[..] else {
                return done(abi::Status::BadPointer as i32);
            };
            let $len_out = $len_out.to_i32();
            let checked = with_memory(frame, |memory| guest_abi::check_len_out(memory, $len_out));
            if checked != abi::Status::Ok as i32 {
                return done(checked);
            }
            let next = host.serve_next();
            done(with_memory(frame, |memory| guest_abi::serve_next_done(memory, $len_out, next)))
        }
    };
    ($name:ident($($param:ident),*)) => {
        fn $name(host: &mut GuestHost, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
            // WasmEdge checked the arguments against the import's type.
            let [$($param),*] = args[..] else {
                return done(abi::Status::BadPointer as i32);
            };
            // No second vector per host call: each argument converted in place.
            $(let $param = $param.to_i32();)*
            done(with_memory(frame, |memory| guest_abi::$name(host, memory, $($param),*)))
        }
    };
}

macro_rules! host_functions {
    ($($name:ident($($param:ident),*);)*) => {
        /// The `cwasi` import module, serving `host`.
        #[allow(unused_parens)] // a one-parameter import's type is `(i32)`
        pub(crate) fn import_object(host: GuestHost) -> anyhow::Result<ImportObject<GuestHost>> {
            let mut builder = ImportObjectBuilder::new(abi::MODULE, host)?;
            $(builder.with_func::<($(i32_for!($param)),*), i32>(stringify!($name), $name)?;)*
            Ok(builder.build())
        }

        $(host_function!($name($($param),*));)*
    };
}

cwasi_abi::for_each_import!(host_functions);

/// The whole linear memory of the calling instance as one slice.
fn with_memory(frame: &mut CallingFrame, f: impl FnOnce(&mut [u8]) -> i32) -> i32 {
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

fn done(status: i32) -> HostResult {
    Ok(vec![WasmValue::from_i32(status)])
}
