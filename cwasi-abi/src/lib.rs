//! The guest ABI of cwasi: the host import module `cwasi`.
//!
//! Shared by the host (`cwasi-comm`, the engines) and the guest SDK
//! (`cwasi-guest`) so that both sides agree on every number. All pointers
//! and lengths are `i32` offsets into the guest's linear memory; every
//! function returns a [`Status`] code (0 = success, negative = error).
//!
//! Calling a peer (three steps, so that a guest can have several calls in
//! flight and the reply is copied once, straight into guest memory):
//!
//! | import | signature | does |
//! |---|---|---|
//! | `call_start` | `(peer_ptr, peer_len, req_ptr, req_len, handle_out_ptr) -> status` | sends the request; writes a call handle (`u32`) |
//! | `call_wait` | `(handle, reply_len_out_ptr) -> status` | waits for the reply; writes its length (`u32`) |
//! | `call_read` | `(handle, buf_ptr, buf_len) -> status` | copies the reply (`buf_len` must be its length) and ends the call |
//! | `call_start_timeout` | `(peer_ptr, peer_len, req_ptr, req_len, timeout_ms, handle_out_ptr) -> status` | like `call_start`, with this call's deadline in milliseconds (`0`: the function's default) |
//! | `call_start_owned` | `(peer_ptr, peer_len, req_ptr, req_len, timeout_ms, handle_out_ptr) -> status` | like `call_start_timeout`, and the caller gives the request's buffer up (below) |
//!
//! Every call has a deadline: the per-call value, else the function's
//! `cwasi.io/timeout`, else the node's default. Past it, `call_wait` answers
//! [`Status::Timeout`] and a late reply is discarded.
//!
//! Serving (one request at a time):
//!
//! | import | signature | does |
//! |---|---|---|
//! | `serve_next` | `(req_len_out_ptr) -> status` | waits for the next request; writes its length |
//! | `serve_read` | `(buf_ptr, buf_len) -> status` | copies the request (`buf_len` must be its length) |
//! | `serve_reply` | `(buf_ptr, buf_len) -> status` | sends the reply and finishes the request; the host may read `buf` until the next `serve_next` returns, so keep it unchanged until then |
//! | `serve_fail` | `(msg_ptr, msg_len) -> status` | finishes the request with an error the caller sees as [`Status::PeerFailed`] |
//! | `serve_reply_owned` | `(buf_ptr, buf_len) -> status` | like `serve_reply`, and the handler gives the reply's buffer up (below) |
//! | `pages_share` | `(buf_ptr, buf_len) -> status` | backs the buffer's whole pages with memory that can leave the process (below); they read as zeros after |
//!
//! Giving a buffer up (move semantics): when the receiver runs in the same
//! process (embedded mode), the host may *move* the buffer's whole pages
//! into the receiver's buffer (`serve_read`, `call_read`) instead of copying
//! them; those pages then read as zeros in the giver's buffer. Only pages
//! that lie whole inside both buffers move, so both should start at the
//! same offset within a page (the guest SDK's `PageBuf` starts on one); the
//! bytes around them, small payloads and other modes are copied, and copied
//! bytes stay as they were. Until `call_start_owned` returns (a request)
//! or the next `serve_next` (a reply), the giver must not touch the buffer;
//! after, it is its own again, whatever it reads. A given request whose
//! call fails may be gone: its pages may have reached the peer.
//!
//! A request or reply given to a function in another container on this
//! node (local mode) moves by pages when its buffer was shared with
//! `pages_share` before it was written (the SDK's large `PageBuf`s are):
//! the pages then travel as a sealed file the receiver maps privately. Only
//! 2 MiB or more of whole pages is shared; smaller buffers are copied.

#![no_std]

/// The import module name.
pub const MODULE: &str = "cwasi";

/// Every import of the module, the one place that lists them: it calls
/// `$callback!` with `name(param, ...);` for each, in the order above. Every
/// parameter and every result is an `i32` (pointers and lengths are 32-bit
/// offsets into the guest's memory; the result is a [`Status`] code). The
/// guest SDK declares the imports from it and each engine binds them from
/// it, to the functions of the same names and parameters that implement
/// them on guest memory (`cwasi_engine::guest_abi`).
#[macro_export]
macro_rules! for_each_import {
    ($callback:ident) => {
        $callback! {
            call_start(peer, peer_len, req, req_len, handle_out);
            call_wait(handle, len_out);
            call_read(handle, buf, buf_len);
            call_start_timeout(peer, peer_len, req, req_len, timeout_ms, handle_out);
            call_start_owned(peer, peer_len, req, req_len, timeout_ms, handle_out);
            serve_next(len_out);
            serve_read(buf, buf_len);
            serve_reply(buf, buf_len);
            serve_fail(msg, msg_len);
            serve_reply_owned(buf, buf_len);
            pages_share(buf, buf_len);
        }
    };
}

