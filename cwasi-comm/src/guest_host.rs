//! The guest ABI (`cwasi-abi`) implemented on byte slices: engines resolve
//! and bounds-check guest pointers, then call these methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use cwasi_abi::Status;

use crate::in_process::InProcessSource;
use crate::log_budget::LogBudget;
use crate::pages::SharedTable;
use crate::stats::{CallCounter, FunctionStats, LastCounter};
use crate::trace::TraceContext;
use crate::{CallError, FunctionServer, IncomingRequest, Mode, Payload, PendingReply, Router};

/// The `tracing` target of the `call` and `served` events (debug level): one
/// per call made and per request served, with trace ids, outcome and time.
/// Log filters and the shim's span export select them by it.
pub const CALL_EVENTS_TARGET: &str = "cwasi::calls";

/// Per-guest state behind the `cwasi` imports: a container's guest (or one
/// of its handler instances), or an embedded peer instance.
pub struct GuestHost {
    router: Arc<Router>,
    requests: Requests,
    stats: Option<Arc<FunctionStats>>,
    calls: HashMap<u32, Call>,
    next_handle: u32,
    current: Option<Serving>,
    last_counter: LastCounter,
    /// Failures logged: a guest looping on a refused call writes a few
    /// lines a second, with the count of those left out.
    failures_logged: LogBudget,
    /// Buffers the guest shared to give to another process (`pages_share`).
    shared_pages: SharedTable,
}

/// Where the guest's requests come from.
enum Requests {
    /// It does not serve (`cwasi.io/serve` is not `true`).
    None,
    /// Its container's server: this node's callers and other nodes'.
    Server(Arc<FunctionServer>),
    /// Its caller in this process (an embedded peer).
    InProcess(Arc<InProcessSource>),
}

/// A call in flight, and what its end is counted and logged with.
struct Call {
    pending: Box<dyn PendingReply>,
    counter: Option<CallCounter>,
    started: Instant,
    bytes_out: usize,
    mode: Mode,
    trace: TraceContext,
    /// The peer's name, kept only when calls are logged (debug).
    logged_peer: Option<Box<str>>,
    ended: bool,
}

/// The request the handler is serving, since when (only when requests are
/// logged), and the span of serving it (a child of the caller's; none when
/// the caller sent no context).
struct Serving {
    request: IncomingRequest,
    since: Option<Instant>,
    trace: Option<TraceContext>,
}

/// What is logged of a request once its answer consumed it.
struct Ended {
    trace: Option<TraceContext>,
    since: Option<Instant>,
    bytes_in: u64,
}

/// Whether calls and served requests are logged (or exported as spans): the
/// `call`/`served` events and what only they need are made only then.
fn calls_logged() -> bool {
    tracing::enabled!(target: CALL_EVENTS_TARGET, tracing::Level::DEBUG)
}

impl Serving {
    fn take(request: IncomingRequest) -> Self {
        let trace = request.trace().map(|caller| TraceContext::new_span(Some(&caller)));
        Self { request, since: calls_logged().then(Instant::now), trace }
    }

    /// Splits off what is logged once the answer consumed the request.
    fn end(self) -> (IncomingRequest, Ended) {
        let ended = Ended { trace: self.trace, since: self.since, bytes_in: self.request.len() };
        (self.request, ended)
    }
}

impl GuestHost {
    /// `server` and `stats` are shared by every handler instance of a
    /// serving container.
    pub(crate) fn new(
        router: Arc<Router>,
        server: Option<Arc<FunctionServer>>,
        stats: Option<Arc<FunctionStats>>,
    ) -> Self {
        Self::with_requests(router, server.map_or(Requests::None, Requests::Server), stats)
    }

    /// The host of an embedded peer instance, served through `source`.
    pub(crate) fn embedded_peer(
        router: Arc<Router>,
        source: Arc<InProcessSource>,
        stats: Option<Arc<FunctionStats>>,
    ) -> Self {
        Self::with_requests(router, Requests::InProcess(source), stats)
    }

    fn with_requests(router: Arc<Router>, requests: Requests, stats: Option<Arc<FunctionStats>>) -> Self {
        Self {
            router,
            requests,
            stats,
            calls: HashMap::new(),
            next_handle: 1,
            current: None,
            last_counter: LastCounter::default(),
            failures_logged: LogBudget::new(),
            shared_pages: SharedTable::default(),
        }
    }

