//! Embedded mode on WasmEdge: peers shipped in the caller's image run in the
//! caller's process, each instance with its own memory (drawn from the
//! container's budget through the growth gate), WASI context and
//! `GuestHost`.
//!
//! A peer is an ordinary serving module, served by the same `GuestHost` and
//! the same `cwasi` imports as a container's guest, from an
//! [`InProcessSource`]. Its module is read and validated once, at start.
//! An instance runs `_start` on a thread of libwasmedge's asynchronous
//! invocation (`async_run`) and, between calls, waits in `serve_next` on
//! that thread: it is *parked*, ready for the next call without being
//! instantiated again. A call offers the caller's request and waits until
//! the peer parked again: the peer copied the request straight from the
//! caller's memory, and the caller copies the reply straight from the
//! peer's memory, one copy each way. At the call's deadline the run is
//! cancelled and the instance replaced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cwasi_comm::idle_peers::{IdlePeers, InstanceSlot, PeerInstance};
use cwasi_comm::in_process::InProcessSource;
use cwasi_comm::{CallError, GuestHost, Mode, PeerHosts, PendingReply, TraceContext, Transport};
use cwasi_engine::{DeniedGrowth, EmbeddedModule, MemoryBudget, MemoryShare, PinnedDir};
use wasmedge_sdk::config::Config;
use wasmedge_sdk::vm::SyncInst;
use wasmedge_sdk::wasi::WasiModule;
use wasmedge_sdk::{ImportObject, Module, Store, Vm};

use crate::async_run::{AsyncRun, Ran};
use crate::growth_gate::{self, LoadedModule};
use crate::setup::config;

/// How often a call waiting for a peer checks that its run has not ended
/// (a trap or an exit): the peer parking wakes it at once.
const RUN_CHECK: Duration = Duration::from_millis(20);
/// How long a stop waits at a time for a run it cancelled.
const STOP_POLL_MS: u64 = 1000;

pub(crate) struct WasmEdgeEmbedded {
    peers: LoadedPeers,
    /// The container's memory budget, shared with the guest.
    memory: MemoryBudget,
    hosts: PeerHosts,
    idle: IdlePeers<RunningPeer>,
}

/// Every peer's module, read and validated, by name.
pub(crate) struct LoadedPeers(HashMap<String, Peer>);

/// A peer's validated module, and its environment and directories as
/// libwasmedge takes them.
struct Peer {
    module: LoadedModule,
    path: std::path::PathBuf,
    env: Vec<String>,
    /// Its directories through their descriptors, opened at start (held in `_dirs`).
    preopens: Vec<String>,
    _dirs: Vec<PinnedDir>,
}

impl LoadedPeers {
    /// Reads and validates every peer's module up front (once).
    pub(crate) fn load(peers: &[EmbeddedModule], config: &Config) -> anyhow::Result<Self> {
        let mut loaded = HashMap::new();
        for peer in peers {
            let module = growth_gate::load(&peer.module, config)
                .with_context(|| format!("embedded peer {} ({})", peer.name, peer.module.display()))?;
            let env = peer.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let dirs = peer.preopens.iter().map(PinnedDir::open).collect::<anyhow::Result<Vec<_>>>()?;
            let preopens =
                dirs.iter().map(|dir| crate::setup::preopen(dir.preopen())).collect::<anyhow::Result<_>>()?;
            let path = peer.module.clone();
            loaded.insert(peer.name.clone(), Peer { module, path, env, preopens, _dirs: dirs });
        }
        Ok(Self(loaded))
    }
}

impl WasmEdgeEmbedded {
    /// Runs `peers` within the container's `memory`, each instance with a
    /// host from `hosts`.
    pub(crate) fn new(peers: LoadedPeers, memory: MemoryBudget, hosts: PeerHosts) -> Self {
        Self { peers, memory, hosts, idle: IdlePeers::default() }
    }
}

fn failed(peer: &str, what: impl std::fmt::Display) -> CallError {
    CallError::PeerFailed(format!("embedded peer {peer}: {what}"))
}

impl Transport for WasmEdgeEmbedded {
    fn mode(&self) -> Mode {
        Mode::Embedded
    }

