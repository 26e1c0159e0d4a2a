//! Guest SDK of cwasi, for functions compiled to `wasm32-wasip1`.
//!
//! ```no_run
//! // Call another function by name with a binary payload:
//! let digest = cwasi_guest::call("sha256", b"hello")?;
//!
//! // Or serve calls (the container needs `cwasi.io/serve: "true"`):
//! cwasi_guest::serve(|request| request.to_vec());
//! # Ok::<(), cwasi_guest::Error>(())
//! ```
//!
//! The host picks the transport (same engine, shared memory on this node, or
//! Redis across nodes); the guest code is the same for all of them.

use std::fmt;
use std::time::Duration;

pub use cwasi_abi::Status;
use raw::abi;

/// The `cwasi` imports as the host provides them (every value an `i32`),
/// for code that needs the raw ABI; everything else uses the functions of
/// this crate.
pub mod raw {
    /// Declares the imports as `cwasi-abi` lists them.
    macro_rules! declare {
        ($($name:ident($($param:ident),*);)*) => {
            #[link(wasm_import_module = "cwasi")]
            unsafe extern "C" {
                $(pub fn $name($($param: i32),*) -> i32;)*
            }
        };
    }
    cwasi_abi::for_each_import!(declare);

    /// A pointer or length as the ABI passes it: a 32-bit offset or size in
    /// the guest's memory (the guest is `wasm32`).
    pub fn abi<T: AsAbi>(value: T) -> i32 {
        value.as_abi()
    }

    pub trait AsAbi {
        fn as_abi(self) -> i32;
    }

    impl<T> AsAbi for *const T {
        fn as_abi(self) -> i32 {
            self as usize as i32
        }
    }

    impl<T> AsAbi for *mut T {
        fn as_abi(self) -> i32 {
            self as usize as i32
        }
    }

    impl AsAbi for usize {
        fn as_abi(self) -> i32 {
            self as i32
        }
    }

    impl AsAbi for u32 {
        fn as_abi(self) -> i32 {
            self as i32
        }
    }
}

/// Why a call failed, as the host reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error(pub Status);

impl Error {
    pub fn status(self) -> Status {
        self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0, self.0.description())
    }
}

impl std::error::Error for Error {}

fn check(code: i32) -> Result<(), Error> {
    match Status::from_code(code) {
        Some(Status::Ok) => Ok(()),
        Some(status) => Err(Error(status)),
        None => Err(Error(Status::Transport)),
    }
}

/// A call whose request was sent; [`Call::finish`] waits for the reply.
#[must_use = "a call's reply is only received by finish()"]
pub struct Call {
    handle: u32,
}

impl Call {
    /// Sends `request` to `peer` without waiting for the reply.
    pub fn start(peer: &str, request: &[u8]) -> Result<Call, Error> {
        let mut handle = 0u32;
        // SAFETY: both slices are valid for their lengths and `handle` is a
        // valid u32 the host writes; the host bounds-checks everything.
        check(unsafe {
            raw::call_start(
                abi(peer.as_ptr()),
                abi(peer.len()),
                abi(request.as_ptr()),
                abi(request.len()),
                abi(&raw mut handle),
            )
        })?;
        Ok(Call { handle })
    }

    /// Like [`Call::start`], with a deadline for this call: past `timeout`
    /// (at least 1 ms), [`Call::finish`] returns [`Status::Timeout`].
    pub fn start_with_timeout(peer: &str, request: &[u8], timeout: Duration) -> Result<Call, Error> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut handle = 0u32;
        // SAFETY: as in `start`.
        check(unsafe {
            raw::call_start_timeout(
                abi(peer.as_ptr()),
                abi(peer.len()),
                abi(request.as_ptr()),
                abi(request.len()),
                abi(ms),
                abi(&raw mut handle),
            )
        })?;
        Ok(Call { handle })
    }

    /// Waits for the reply and returns it.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let mut len = 0u32;
        // SAFETY: `len` is a valid u32 for the host to write.
        check(unsafe { raw::call_wait(abi(self.handle), abi(&raw mut len)) })?;
        let mut reply = Vec::with_capacity(len as usize);
        // SAFETY: the buffer has capacity for `len` bytes; the host writes
        // exactly `len` bytes or fails.
        check(unsafe { raw::call_read(abi(self.handle), abi(reply.as_mut_ptr()), abi(len)) })?;
        // SAFETY: call_read succeeded, so the first `len` bytes are initialised.
        unsafe { reply.set_len(len as usize) };
        Ok(reply)
    }
}

