//! Embedded mode on wasmtime: peers shipped in the caller's image run in the
//! caller's process, each in its own store (own memory drawn from the
//! container's budget, own WASI context, own `GuestHost`).
//!
//! A peer is an ordinary serving module (`cwasi_guest::serve`), served by
//! the same `GuestHost` code as a container's guest, from an
//! [`InProcessSource`]. It runs as a wasmtime async call polled by hand:
//! when it asks for the next request (`serve_next`) and none is offered,
//! its fiber suspends and the peer stays *parked*, ready for the next call
//! without instantiating again. A call offers the caller's request, resumes
//! the peer once (the first call also instantiates it), and the peer copies
//! the request straight from the caller's memory, runs its handler, records
//! where its reply lies, and parks again. The caller then copies the reply
//! straight from the peer's memory: one copy each way.
//!
//! The peer's WASI is the asynchronous one, never blocking the caller's
//! thread: a sleep waits on a timer, file work on a blocking thread of the
//! peers' own runtime. The caller sleeps meanwhile until that host call can
//! go on or the call's deadline passes; then the peer is dropped where it
//! stands (its host call with it) and the call ends with `Timeout`. Compute
//! is stopped at the deadline by epoch interruption (`deadline`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use cwasi_comm::idle_peers::{IdlePeers, InstanceSlot, PeerInstance};
use cwasi_comm::in_process::InProcessSource;
use cwasi_comm::{CallError, GuestHost, Mode, Payload, PeerHosts, PendingReply, TraceContext, Transport};
use cwasi_engine::{DeniedGrowth, EmbeddedModule, MemoryBudget, PinnedDir};
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::deadline::{self, DeadlinePassed, EpochTicker};
use crate::host_api::Waiting;
use crate::limits::GuestLimiter;
use crate::module_loader;

/// Store data of an embedded peer.
pub(crate) struct PeerState {
    wasi: WasiP1Ctx,
    limiter: GuestLimiter,
    host: GuestHost,
    /// What its callers offer it (its host serves from it too).
    requests: Arc<InProcessSource>,
}

type PeerRun = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>;

/// A peer instance, suspended in `serve_next` (or not started yet).
struct ParkedPeer {
    run: PeerRun,
    requests: Arc<InProcessSource>,
    /// Set when its memory limit refused it a growth.
    denied: DeniedGrowth,
    memory: MemoryBudget,
    _slot: InstanceSlot,
}

impl PeerInstance for ParkedPeer {
    fn requests(&self) -> &InProcessSource {
        &self.requests
    }
}

/// Wakes a caller asleep in [`ParkedPeer::resume`] when its peer's host
/// call can go on.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's waker, made once: a call costs no allocation for it.
    static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
}

impl ParkedPeer {
    /// Lets the peer run until it parks again, at most until `deadline`
    /// (a peer waiting in a host call then is dropped by the caller).
    fn resume(&mut self, peer: &str, deadline: Instant, io: &tokio::runtime::Handle) -> Result<(), CallError> {
        // Its host calls find their timers and blocking threads here.
        let _io = io.enter();
        WAKER.with(|waker| {
            let mut context = Context::from_waker(waker);
            loop {
                match self.run.as_mut().poll(&mut context) {
                    // Waiting in `serve_next` for the next request.
                    Poll::Pending if self.requests.parked_with_answer() => return Ok(()),
                    Poll::Pending => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(CallError::Timeout(format!(
                                "embedded peer {peer} still waited in a host call at the call's deadline"
                            )));
                        }
                        // An unpark that came early, or a stale one, only costs a loop.
                        std::thread::park_timeout(left);
                    }
                    Poll::Ready(done) => return Err(self.ended(peer, done)),
                }
            }
        })
    }

    /// Why a run that ended before parking again failed the call.
    fn ended(&self, peer: &str, done: wasmtime::Result<()>) -> CallError {
        match done {
            Ok(()) => CallError::PeerFailed(format!("embedded peer {peer} returned instead of serving")),
            Err(e) if e.downcast_ref::<DeadlinePassed>().is_some() => {
                CallError::Timeout(format!("embedded peer {peer} still ran at the call's deadline"))
            }
            Err(e) => CallError::PeerFailed(match e.downcast_ref::<I32Exit>() {
                Some(exit) => format!("embedded peer {peer} exited with status {}", exit.0),
                None => match self.denied.explain(&self.memory) {
                    Some(why) => format!("embedded peer {peer} exceeded its memory limit: {why}; it trapped: {e}"),
                    None => format!("embedded peer {peer} trapped: {e:?}"),
                },
            }),
        }
    }
}

/// A peer's compiled module, ready to instantiate, and what it sees.
#[derive(Clone)]
struct PeerTemplate {
    instance: InstancePre<PeerState>,
    module: EmbeddedModule,
    /// Its directories, opened at start.
    dirs: Arc<Vec<PinnedDir>>,
}

/// The embedded peers of one guest, compiled and ready to instantiate.
pub(crate) struct LoadedPeers {
    engine: Engine,
    templates: HashMap<String, PeerTemplate>,
    ticker: EpochTicker,
    io: PeerIo,
}

