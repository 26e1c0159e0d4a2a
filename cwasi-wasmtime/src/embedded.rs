//! Embedded mode on wasmtime: peers shipped in the caller's image run in the
//! caller's process, each in its own store (own memory, WASI context, limit).
//!
//! A peer is an ordinary serving module (`cwasi_guest::serve`). It runs as
//! a wasmtime async call polled by hand: when it asks for the next request
//! (`serve_next`) and none is offered, its fiber suspends and the peer stays
//! *parked*, ready for the next call without instantiating again. A call
//! offers the caller's request, resumes the peer once, and the peer copies
//! the request straight from the caller's memory, runs its handler, records
//! where its reply lies, and parks again. The caller then copies the reply
//! straight from the peer's memory: one copy each way.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use cwasi_comm::{CallError, EmbeddedPeers, GuestHost, PeerHosts, PendingReply, TraceContext};
use cwasi_engine::{EmbeddedModule, MemoryBudget};
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::deadline::{self, DeadlinePassed, EpochTicker};
use crate::limits::{DeniedGrowth, GuestLimiter};
use crate::module_loader;

/// Store data of an embedded peer.
pub(crate) struct PeerState {
    wasi: WasiP1Ctx,
    limiter: GuestLimiter,
    pub(crate) exchange: Arc<Exchange>,
    /// Its own calls.
    pub(crate) host: GuestHost,
}

/// Bytes in some linear memory, valid only under the rules of [`Exchange`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a RawBytes is only dereferenced by the thread that runs the
// exchange (the caller's thread polls the peer), never concurrently; it is a
// plain address that may move between threads with the store that uses it.
unsafe impl Send for RawBytes {}

impl RawBytes {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What passes between a call and the parked peer that serves it.
///
/// Rules that keep the raw pointers sound: a request is offered only for the
/// duration of one `resume` inside [`EmbeddedPeers::call`], which holds the
/// caller's request slice borrowed all that time; a reply points into the
/// peer's memory and is read only while the peer is parked (it cannot run,
/// so it can neither grow nor write its memory) and before it is resumed.
#[derive(Default)]
pub(crate) struct Exchange {
    state: Mutex<ExchangeState>,
}

#[derive(Default)]
struct ExchangeState {
    /// The deadline of the call being served; the peer traps past it.
    deadline: Option<Instant>,
    /// The call being served, as it was made.
    trace: Option<TraceContext>,
    request: Option<RawBytes>,
    request_taken: bool,
    reply: Option<RawBytes>,
    failure: Option<String>,
}

/// How a call ended, once the peer parked again.
enum Outcome {
    Reply(RawBytes),
    Failure(String),
    NoAnswer,
}

impl Exchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offer(&self, request: &[u8], deadline: Instant, trace: TraceContext) {
        let mut state = self.lock();
        *state = ExchangeState {
            request: Some(RawBytes::new(request)),
            deadline: Some(deadline),
            trace: Some(trace),
            ..Default::default()
        };
    }

