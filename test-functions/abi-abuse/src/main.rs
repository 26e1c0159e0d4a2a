//! A hostile guest: calls every `cwasi` import with pointers and lengths
//! outside its memory, unknown handles and requests it does not have, and
//! checks that each answers the status it must (never a trap, never a
//! write outside its memory). Prints `ok <what>` or `WRONG <what>` per
//! attempt; exits 0 only when every answer was right.
use cwasi_guest::{Status, raw};

fn main() {
    // Past the end of memory, at the very top of the address space, and a
    // range that wraps around it.
    let end = (core::arch::wasm32::memory_size(0) * 65536) as i32;
    let name = b"peer";
    let (name_ptr, name_len) = (name.as_ptr() as i32, name.len() as i32);
    let mut out = [0u8; 8];
    let out_ptr = out.as_mut_ptr() as i32;
    let mut wrong = 0;
    let mut expect = |what: &str, got: i32, want: Status| {
        if got == want as i32 {
            println!("ok {what}");
        } else {
            println!("WRONG {what}: got {got}, want {want:?}");
            wrong += 1;
        }
    };
    // SAFETY: every call passes plain integers; the host bounds-checks them
    // and must answer without touching memory outside ours.
    unsafe {
        expect("call_start peer past the end", raw::call_start(end, 4, name_ptr, 1, out_ptr), Status::BadPointer);
        expect(
            "call_start request wrapping",
            raw::call_start(name_ptr, name_len, -16, 64, out_ptr),
            Status::BadPointer,
        );
        expect(
            "call_start handle out past the end",
            raw::call_start(name_ptr, name_len, name_ptr, 1, end - 2),
            Status::BadPointer,
        );
        expect(
            "call_start_timeout handle at -1",
            raw::call_start_timeout(name_ptr, name_len, name_ptr, 1, 10, -1),
            Status::BadPointer,
        );
        expect("call_start a name no function has", raw::call_start(out_ptr, 8, name_ptr, 1, out_ptr), Status::BadName);
        expect("call_wait unknown handle", raw::call_wait(12345, out_ptr), Status::BadHandle);
        expect("call_wait length out past the end", raw::call_wait(12345, end), Status::BadPointer);
        expect("call_read unknown handle", raw::call_read(7, out_ptr, 8), Status::BadHandle);
        expect("call_read buffer past the end", raw::call_read(7, end - 4, 8), Status::BadPointer);
        expect("serve_next without serving", raw::serve_next(out_ptr), Status::NotServing);
        expect("serve_next length out past the end", raw::serve_next(end), Status::BadPointer);
        expect("serve_read without a request", raw::serve_read(out_ptr, 8), Status::NoRequest);
        expect("serve_read buffer wrapping", raw::serve_read(-8, 16), Status::BadPointer);
        expect("serve_reply without a request", raw::serve_reply(out_ptr, 8), Status::NoRequest);
        expect("serve_fail message past the end", raw::serve_fail(end, 1), Status::BadPointer);
        // Giving bytes up: the same checks before any page could move.
        expect(
            "call_start_owned request past the end",
            raw::call_start_owned(name_ptr, name_len, end - 4096, 1 << 21, 0, out_ptr),
            Status::BadPointer,
        );
        expect(
            "call_start_owned request wrapping",
            raw::call_start_owned(name_ptr, name_len, -4096, 1 << 21, 0, out_ptr),
            Status::BadPointer,
        );
        expect(
            "call_start_owned handle out past the end",
            raw::call_start_owned(name_ptr, name_len, name_ptr, 1, 0, end),
            Status::BadPointer,
        );
        expect(
            "call_start_owned a name no function has",
            raw::call_start_owned(out_ptr, 8, name_ptr, 1, 0, out_ptr),
            Status::BadName,
        );
        expect("serve_reply_owned past the end", raw::serve_reply_owned(end - 8, 1 << 21), Status::BadPointer);
        expect("serve_reply_owned without a request", raw::serve_reply_owned(out_ptr, 8), Status::NoRequest);
        expect("pages_share past the end", raw::pages_share(end - 4096, 1 << 21), Status::BadPointer);
        expect("pages_share wrapping", raw::pages_share(-4096, 1 << 21), Status::BadPointer);
    }
    std::process::exit(if wrong == 0 { 0 } else { 1 });
}
