//! The guest ABI (`cwasi-abi`) implemented on byte slices: engines resolve
//! and bounds-check guest pointers, then call these methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cwasi_abi::Status;

use crate::stats::{CallCounter, FunctionStats};
use crate::{CallError, FunctionServer, IncomingRequest, PendingReply, Router};

/// Per-guest state behind the `cwasi` imports.
pub struct GuestHost {
    router: Arc<Router>,
    server: Option<Arc<FunctionServer>>,
    stats: Option<Arc<FunctionStats>>,
    calls: HashMap<u32, Call>,
    next_handle: u32,
    current: Option<IncomingRequest>,
}

/// A call in flight, and what its end is counted with.
struct Call {
    pending: Box<dyn PendingReply>,
    counter: Option<CallCounter>,
    started: Instant,
    bytes_out: usize,
}

impl GuestHost {
    /// `server` and `stats` are shared by every handler instance of a
    /// serving container.
    pub fn new(router: Arc<Router>, server: Option<Arc<FunctionServer>>, stats: Option<Arc<FunctionStats>>) -> Self {
        Self { router, server, stats, calls: HashMap::new(), next_handle: 1, current: None }
    }

    /// Counts a call that ended (once: its counter is taken).
    fn count(&self, call: &mut Call, status: Status, bytes_in: usize) {
        if let (Some(stats), Some(counter)) = (&self.stats, call.counter.take()) {
            stats.record_call(counter, status, call.bytes_out, bytes_in, call.started.elapsed());
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts a call; `timeout` overrides the function's deadline.
    pub fn call_start(&mut self, peer: &[u8], request: &[u8], timeout: Option<Duration>) -> Result<u32, Status> {
        let peer = std::str::from_utf8(peer).map_err(|_| Status::BadName)?;
        let started = Instant::now();
        let deadline = self.router.deadline(timeout);
        let (mode, pending) = match self.router.call(peer, request, deadline) {
            Ok(routed) => routed,
            Err(e) => {
                let status = self.report("call", peer, e);
                if let Some(stats) = &self.stats {
                    let counter = stats.counter(peer, None);
                    stats.record_call(counter, status, request.len(), 0, started.elapsed());
                }
                return Err(status);
            }
        };
        let counter = self.stats.as_ref().map(|stats| stats.counter(peer, Some(mode)));
        let handle = self.next_handle;
        self.next_handle = self.next_handle.checked_add(1).unwrap_or(1);
        self.calls.insert(handle, Call { pending, counter, started, bytes_out: request.len() });
        Ok(handle)
    }

    pub fn call_wait(&mut self, handle: u32) -> Result<u32, Status> {
        let mut call = self.calls.remove(&handle).ok_or(Status::BadHandle)?;
        match call.pending.wait() {
            Ok(len) => {
                self.count(&mut call, Status::Ok, len);
                self.calls.insert(handle, call);
                u32::try_from(len).map_err(|_| Status::TooLarge)
            }
            Err(e) => {
                let status = self.report("reply", "", e);
                self.count(&mut call, status, 0);
                Err(status)
            }
        }
    }

    /// `out` must be exactly the reply's length (as `call_wait` returned).
    pub fn call_read(&mut self, handle: u32, out: &mut [u8]) -> Result<(), Status> {
        let mut call = self.calls.remove(&handle).ok_or(Status::BadHandle)?;
        let len = match call.pending.wait() {
            Ok(len) => len,
            Err(e) => {
                let status = self.report("reply", "", e);
                self.count(&mut call, status, 0);
                return Err(status);
            }
        };
        if len != out.len() {
            self.calls.insert(handle, call);
            return Err(Status::LengthMismatch);
        }
        self.count(&mut call, Status::Ok, len);
        call.pending.read_into(out).map_err(|e| self.report("reply", "", e))
    }

    pub fn serve_next(&mut self) -> Result<u32, Status> {
        let server = self.server.as_ref().ok_or(Status::NotServing)?;
        if let Some(unanswered) = self.current.take() {
            // The handler asked for the next request without answering this one.
            let _ = unanswered.fail("the handler did not reply");
            self.count_answer(false, 0);
        }
        let request = server.next_request();
        let len = u32::try_from(request.len()).map_err(|_| Status::TooLarge)?;
        if let Some(stats) = &self.stats {
            stats.request_taken(request.len());
        }
        self.current = Some(request);
        Ok(len)
    }

    fn count_answer(&self, ok: bool, bytes_out: usize) {
        if let Some(stats) = &self.stats {
            stats.request_answered(ok, bytes_out as u64);
        }
    }

    pub fn serve_read(&mut self, out: &mut [u8]) -> Result<(), Status> {
        let request = self.current.as_ref().ok_or(Status::NoRequest)?;
        if request.len() != out.len() as u64 {
            return Err(Status::LengthMismatch);
        }
        if let Err(e) = request.read_into(out) {
            self.current = None;
            return Err(self.report("request", "", e));
        }
        Ok(())
    }

    pub fn serve_reply(&mut self, reply: &[u8]) -> Result<(), Status> {
        let request = self.current.take().ok_or(Status::NoRequest)?;
        let sent = request.reply(reply);
        self.count_answer(sent.is_ok(), reply.len());
        sent.map_err(|e| self.report("reply to", "", e))
    }

    pub fn serve_fail(&mut self, message: &[u8]) -> Result<(), Status> {
        let request = self.current.take().ok_or(Status::NoRequest)?;
        let sent = request.fail(&String::from_utf8_lossy(message));
        self.count_answer(false, message.len());
        sent.map_err(|e| self.report("reply to", "", e))
    }

    fn report(&self, what: &str, peer: &str, error: CallError) -> Status {
        let status = error.status();
        match status {
            Status::Forbidden | Status::UnknownPeer | Status::SelfCall => {
                tracing::warn!(peer = %peer, "{what} failed: {error}")
            }
            _ => tracing::info!(peer = %peer, "{what} failed: {error}"),
        }
        status
    }
}
