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
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cwasi_comm::idle_peers::{IdlePeers, InstanceSlot, PeerInstance};
use cwasi_comm::in_process::InProcessSource;
use cwasi_comm::{CallError, GuestHost, Mode, Payload, PeerHosts, PendingReply, TraceContext, Transport};
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
        request: Payload<'_>,
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
    let stopping = cwasi_comm::threads::spawn("cwasi-peer-stop", move || instance.stop());
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
        let imports = Imports { wasi, cwasi, gate };
        let instance = RunningPeer::start(config, peer.module.module.clone(), imports, requests, slot, denied)
            .map_err(|e| failed(name, format!("{e:#}")))?;
        tracing::debug!(peer = name, "embedded peer instantiated");
        Ok(instance)
    }
}

/// One running instance of a peer. Its VM and imports belong to a thread
/// of their own ([`own`]), which holds them as plain locals for as long as
/// the run may use them.
struct RunningPeer {
    requests: Arc<InProcessSource>,
    /// Dropped before `release`: the run ends (or is abandoned) first.
    run: AsyncRun,
    /// Dropping it lets the owner thread free the VM and imports; it is
    /// forgotten instead while the run may still use them.
    release: Option<mpsc::Sender<()>>,
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

impl PeerInstance for RunningPeer {
    fn requests(&self) -> &InProcessSource {
        &self.requests
    }
}

impl RunningPeer {
    /// Instantiates `module` with `imports` on its owner thread and starts
    /// its run.
    fn start(
        config: Config,
        module: Module,
        imports: Imports,
        requests: Arc<InProcessSource>,
        slot: InstanceSlot,
        denied: DeniedGrowth,
    ) -> anyhow::Result<Self> {
        let (started, run) = mpsc::sync_channel(1);
        let (release, released) = mpsc::channel();
        cwasi_comm::threads::spawn("cwasi-peer-own", move || own(config, module, imports, started, released))?;
        let run = run.recv().map_err(|_| anyhow::anyhow!("the peer's owner thread ended before its run started"))??;
        Ok(Self { requests, run, release: Some(release), denied, _slot: slot })
    }

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
}

/// The owner thread of a peer instance: makes its VM from `imports`, hands
/// the started run over through `started`, and keeps it all until
/// `released` says (or its sender is gone) that the run no longer uses it.
fn own(
    config: Config,
    module: Module,
    mut imports: Imports,
    started: mpsc::SyncSender<anyhow::Result<AsyncRun>>,
    released: mpsc::Receiver<()>,
) {
    let Imports { wasi, cwasi, gate } = &mut imports;
    let mut instances: HashMap<String, &mut dyn SyncInst> = HashMap::new();
    instances.insert(wasi.name().to_string(), wasi.as_mut());
    instances.insert(cwasi_abi::MODULE.to_string(), cwasi);
    instances.insert(growth_gate::MODULE.to_string(), gate);
    let mut vm = match Store::new(Some(&config), instances) {
        Ok(store) => Vm::new(store),
        Err(e) => {
            let _ = started.send(Err(anyhow::anyhow!("{e}")));
            return;
        }
    };
    let run = match vm.register_module(None, module) {
        Ok(vm) => vm.active_module_mut().ok_or_else(|| anyhow::anyhow!("no active module")).and_then(AsyncRun::start),
        Err(e) => Err(anyhow::anyhow!("instantiating: {e}")),
    };
    if started.send(run).is_ok() {
        let _ = released.recv();
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        // A peer parked in `serve_next` waits in a host call, where a cancel
        // does not reach: closing its requests ends that wait, then its run.
        self.requests.close();
        self.run.cancel();
        if !self.run.is_ended() {
            // Its run still uses the VM and imports: their owner thread
            // keeps them (the run logged why).
            std::mem::forget(self.release.take());
        }
    }
}
