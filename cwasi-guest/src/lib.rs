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
//!
//! Large payloads can be *given* instead of lent: [`call_owned`] and
//! [`serve_pages`] hand over a [`PageBuf`], whose pages the host moves to a
//! peer in the same process (embedded mode) instead of copying them.

use std::fmt;
use std::time::Duration;

pub use cwasi_abi::Status;
use raw::abi;

mod page_buf;
pub use page_buf::PageBuf;

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

    /// Like [`Call::start`], giving `request` up: its whole pages move to
    /// the peer instead of being copied where the mode can (embedded, and
    /// local when it was shared, as large `PageBuf`s are).
    pub fn start_owned(peer: &str, mut request: PageBuf) -> Result<Call, Error> {
        let mut handle = 0u32;
        // SAFETY: as in `start`; the host is done with `request` when the
        // call returns (its pages may be gone), and it is dropped then.
        check(unsafe {
            raw::call_start_owned(
                abi(peer.as_ptr()),
                abi(peer.len()),
                abi(request.as_mut_ptr()),
                abi(request.len()),
                abi(0u32),
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

    /// Waits for the reply; its length.
    fn wait(&self) -> Result<u32, Error> {
        let mut len = 0u32;
        // SAFETY: `len` is a valid u32 for the host to write.
        check(unsafe { raw::call_wait(abi(self.handle), abi(&raw mut len)) })?;
        Ok(len)
    }

    /// Waits for the reply and returns it on pages of its own: a reply its
    /// peer gave up ([`serve_pages`]) moves there in embedded mode.
    pub fn finish_pages(self) -> Result<PageBuf, Error> {
        let len = self.wait()?;
        PageBuf::filled_by(len as usize, |buf| {
            // SAFETY: the buffer has room for `len` bytes; the host writes
            // exactly `len` bytes or fails.
            check(unsafe { raw::call_read(abi(self.handle), abi(buf), abi(len)) })
        })
    }

    /// Waits for the reply and returns it.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let len = self.wait()?;
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

/// Calls `peer` with `request`, giving it up: in embedded mode the whole
/// pages of a large request (and of a reply its peer gives up) move instead
/// of being copied. The reply comes on pages of its own.
pub fn call_owned(peer: &str, request: PageBuf) -> Result<PageBuf, Error> {
    Call::start_owned(peer, request)?.finish_pages()
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

    /// Reads the request onto pages of its own: a request its caller gave
    /// up ([`call_owned`]) moves there in embedded mode.
    pub fn read_pages(&self) -> Result<PageBuf, Error> {
        PageBuf::filled_by(self.len as usize, |buf| {
            // SAFETY: room for `len` bytes; the host writes exactly that or fails.
            check(unsafe { raw::serve_read(abi(buf), abi(self.len)) })
        })
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

    /// Replies with `reply`, giving it up: its pages may move to the caller,
    /// who may take them until the next [`Request::next`]; keep it, and
    /// leave it untouched, till then ([`serve_pages`] does).
    pub fn reply_given(self, reply: &mut PageBuf) -> Result<(), Error> {
        // SAFETY: `reply` is valid for its length and kept, untouched, until
        // the next request (the caller of this crate's loop does).
        check(unsafe { raw::serve_reply_owned(abi(reply.as_mut_ptr()), abi(reply.len())) })
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
    serve_each(
        |request| request.read_pages().ok().map(|body| handler(&body)),
        |request, reply: &mut Vec<u8>| request.reply(reply),
    )
}

/// Serves requests forever with `handler`, which owns each request and
/// gives its reply up: in embedded mode the whole pages of large ones move
/// instead of being copied (a handler may answer with the request itself).
pub fn serve_pages<E: fmt::Display>(mut handler: impl FnMut(PageBuf) -> Result<PageBuf, E>) -> Error {
    serve_each(
        |request| request.read_pages().ok().map(&mut handler),
        |request, reply: &mut PageBuf| request.reply_given(reply),
    )
}

/// The serving loop: `answer` reads and handles a request (`None`: it could
/// not be read), `reply` sends an answer.
fn serve_each<R, E: fmt::Display>(
    mut answer: impl FnMut(&Request) -> Option<Result<R, E>>,
    reply: impl Fn(Request, &mut R) -> Result<(), Error>,
) -> Error {
    // The host may read a reply until the next request arrives (an embedded
    // caller copies it, or takes its pages, straight out of this memory), so
    // it lives until then.
    let mut last_reply: Option<R> = None;
    loop {
        let request = match Request::next() {
            Ok(request) => request,
            Err(e) => return e,
        };
        drop(last_reply.take());
        // The caller went away mid-request: serve the next one.
        let Some(answered) = answer(&request) else { continue };
        // A failed reply means the caller is gone; the next request may be fine.
        let _ = match answered {
            Ok(answer) => reply(request, last_reply.insert(answer)),
            Err(e) => request.fail(&e.to_string()),
        };
    }
}