    fn send(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        if !self.peers.0.contains_key(peer) {
            return Ok(None);
        }
        let mut instance = match self.idle.take(peer) {
            Some(instance) => instance,
            None => self.new_instance(peer)?,
        };
        let refusals_before = crate::grow_refusals::count();
        // `request` stays borrowed until the offer is withdrawn (after the
        // peer parked, or below: once withdrawn, the peer reads nothing).
        instance.requests.offer(request, deadline, trace);
        loop {
            if instance.requests.wait_parked(deadline.min(Instant::now() + RUN_CHECK)) {
                break;
            }
            if let Some(ran) = instance.run.ended(0) {
                let _ = instance.requests.withdraw();
                let growth_refused = crate::grow_refusals::count() > refusals_before;
                let over_budget = instance.denied.explain(&self.memory);
                return Err(match ran {
                    Ran::Trapped(e) if over_budget.is_some() => CallError::PeerFailed(format!(
                        "embedded peer {peer} exceeded its memory limit: {}; it trapped: {e}",
                        over_budget.unwrap_or_default()
                    )),
                    Ran::Trapped(e) if growth_refused => {
                        failed(peer, format!("trapped after its memory limit refused a growth: {e}"))
                    }
                    Ran::Trapped(e) => failed(peer, format!("trapped: {e}")),
                    Ran::Ended | Ran::Cancelled => failed(peer, "ended its run instead of serving"),
                });
            }
            if Instant::now() >= deadline {
                if instance.requests.parked_with_answer() {
                    // It answered just as the wait ended.
                    break;
                }
                // Withdrawn first: from here on it reads nothing of `request`,
                // even if it goes on running for a while (a long host call).
                let _ = instance.requests.withdraw();
                stop_aside(instance);
                return Err(CallError::Timeout(format!(
                    "embedded peer {peer} still ran at the call's deadline and was stopped"
                )));
            }
        }
        self.idle.answer(peer, instance).map(Some)
    }

    fn target(&self, peer: &str) -> String {
        self.peers.0.get(peer).map(|p| p.path.display().to_string()).unwrap_or_default()
    }
}

/// Stops `instance` on a thread of its own, which waits as long as its run
/// takes to end: a run waiting in a host call (a sleep) only ends when that
/// call returns, which the caller past its deadline must not wait for, and
/// its memory (budget) and instance slot are given back only then.
fn stop_aside(instance: RunningPeer) {
    let stopping = std::thread::Builder::new().name("cwasi-peer-stop".into()).spawn(move || instance.stop());
    if let Err(e) = stopping {
        // The instance went down with the closure: stopped here, after all.
        tracing::warn!("no thread to stop an embedded peer aside: {e}");
    }
}

impl WasmEdgeEmbedded {
    /// A new instance of `peer`, started: it parks in its first `serve_next`.
    fn new_instance(&self, name: &str) -> Result<RunningPeer, CallError> {
        let slot = self.idle.reserve(name)?;
        let peer = self
            .peers
            .0
            .get(name)
            .ok_or_else(|| CallError::UnknownPeer(format!("{name} (not embedded in this image)")))?;
        let config = config(self.memory.limit()).map_err(|e| failed(name, e))?;
        fn strs(list: &[String]) -> Vec<&str> {
            list.iter().map(String::as_str).collect()
        }
        let wasi = WasiModule::create(Some(vec![name]), Some(strs(&peer.env)), Some(strs(&peer.preopens)))
            .map_err(|e| failed(name, e))?;
        let requests = Arc::new(InProcessSource::default());
        let host = self.hosts.host(name, requests.clone());
        let cwasi = crate::host_api::import_object(host).map_err(|e| failed(name, e))?;
        let share = self.memory.share();
        let denied = share.denied().clone();
        let gate = growth_gate::admit(share, &peer.module, &format!("embedded peer {name}"))
            .map_err(|e| CallError::PeerFailed(format!("{e:#}")))?;
        let mut instance = RunningPeer::new(requests, Imports { wasi, cwasi, gate }, slot, denied);
        instance.start(&config, peer.module.module.clone()).map_err(|e| failed(name, format!("{e:#}")))?;
        tracing::debug!(peer = name, "embedded peer instantiated");
        Ok(instance)
    }
}