/// Calls `peer` with `request` and returns its reply.
pub fn call(peer: &str, request: &[u8]) -> Result<Vec<u8>, Error> {
    Call::start(peer, request)?.finish()
}

/// Calls `peer` with `request`; gives up with [`Status::Timeout`] after `timeout`.
pub fn call_with_timeout(peer: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
    Call::start_with_timeout(peer, request, timeout)?.finish()
}

/// Calls several peers at once (fan-out) and collects their replies in order.
pub fn call_all(calls: &[(&str, &[u8])]) -> Vec<Result<Vec<u8>, Error>> {
    let started: Vec<_> = calls.iter().map(|(peer, request)| Call::start(peer, request)).collect();
    started.into_iter().map(|call| call.and_then(Call::finish)).collect()
}

/// One request being served.
pub struct Request {
    len: u32,
}

impl Request {
    /// Waits for the next request.
    pub fn next() -> Result<Request, Error> {
        let mut len = 0u32;
        // SAFETY: `len` is a valid u32 for the host to write.
        check(unsafe { raw::serve_next(abi(&raw mut len)) })?;
        Ok(Request { len })
    }

    pub fn read(&self) -> Result<Vec<u8>, Error> {
        let mut body = Vec::with_capacity(self.len as usize);
        // SAFETY: capacity for `len` bytes; the host writes exactly that or fails.
        check(unsafe { raw::serve_read(abi(body.as_mut_ptr()), abi(self.len)) })?;
        // SAFETY: serve_read succeeded, so `len` bytes are initialised.
        unsafe { body.set_len(self.len as usize) };
        Ok(body)
    }

    pub fn reply(self, reply: &[u8]) -> Result<(), Error> {
        // SAFETY: `reply` is valid for its length.
        check(unsafe { raw::serve_reply(abi(reply.as_ptr()), abi(reply.len())) })
    }

    /// Ends the request with an error the caller sees as [`Status::PeerFailed`].
    pub fn fail(self, message: &str) -> Result<(), Error> {
        // SAFETY: `message` is valid for its length.
        check(unsafe { raw::serve_fail(abi(message.as_ptr()), abi(message.len())) })
    }
}

/// Serves requests forever with `handler`; returns only if serving fails
/// (for example when the container is not annotated `cwasi.io/serve`).
pub fn serve(mut handler: impl FnMut(&[u8]) -> Vec<u8>) -> Error {
    serve_fallible(|request| Ok::<_, String>(handler(request)))
}

/// Like [`serve`], but the handler may fail; its message reaches the caller.
pub fn serve_fallible<E: fmt::Display>(mut handler: impl FnMut(&[u8]) -> Result<Vec<u8>, E>) -> Error {
    // The host may read a reply until the next request arrives (an embedded
    // caller copies it straight out of this memory), so it lives until then.
    let mut last_reply: Vec<u8> = Vec::new();
    loop {
        let request = match Request::next() {
            Ok(request) => request,
            Err(e) => return e,
        };
        drop(std::mem::take(&mut last_reply));
        let body = match request.read() {
            Ok(body) => body,
            // The caller went away mid-request: serve the next one.
            Err(_) => continue,
        };
        // A failed reply means the caller is gone; the next request may be fine.
        let _ = match handler(&body) {
            Ok(reply) => {
                last_reply = reply;
                request.reply(&last_reply)
            }
            Err(e) => request.fail(&e.to_string()),
        };
    }
}