/// The embedded peers of one guest, running.
pub(crate) struct WasmtimeEmbedded {
    loaded: LoadedPeers,
    /// The container's memory budget, shared with the guest.
    memory: MemoryBudget,
    hosts: PeerHosts,
    idle: IdlePeers<ParkedPeer>,
}

/// Runs the timers and blocking file work of the peers' host calls.
struct PeerIo(Option<tokio::runtime::Runtime>);

impl PeerIo {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cwasi-peer-io")
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("starting the embedded peers' I/O runtime: {e}"))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("taken only in drop").handle()
    }
}

impl Drop for PeerIo {
    fn drop(&mut self) {
        // Never waits: a peer dropped at its deadline may have left a thread
        // blocked for good (a read of a pipe nobody writes).
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl LoadedPeers {
    /// Compiles (or loads from the cache) every peer's module up front, so a
    /// missing or broken peer is reported at start, not at the first call.
    pub(crate) fn load(
        engine: &Engine,
        compat: &str,
        peers: &[EmbeddedModule],
        cache_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut linker: Linker<PeerState> = Linker::new(engine);
        p1::add_to_linker_async(&mut linker, |state: &mut PeerState| &mut state.wasi)?;
        crate::host_api::add_to_linker(&mut linker, |state: &mut PeerState| &mut state.host, Waiting::Parks)?;
        let mut templates = HashMap::new();
        for peer in peers {
            let (module, _) = module_loader::load(engine, compat, &peer.module, cache_dir)?;
            let template = linker
                .instantiate_pre(&module)
                .map_err(anyhow::Error::from)
                .map_err(|e| e.context(format!("embedded peer {} ({})", peer.name, peer.module.display())))?;
            let dirs = peer.preopens.iter().map(PinnedDir::open).collect::<anyhow::Result<Vec<_>>>()?;
            let template = PeerTemplate { instance: template, module: peer.clone(), dirs: Arc::new(dirs) };
            templates.insert(peer.name.clone(), template);
        }
        let ticker = EpochTicker::start(engine).map_err(|e| anyhow::anyhow!("starting the epoch ticker: {e}"))?;
        let io = PeerIo::start()?;
        Ok(Self { engine: engine.clone(), templates, ticker, io })
    }
}

impl WasmtimeEmbedded {
    /// Runs `loaded`'s peers within the container's `memory`, each instance
    /// with a host from `hosts`.
    pub(crate) fn new(loaded: LoadedPeers, memory: MemoryBudget, hosts: PeerHosts) -> Self {
        Self { loaded, memory, hosts, idle: IdlePeers::default() }
    }

    /// A new instance of `peer`, not started: its first resume instantiates
    /// it and runs it to its first `serve_next`, which takes the request
    /// offered by then.
    fn new_instance(&self, peer: &str) -> Result<ParkedPeer, CallError> {
        let slot = self.idle.reserve(peer)?;
        let template = self
            .loaded
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
            // A sleep or a file read would otherwise block the caller's
            // thread, out of reach of the call's deadline.
            .allow_blocking_current_thread(false);
        for dir in template.dirs.iter() {
            crate::preopen::add_preopen(&mut wasi, dir.preopen())
                .map_err(|e| CallError::PeerFailed(format!("embedded peer {peer}: {e:#}")))?;
        }
        let requests = Arc::new(InProcessSource::default());
        let limiter = GuestLimiter::new(&self.memory);
        let denied = limiter.denied().clone();
        let host = self.hosts.host(peer, requests.clone());
        let state = PeerState { wasi: wasi.build_p1(), limiter, host, requests: requests.clone() };
        let mut store = Store::new(&self.loaded.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(deadline::check_every_tick(|state: &PeerState| state.requests.deadline()));
        store.set_epoch_deadline(1);
        let run: PeerRun = Box::pin(async move {
            let instance = template.instance.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        });
        tracing::debug!(peer, "embedded peer instantiated");
        Ok(ParkedPeer { run, requests, denied, memory: self.memory.clone(), _slot: slot })
    }
}

impl Transport for WasmtimeEmbedded {
    fn mode(&self) -> Mode {
        Mode::Embedded
    }

    fn send(
        &self,
        peer: &str,
        request: Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        if !self.loaded.templates.contains_key(peer) {
            return Ok(None);
        }
        // Deadlines are checked at epoch ticks, which run only around calls.
        let _ticking = self.loaded.ticker.running();
        let mut parked = match self.idle.take(peer) {
            Some(parked) => parked,
            None => self.new_instance(peer)?,
        };
        // `request` stays borrowed until the peer parked again (resume returned).
        parked.requests.offer(request, deadline, trace);
        if let Err(e) = parked.resume(peer, deadline, self.loaded.io.handle()) {
            // It reads nothing of `request` from here on; dropped (trapped,
            // exited or out of time), the next call starts a new one.
            let _ = parked.requests.withdraw();
            return Err(e);
        }
        self.idle.answer(peer, parked).map(Some)
    }

    fn target(&self, peer: &str) -> String {
        self.loaded.templates.get(peer).map(|t| t.module.module.display().to_string()).unwrap_or_default()
    }
}