    /// The call being served: its deadline and trace.
    pub(crate) fn call(&self) -> Option<(Instant, TraceContext)> {
        let state = self.lock();
        state.deadline.zip(state.trace)
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        self.lock().deadline = deadline;
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    fn withdraw(&self) -> Outcome {
        let mut state = self.lock();
        state.request = None;
        match (state.reply.take(), state.failure.take()) {
            (Some(reply), _) => Outcome::Reply(reply),
            (None, Some(message)) => Outcome::Failure(message),
            (None, None) => Outcome::NoAnswer,
        }
    }

    /// `serve_next`: the offered request's length, or not yet (the peer parks).
    pub(crate) fn poll_request(&self) -> Poll<usize> {
        let mut state = self.lock();
        match state.request {
            Some(request) if !state.request_taken => {
                state.request_taken = true;
                state.reply = None;
                state.failure = None;
                Poll::Ready(request.len)
            }
            _ => Poll::Pending,
        }
    }

    /// `serve_read`: the request being served.
    pub(crate) fn request(&self) -> Option<RawBytes> {
        let state = self.lock();
        state.request.filter(|_| state.request_taken)
    }

    /// Copies the offered request into `out` (the peer's memory).
    pub(crate) fn copy_request(request: RawBytes, out: &mut [u8]) {
        debug_assert_eq!(request.len, out.len());
        // SAFETY: `request` was offered by `call`, which keeps the caller's
        // slice borrowed until it withdraws the offer after this resume; the
        // peer's memory (`out`) is a different store's memory, so the two
        // never overlap; lengths are equal (checked by the caller of this fn).
        unsafe { std::ptr::copy_nonoverlapping(request.ptr, out.as_mut_ptr(), request.len) };
    }

    pub(crate) fn set_reply(&self, reply: RawBytes) {
        self.lock().reply = Some(reply);
    }

    pub(crate) fn set_failure(&self, message: String) {
        self.lock().failure = Some(message);
    }
}

type PeerRun = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>;

/// A peer instance suspended in `serve_next`.
struct ParkedPeer {
    run: PeerRun,
    exchange: Arc<Exchange>,
    /// Set when its memory limit refused it a growth.
    denied: DeniedGrowth,
    memory: MemoryBudget,
}

impl ParkedPeer {
    /// Lets the peer run until it parks again.
    fn resume(&mut self, peer: &str) -> Result<(), CallError> {
        let mut context = Context::from_waker(Waker::noop());
        match self.run.as_mut().poll(&mut context) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                Err(CallError::PeerFailed(format!("embedded peer {peer} returned instead of serving")))
            }
            Poll::Ready(Err(e)) if e.downcast_ref::<DeadlinePassed>().is_some() => {
                Err(CallError::Timeout(format!("embedded peer {peer} still ran at the call's deadline")))
            }
            Poll::Ready(Err(e)) => Err(CallError::PeerFailed(match e.downcast_ref::<I32Exit>() {
                Some(exit) => format!("embedded peer {peer} exited with status {}", exit.0),
                None => match self.denied.explain(&self.memory) {
                    Some(why) => format!("embedded peer {peer} exceeded its memory limit: {why}; it trapped: {e}"),
                    None => format!("embedded peer {peer} trapped: {e:?}"),
                },
            })),
        }
    }
}

type IdlePeers = Arc<Mutex<HashMap<String, Vec<ParkedPeer>>>>;

/// A peer's compiled module, ready to instantiate, and what it sees.
#[derive(Clone)]
struct PeerTemplate {
    instance: InstancePre<PeerState>,
    module: EmbeddedModule,
}

/// The embedded peers of one guest.
pub(crate) struct WasmtimeEmbedded {
    engine: Engine,
    templates: HashMap<String, PeerTemplate>,
    /// The container's memory budget, shared with the guest.
    memory: MemoryBudget,
    hosts: Arc<PeerHosts>,
    idle: IdlePeers,
    ticker: EpochTicker,
}

impl WasmtimeEmbedded {
    /// Compiles (or loads from the cache) every peer's module up front, so a
    /// missing or broken peer is reported at start, not at the first call.
    pub(crate) fn new(
        engine: &Engine,
        compat: &str,
        peers: &[EmbeddedModule],
        cache_dir: Option<&std::path::Path>,
        memory: MemoryBudget,
        hosts: Arc<PeerHosts>,
    ) -> anyhow::Result<Self> {
        let mut linker: Linker<PeerState> = Linker::new(engine);
        p1::add_to_linker_sync(&mut linker, |state: &mut PeerState| &mut state.wasi)?;
        crate::embedded_host::add_to_linker(&mut linker)?;
        let mut templates = HashMap::new();
        for peer in peers {
            let (module, _) = module_loader::load(engine, compat, &peer.module, cache_dir)?;
            let template = linker
                .instantiate_pre(&module)
                .map_err(anyhow::Error::from)
                .map_err(|e| e.context(format!("embedded peer {} ({})", peer.name, peer.module.display())))?;
            templates.insert(peer.name.clone(), PeerTemplate { instance: template, module: peer.clone() });
        }
        let ticker = EpochTicker::start(engine).map_err(|e| anyhow::anyhow!("starting the epoch ticker: {e}"))?;
        Ok(Self { engine: engine.clone(), templates, memory, hosts, idle: Arc::default(), ticker })
    }

