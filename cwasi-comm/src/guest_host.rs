//! The guest ABI (`cwasi-abi`) implemented on byte slices: engines resolve
//! and bounds-check guest pointers, then call these methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cwasi_abi::Status;

use crate::{CallError, FunctionServer, IncomingRequest, PendingReply, Router};

/// Per-guest state behind the `cwasi` imports.
pub struct GuestHost {
    router: Arc<Router>,
    server: Option<Arc<FunctionServer>>,
    calls: HashMap<u32, Box<dyn PendingReply>>,
    next_handle: u32,
    current: Option<IncomingRequest>,
}

impl GuestHost {
    /// `server` is shared by every handler instance of a serving container.
    pub fn new(router: Arc<Router>, server: Option<Arc<FunctionServer>>) -> Self {
        Self { router, server, calls: HashMap::new(), next_handle: 1, current: None }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts a call; `timeout` overrides the function's deadline.
    pub fn call_start(&mut self, peer: &[u8], request: &[u8], timeout: Option<Duration>) -> Result<u32, Status> {
        let peer = std::str::from_utf8(peer).map_err(|_| Status::BadName)?;
        let deadline = self.router.deadline(timeout);
        let pending = self.router.call(peer, request, deadline).map_err(|e| self.report("call", peer, e))?;
        let handle = self.next_handle;
        self.next_handle = self.next_handle.checked_add(1).unwrap_or(1);
        self.calls.insert(handle, pending);
        Ok(handle)
    }

    pub fn call_wait(&mut self, handle: u32) -> Result<u32, Status> {
        let pending = self.calls.get_mut(&handle).ok_or(Status::BadHandle)?;
        match pending.wait() {
            Ok(len) => u32::try_from(len).map_err(|_| Status::TooLarge),
            Err(e) => {
                self.calls.remove(&handle);
                Err(self.report("reply", "", e))
            }
        }
    }

    /// `out` must be exactly the reply's length (as `call_wait` returned).
    pub fn call_read(&mut self, handle: u32, out: &mut [u8]) -> Result<(), Status> {
        let mut pending = self.calls.remove(&handle).ok_or(Status::BadHandle)?;
        let len = pending.wait().map_err(|e| self.report("reply", "", e))?;
        if len != out.len() {
            self.calls.insert(handle, pending);
            return Err(Status::LengthMismatch);
        }
        pending.read_into(out).map_err(|e| self.report("reply", "", e))
    }

    pub fn serve_next(&mut self) -> Result<u32, Status> {
        let server = self.server.as_ref().ok_or(Status::NotServing)?;
        if let Some(unanswered) = self.current.take() {
            // The handler asked for the next request without answering this one.
            let _ = unanswered.fail("the handler did not reply");
        }
        let request = server.next_request();
        let len = u32::try_from(request.len()).map_err(|_| Status::TooLarge)?;
        self.current = Some(request);
        Ok(len)
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
        request.reply(reply).map_err(|e| self.report("reply to", "", e))
    }

    pub fn serve_fail(&mut self, message: &[u8]) -> Result<(), Status> {
        let request = self.current.take().ok_or(Status::NoRequest)?;
        request.fail(&String::from_utf8_lossy(message)).map_err(|e| self.report("reply to", "", e))
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