/// One running instance of a peer and everything its run uses.
struct RunningPeer {
    requests: Arc<InProcessSource>,
    /// Dropped (cancelled) first: it runs on `vm`.
    run: AsyncRunSlot,
    /// Refers to `wasi` and `cwasi`, which it borrows for `'static`: they
    /// are boxed here and freed only after it (see `Drop`).
    vm: Option<Vm<'static, dyn SyncInst>>,
    imports: *mut Imports,
    /// The growth its memory gate refused, if one was.
    denied: DeniedGrowth,
    _slot: InstanceSlot,
}

/// What a peer instance imports besides its module: WASI, `cwasi` and the
/// memory gate.
struct Imports {
    wasi: WasiModule,
    cwasi: ImportObject<GuestHost>,
    gate: ImportObject<MemoryShare>,
}

/// The run, once started.
struct AsyncRunSlot(Option<AsyncRun>);

impl AsyncRunSlot {
    fn ended(&mut self, wait_ms: u64) -> Option<Ran> {
        self.0.as_mut().and_then(|run| run.ended(wait_ms))
    }

    fn cancel(&mut self) {
        if let Some(run) = self.0.as_mut() {
            run.cancel();
        }
    }

    fn is_ended(&self) -> bool {
        self.0.as_ref().is_none_or(AsyncRun::is_ended)
    }
}

// SAFETY: the instance moves between the threads of its callers (one at a
// time, through the idle pool); the raw parts are owned by it alone, and
// the thread of its run only uses them through libwasmedge.
unsafe impl Send for RunningPeer {}

impl PeerInstance for RunningPeer {
    fn requests(&self) -> &InProcessSource {
        &self.requests
    }
}

impl RunningPeer {
    /// Ends the run, waiting for it as long as it takes, then drops all.
    fn stop(mut self) {
        self.requests.close();
        self.run.cancel();
        while !self.run.is_ended() {
            if self.run.ended(STOP_POLL_MS).is_some() {
                break;
            }
        }
        drop(self);
    }

    fn new(requests: Arc<InProcessSource>, imports: Imports, slot: InstanceSlot, denied: DeniedGrowth) -> Self {
        Self {
            _slot: slot,
            requests,
            run: AsyncRunSlot(None),
            vm: None,
            imports: Box::into_raw(Box::new(imports)),
            denied,
        }
    }

    fn start(&mut self, config: &wasmedge_sdk::config::Config, module: Module) -> anyhow::Result<()> {
        // SAFETY: boxed by `new` and freed only in `Drop`, after `vm` (which
        // borrows them) and the run (which uses them) are gone; nothing else
        // touches them meanwhile.
        let Imports { wasi, cwasi, gate } = unsafe { &mut *self.imports };
        let mut instances: HashMap<String, &'static mut dyn SyncInst> = HashMap::new();
        instances.insert(wasi.name().to_string(), wasi.as_mut());
        instances.insert(cwasi_abi::MODULE.to_string(), cwasi);
        instances.insert(growth_gate::MODULE.to_string(), gate);
        let store = Store::new(Some(config), instances).map_err(|e| anyhow::anyhow!("{e}"))?;
        let vm = self.vm.insert(Vm::new(store));
        vm.register_module(None, module).map_err(|e| anyhow::anyhow!("instantiating: {e}"))?;
        let instance = vm.active_module_mut().ok_or_else(|| anyhow::anyhow!("no active module"))?;
        self.run.0 = Some(AsyncRun::start(instance)?);
        Ok(())
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        // A peer parked in `serve_next` waits in a host call, where a cancel
        // does not reach: closing its requests ends that wait, then its run.
        self.requests.close();
        self.run.cancel();
        if !self.run.is_ended() {
            // Its run still uses all of it: leave it be (the run logged why).
            std::mem::forget(self.vm.take());
            return;
        }
        drop(self.run.0.take());
        drop(self.vm.take());
        // SAFETY: boxed by `new`; the run and the vm that used them are gone.
        unsafe { drop(Box::from_raw(self.imports)) };
    }
}