    fn take_idle(&self, peer: &str) -> Option<ParkedPeer> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).get_mut(peer)?.pop()
    }

    /// Instantiates `peer` and runs it until it parks, waiting for a request
    /// (by `deadline`, when given).
    fn spawn(&self, peer: &str, deadline: Option<Instant>) -> Result<ParkedPeer, CallError> {
        let template = self
            .templates
            .get(peer)
            .ok_or_else(|| CallError::UnknownPeer(format!("{peer} (not embedded in this image)")))?
            .clone();
        // Its own WASI context: its name as argv, the environment and
        // read-only directories its settings give it; what it prints goes
        // to the container's output.
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&[peer])
            .envs(&template.module.env)
            .inherit_stdout()
            .inherit_stderr()
            .allow_blocking_current_thread(true);
        for preopen in &template.module.preopens {
            crate::run::add_preopen(&mut wasi, preopen)
                .map_err(|e| CallError::PeerFailed(format!("embedded peer {peer}: {e:#}")))?;
        }
        let wasi = wasi.build_p1();
        let exchange = Arc::new(Exchange::default());
        let limiter = GuestLimiter::new(&self.memory);
        let denied = limiter.denied().clone();
        let host = self.hosts.host(peer);
        let mut store = Store::new(&self.engine, PeerState { wasi, limiter, exchange: exchange.clone(), host });
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(deadline::check_every_tick(|state: &PeerState| state.exchange.deadline()));
        store.set_epoch_deadline(1);
        exchange.set_deadline(deadline);
        let run: PeerRun = Box::pin(async move {
            let instance = template.instance.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        });
        let mut parked = ParkedPeer { run, exchange, denied, memory: self.memory.clone() };
        parked.resume(peer)?;
        tracing::debug!(peer, "embedded peer instantiated");
        Ok(parked)
    }
}

impl EmbeddedPeers for WasmtimeEmbedded {
    fn call(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        // Deadlines are checked at epoch ticks, which run only around calls.
        let _ticking = self.ticker.running();
        let mut parked = match self.take_idle(peer) {
            Some(parked) => parked,
            None => self.spawn(peer, Some(deadline))?,
        };
        parked.exchange.offer(request, deadline, trace);
        let resumed = parked.resume(peer);
        let outcome = parked.exchange.withdraw();
        // A peer that trapped or exited is dropped here; the next call starts a new one.
        resumed?;
        match outcome {
            Outcome::Reply(reply) => Ok(Box::new(EmbeddedReply {
                parked: Some(parked),
                reply,
                peer: peer.to_owned(),
                idle: self.idle.clone(),
            })),
            Outcome::Failure(message) => {
                park(&self.idle, peer, parked);
                Err(CallError::PeerFailed(message))
            }
            Outcome::NoAnswer => {
                Err(CallError::PeerFailed(format!("embedded peer {peer} asked for the next request without answering")))
            }
        }
    }
}

fn park(idle: &IdlePeers, peer: &str, parked: ParkedPeer) {
    idle.lock().unwrap_or_else(|e| e.into_inner()).entry(peer.to_owned()).or_default().push(parked);
}

/// A reply waiting in a parked peer's memory.
struct EmbeddedReply {
    parked: Option<ParkedPeer>,
    reply: RawBytes,
    peer: String,
    idle: IdlePeers,
}

impl PendingReply for EmbeddedReply {
    fn wait(&mut self) -> Result<usize, CallError> {
        Ok(self.reply.len)
    }

    fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        if out.len() != self.reply.len {
            return Err(CallError::Protocol(format!("reply is {} bytes, buffer {}", self.reply.len, out.len())));
        }
        // SAFETY: `reply` points into the memory of the peer held in
        // `self.parked`, which is parked: it does not run until resumed by a
        // later call, which cannot happen before we return it to the pool
        // (on drop, below). `out` is the caller's memory, a different store.
        unsafe { std::ptr::copy_nonoverlapping(self.reply.ptr, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

impl Drop for EmbeddedReply {
    fn drop(&mut self) {
        if let Some(parked) = self.parked.take() {
            park(&self.idle, &self.peer, parked);
        }
    }
}
