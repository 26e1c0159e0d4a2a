//! The `cwasi` imports on a guest's linear memory, shared by every engine:
//! an engine hands over the guest's memory as one slice and the raw `i32`
//! arguments, and gets back the status code to return to the guest.

use std::time::Duration;

use cwasi_abi::Status;

use cwasi_comm::Payload;

use crate::GuestHost;
use crate::guest_memory::{guest_slice, guest_slice_mut, write_u32};

fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}

pub fn call_start(
    host: &mut GuestHost,
    memory: &mut [u8],
    peer: i32,
    peer_len: i32,
    req: i32,
    req_len: i32,
    handle_out: i32,
) -> i32 {
    start(host, memory, peer, peer_len, req, req_len, None, handle_out)
}

fn timeout(timeout_ms: i32) -> Option<Duration> {
    match timeout_ms as u32 {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    }
}

/// `call_start` with the call's own deadline; `0` ms means the function's.
#[allow(clippy::too_many_arguments)] // the import's signature
pub fn call_start_timeout(
    host: &mut GuestHost,
    memory: &mut [u8],
    peer: i32,
    peer_len: i32,
    req: i32,
    req_len: i32,
    timeout_ms: i32,
    handle_out: i32,
) -> i32 {
    start(host, memory, peer, peer_len, req, req_len, timeout(timeout_ms), handle_out)
}

/// `call_start_timeout` of a request the caller gives up: its pages may
/// move to the peer (`cwasi_comm::pages`).
#[allow(clippy::too_many_arguments)] // the import's signature
pub fn call_start_owned(
    host: &mut GuestHost,
    memory: &mut [u8],
    peer: i32,
    peer_len: i32,
    req: i32,
    req_len: i32,
    timeout_ms: i32,
    handle_out: i32,
) -> i32 {
    status((|| {
        guest_slice(memory, handle_out, 4)?;
        // The name is copied so that the request can be borrowed mutably
        // from the same memory; it is short (a function name) or refused.
        let peer = guest_slice(memory, peer, peer_len)?.to_vec();
        // Filled by the host with the pages the guest shared for this request.
        let mut pages = None;
        let request = Payload::Given { bytes: guest_slice_mut(memory, req, req_len)?, pages: &mut pages };
        let handle = host.call_start(&peer, request, timeout(timeout_ms))?;
        write_u32(memory, handle_out, handle)
    })())
}

#[allow(clippy::too_many_arguments)]
fn start(
    host: &mut GuestHost,
    memory: &mut [u8],
    peer: i32,
    peer_len: i32,
    req: i32,
    req_len: i32,
    timeout: Option<Duration>,
    handle_out: i32,
) -> i32 {
    status((|| {
        // Check the out-pointer before sending anything.
        guest_slice(memory, handle_out, 4)?;
        let request = Payload::Lent(guest_slice(memory, req, req_len)?);
        let handle = host.call_start(guest_slice(memory, peer, peer_len)?, request, timeout)?;
        write_u32(memory, handle_out, handle)
    })())
}

pub fn call_wait(host: &mut GuestHost, memory: &mut [u8], handle: i32, len_out: i32) -> i32 {
    status((|| {
        // Check the out-pointer before blocking on the reply.
        guest_slice(memory, len_out, 4)?;
        let len = host.call_wait(handle as u32)?;
        write_u32(memory, len_out, len)
    })())
}

pub fn call_read(host: &mut GuestHost, memory: &mut [u8], handle: i32, buf: i32, buf_len: i32) -> i32 {
    status(guest_slice_mut(memory, buf, buf_len).and_then(|out| host.call_read(handle as u32, out)))
}

pub fn serve_next(host: &mut GuestHost, memory: &mut [u8], len_out: i32) -> i32 {
    match check_len_out(memory, len_out) {
        0 => serve_next_done(memory, len_out, host.serve_next()),
        bad => bad,
    }
}

/// `serve_next` in the steps of an engine that parks the guest until a
/// request comes: the out-pointer is checked before parking (this), the
/// engine polls [`GuestHost::poll_serve_next`], then [`serve_next_done`].
pub fn check_len_out(memory: &[u8], len_out: i32) -> i32 {
    status(guest_slice(memory, len_out, 4).map(drop))
}

/// Writes the length of the request `next` gave (or returns its error).
pub fn serve_next_done(memory: &mut [u8], len_out: i32, next: Result<u32, Status>) -> i32 {
    status(next.and_then(|len| write_u32(memory, len_out, len)))
}

pub fn serve_read(host: &mut GuestHost, memory: &mut [u8], buf: i32, buf_len: i32) -> i32 {
    status(guest_slice_mut(memory, buf, buf_len).and_then(|out| host.serve_read(out)))
}

pub fn serve_reply(host: &mut GuestHost, memory: &mut [u8], buf: i32, buf_len: i32) -> i32 {
    status(guest_slice(memory, buf, buf_len).and_then(|reply| host.serve_reply(Payload::Lent(reply))))
}

/// `serve_reply` of a reply the handler gives up: its pages may move to
/// the caller.
pub fn serve_reply_owned(host: &mut GuestHost, memory: &mut [u8], buf: i32, buf_len: i32) -> i32 {
    status(
        guest_slice_mut(memory, buf, buf_len)
            // The host fills `pages` with those the guest shared for it.
            .and_then(|reply| host.serve_reply(Payload::Given { bytes: reply, pages: &mut None })),
    )
}

/// Backs the whole pages of a buffer the guest will give with memory that
/// can leave its process (`cwasi_comm::pages::SharedPages`).
pub fn pages_share(host: &mut GuestHost, memory: &mut [u8], buf: i32, buf_len: i32) -> i32 {
    status(guest_slice_mut(memory, buf, buf_len).and_then(|buf| host.pages_share(buf)))
}

pub fn serve_fail(host: &mut GuestHost, memory: &mut [u8], msg: i32, msg_len: i32) -> i32 {
    status(guest_slice(memory, msg, msg_len).and_then(|message| host.serve_fail(message)))
}