/// Import names, for code that names one import rather than all.
pub const SERVE_NEXT: &str = "serve_next";

/// Result codes of every `cwasi` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    /// A pointer/length pair does not lie inside the guest's memory.
    BadPointer = -1,
    /// The peer is not in this function's `cwasi.io/peers` allow-list.
    Forbidden = -2,
    /// No function of that name is reachable.
    UnknownPeer = -3,
    /// The peer went away (killed, crashed) before replying.
    PeerGone = -4,
    /// The payload exceeds what the transport carries.
    TooLarge = -5,
    /// No call with that handle is in flight (or its reply was already read).
    BadHandle = -6,
    /// The transport failed (I/O error, Redis unreachable, protocol violation).
    Transport = -7,
    /// `serve_*` in a container without `cwasi.io/serve: "true"`.
    NotServing = -8,
    /// The peer's handler failed (trap or `serve_fail`).
    PeerFailed = -9,
    /// A buffer length differs from the pending message's length.
    LengthMismatch = -10,
    /// `serve_read`/`serve_reply` without a current request.
    NoRequest = -11,
    /// The peer name is not a function name: 1 to 253 letters, digits, `-`,
    /// `_` and `.`, not starting with `.`.
    BadName = -12,
    /// The peer did not answer in time.
    Timeout = -13,
    /// A function called itself: it serves one request per instance, so the
    /// call could only wait for its own end.
    SelfCall = -14,
}

impl Status {
    pub fn from_code(code: i32) -> Option<Status> {
        use Status::*;
        [
            Ok,
            BadPointer,
            Forbidden,
            UnknownPeer,
            PeerGone,
            TooLarge,
            BadHandle,
            Transport,
            NotServing,
            PeerFailed,
            LengthMismatch,
            NoRequest,
            BadName,
            Timeout,
            SelfCall,
        ]
        .into_iter()
        .find(|s| *s as i32 == code)
    }

    /// A short name, for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadPointer => "bad_pointer",
            Status::Forbidden => "forbidden",
            Status::UnknownPeer => "unknown_peer",
            Status::PeerGone => "peer_gone",
            Status::TooLarge => "too_large",
            Status::BadHandle => "bad_handle",
            Status::Transport => "transport",
            Status::NotServing => "not_serving",
            Status::PeerFailed => "peer_failed",
            Status::LengthMismatch => "length_mismatch",
            Status::NoRequest => "no_request",
            Status::BadName => "bad_name",
            Status::Timeout => "timeout",
            Status::SelfCall => "self_call",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadPointer => "pointer or length outside guest memory",
            Status::Forbidden => "peer not in this function's cwasi.io/peers allow-list",
            Status::UnknownPeer => "no such function reachable",
            Status::PeerGone => "peer went away before replying",
            Status::TooLarge => "payload too large",
            Status::BadHandle => "no call with that handle",
            Status::Transport => "transport failure",
            Status::NotServing => "this function does not serve (cwasi.io/serve)",
            Status::PeerFailed => "the peer's handler failed",
            Status::LengthMismatch => "buffer length differs from the message length",
            Status::NoRequest => "no request is being served",
            Status::BadName => "peer name is not a function name (letters, digits, '-', '_', '.'; at most 253)",
            Status::Timeout => "the peer did not answer in time",
            Status::SelfCall => "a function cannot call itself",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! names {
        ($($name:ident($($param:ident),*);)*) => {
            [$(stringify!($name)),*]
        };
    }

    #[test]
    fn the_import_list_names_each_import_once() {
        let names = for_each_import!(names);
        assert_eq!(names.len(), 11);
        assert!(names.contains(&SERVE_NEXT));
        for (i, name) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(name), "{name} twice");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for code in -14..=0 {
            let status = Status::from_code(code).expect("contiguous codes");
            assert_eq!(status as i32, code);
        }
        assert_eq!(Status::from_code(1), None);
    }
}