    /// Counts and logs a call that ended (once).
    fn count(&self, call: &mut Call, status: Status, bytes_in: usize) {
        if std::mem::replace(&mut call.ended, true) {
            return;
        }
        let elapsed = call.started.elapsed();
        if let (Some(stats), Some(counter)) = (&self.stats, call.counter.take()) {
            stats.record_call(counter, status, call.bytes_out, bytes_in, elapsed);
        }
        if let Some(peer) = &call.logged_peer {
            let trace = &call.trace;
            tracing::debug!(
                target: CALL_EVENTS_TARGET,
                peer = %peer,
                mode = %call.mode,
                status = status.name(),
                elapsed_us = elapsed.as_micros() as u64,
                bytes_out = call.bytes_out,
                bytes_in,
                trace_id = %trace.trace_id(),
                span_id = %trace.span_id(),
                parent_id = trace.parent_id().map(tracing::field::display),
                "call"
            );
        }
    }

    /// The trace context of a call made now: a child of the serving of the
    /// current request, else a new trace.
    fn trace_for_call(&self) -> TraceContext {
        TraceContext::new_span(self.current.as_ref().and_then(|serving| serving.trace.as_ref()))
    }

    /// Starts a call; `timeout` overrides the function's deadline.
    pub fn call_start(
        &mut self,
        peer: &[u8],
        mut request: Payload<'_>,
        timeout: Option<Duration>,
    ) -> Result<u32, Status> {
        self.find_shared_pages(&mut request);
        // A name no function can have is refused before it reaches a log line.
        let peer = std::str::from_utf8(peer).ok().filter(|p| crate::annotations::is_function_name(p));
        let peer = peer.ok_or(Status::BadName)?;
        let started = Instant::now();
        let deadline = self.router.deadline(timeout);
        // No call outlives the request being served, when its caller said when it gives up.
        let serving_until = self.current.as_ref().and_then(|serving| serving.request.deadline());
        let deadline = serving_until.map_or(deadline, |until| deadline.min(until));
        let trace = self.trace_for_call();
        let bytes_out = request.len();
        let (mode, pending) = match self.router.call(peer, request, deadline, trace) {
            Ok(routed) => routed,
            Err(e) => {
                let status = self.report("call", peer, Some(&trace), e);
                if let Some(stats) = &self.stats {
                    let counter = self.last_counter.get(stats, peer, None);
                    stats.record_call(counter, status, bytes_out, 0, started.elapsed());
                }
                return Err(status);
            }
        };
        let counter = self.stats.as_ref().map(|stats| self.last_counter.get(stats, peer, Some(mode)));
        let logged_peer = calls_logged().then(|| peer.into());
        let handle = self.next_handle;
        self.next_handle = self.next_handle.checked_add(1).unwrap_or(1);
        let call = Call { pending, counter, started, bytes_out, mode, trace, logged_peer, ended: false };
        self.calls.insert(handle, call);
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
                let status = self.report("reply", "", Some(&call.trace), e);
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
                let status = self.report("reply", "", Some(&call.trace), e);
                self.count(&mut call, status, 0);
                return Err(status);
            }
        };
        if len != out.len() {
            self.calls.insert(handle, call);
            return Err(Status::LengthMismatch);
        }
        self.count(&mut call, Status::Ok, len);
        let trace = call.trace;
        // The reply's pages may be mapped over `out`.
        self.shared_pages.forget(out);
        call.pending.read_into(out).map_err(|e| self.report("reply", "", Some(&trace), e))
    }

    /// Waits for the next request (blocking the thread).
    pub fn serve_next(&mut self) -> Result<u32, Status> {
        self.end_unanswered();
        let request = match &self.requests {
            Requests::None => return Err(Status::NotServing),
            Requests::Server(server) => server.next_request(),
            // Closed: its engine is ending it.
            Requests::InProcess(source) => IncomingRequest::in_process(source.next().ok_or(Status::NotServing)?),
        };
        self.begin_serving(request)
    }

    /// [`GuestHost::serve_next`] for an engine that parks an embedded peer
    /// (suspends it) rather than block its thread: `Pending` until its
    /// caller offers a request. Other guests block as in `serve_next`.
    pub fn poll_serve_next(&mut self) -> Poll<Result<u32, Status>> {
        if !matches!(self.requests, Requests::InProcess(_)) {
            return Poll::Ready(self.serve_next());
        }
        self.end_unanswered();
        let Requests::InProcess(source) = &self.requests else { return Poll::Ready(Err(Status::NotServing)) };
        source.poll_next().map(|request| self.begin_serving(IncomingRequest::in_process(request)))
    }

    /// The handler asked for the next request without answering this one.
    fn end_unanswered(&mut self) {
        if let Some(serving) = self.current.take() {
            let (request, ended) = serving.end();
            let sent = request.fail("the handler did not reply");
            self.finish_serving(ended, false, 0, sent.is_ok());
        }
    }

    fn begin_serving(&mut self, request: IncomingRequest) -> Result<u32, Status> {
        let len = u32::try_from(request.len()).map_err(|_| Status::TooLarge)?;
        if let Some(stats) = self.served_stats() {
            stats.request_taken(request.len());
        }
        self.current = Some(Serving::take(request));
        Ok(len)
    }

    /// The counters of requests served: its container's, only for what its
    /// container's server took (an embedded peer's are not the function's).
    fn served_stats(&self) -> Option<&FunctionStats> {
        matches!(self.requests, Requests::Server(_)).then_some(self.stats.as_deref()).flatten()
    }

    /// Counts and logs a request whose answer went out (`sent`) or not.
    fn finish_serving(&self, ended: Ended, replied: bool, bytes_out: usize, sent: bool) {
        if let Some(stats) = self.served_stats() {
            stats.request_answered(replied && sent, bytes_out as u64);
        }
        let (trace, Some(since)) = (ended.trace, ended.since) else { return };
        tracing::debug!(
            target: CALL_EVENTS_TARGET,
            outcome = if !sent {
                "undelivered"
            } else if replied {
                "replied"
            } else {
                "failed"
            },
            elapsed_us = since.elapsed().as_micros() as u64,
            bytes_in = ended.bytes_in,
            bytes_out,
            trace_id = trace.map(|t| tracing::field::display(t.trace_id())),
            span_id = trace.map(|t| tracing::field::display(t.span_id())),
            parent_id = trace.and_then(|t| t.parent_id()).map(tracing::field::display),
            "served"
        );
    }

    pub fn serve_read(&mut self, out: &mut [u8]) -> Result<(), Status> {
        let serving = self.current.as_ref().ok_or(Status::NoRequest)?;
        if serving.request.len() != out.len() as u64 {
            return Err(Status::LengthMismatch);
        }
        // The request's pages may be mapped over `out`.
        self.shared_pages.forget(out);
        let serving = self.current.as_ref().ok_or(Status::NoRequest)?;
        if let Err(e) = serving.request.read_into(out) {
            let trace = serving.trace;
            self.current = None;
            return Err(self.report("request", "", trace.as_ref(), e));
        }
        Ok(())
    }

    /// Backs `buf`'s whole pages with memory a peer in another process can
    /// map (`pages_share`); `Transport` when they were not (too few, or the
    /// system refused), which only means they will be copied.
    pub fn pages_share(&mut self, buf: &mut [u8]) -> Result<(), Status> {
        match self.shared_pages.share(buf) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::Transport),
            Err(e) => {
                tracing::debug!(error = %e, bytes = buf.len(), "buffer not shared; it will be copied");
                Err(Status::Transport)
            }
        }
    }

    /// A given payload carries the pages the guest shared for it, if any.
    fn find_shared_pages(&mut self, payload: &mut Payload<'_>) {
        if let Payload::Given { bytes, pages } = payload {
            **pages = self.shared_pages.take(bytes);
        }
    }

    pub fn serve_reply(&mut self, mut reply: Payload<'_>) -> Result<(), Status> {
        let (request, ended) = self.current.take().ok_or(Status::NoRequest)?.end();
        self.find_shared_pages(&mut reply);
        let bytes = reply.len();
        self.answered(ended, true, bytes, request.reply(reply))
    }

    pub fn serve_fail(&mut self, message: &[u8]) -> Result<(), Status> {
        let (request, ended) = self.current.take().ok_or(Status::NoRequest)?.end();
        self.answered(ended, false, message.len(), request.fail(&String::from_utf8_lossy(message)))
    }

    fn answered(&self, ended: Ended, replied: bool, bytes: usize, sent: Result<(), CallError>) -> Result<(), Status> {
        let trace = ended.trace;
        self.finish_serving(ended, replied, bytes, sent.is_ok());
        sent.map_err(|e| self.report("reply to", "", trace.as_ref(), e))
    }

    /// Logs a failure (within the guest's log budget) and returns its status.
    fn report(&self, what: &str, peer: &str, trace: Option<&TraceContext>, error: CallError) -> Status {
        let status = error.status();
        let Some(suppressed) = self.failures_logged.allow() else { return status };
        let trace_id = trace.map(|t| tracing::field::display(t.trace_id()));
        let suppressed = (suppressed > 0).then_some(suppressed);
        match status {
            Status::Forbidden | Status::UnknownPeer | Status::SelfCall => {
                tracing::warn!(peer = %peer, trace_id, suppressed, "{what} failed: {error}")
            }
            _ => tracing::info!(peer = %peer, trace_id, suppressed, "{what} failed: {error}"),
        }
        status
    }
}
