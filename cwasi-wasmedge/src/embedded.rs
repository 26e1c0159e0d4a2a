//! Embedded mode on WasmEdge: a peer shipped in the caller's image runs in
//! the caller's process, a fresh instance per call (own memory, WASI
//! context and limit).
//!
//! The peer is an ordinary serving module. Its first `serve_next` gets the
//! request, which `serve_read` copies straight from the caller's memory; its
//! reply is copied out at `serve_reply`, and its next `serve_next` ends the
//! run. WasmEdge cannot park a guest between host calls, so the reply takes
//! one more copy than on wasmtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cwasi_abi::{self as abi, Status};
use cwasi_comm::{CallError, EmbeddedPeers, GuestHost, PeerHosts, PendingReply, TraceContext};
use cwasi_engine::EmbeddedModule;
use cwasi_engine::guest_memory::{guest_slice, guest_slice_mut, write_u32};
use wasmedge_sdk::error::{CoreCommonError, CoreError};
use wasmedge_sdk::vm::SyncInst;
use wasmedge_sdk::wasi::WasiModule;
use wasmedge_sdk::{CallingFrame, ImportObjectBuilder, Instance, Module, Store, Vm, WasmValue};

use crate::host_api::{HasHost, HostResult, add_call_imports, done, ints, with_memory};
use crate::run::config;
use crate::timed_run::{self, Ran};

pub(crate) struct WasmEdgeEmbedded {
    /// Each peer's module bytes, and its environment and directories as
    /// libwasmedge takes them.
    modules: HashMap<String, PeerModule>,
    memory_limit: Option<u64>,
    hosts: Arc<PeerHosts>,
}

struct PeerModule {
    bytes: Vec<u8>,
    env: Vec<String>,
    preopens: Vec<String>,
}

/// The request of one call and what the peer answered.
struct Exchange {
    /// The peer's own calls.
    host: GuestHost,
    /// The caller's request, borrowed by `call` for the whole run.
    request_ptr: *const u8,
    request_len: usize,
    delivered: bool,
    reply: Option<Vec<u8>>,
    failure: Option<String>,
}

// SAFETY: the exchange lives and dies inside one `call`, on the caller's
// thread; WasmEdge only requires host data to be sendable in principle.
unsafe impl Send for Exchange {}

impl HasHost for Exchange {
    fn host(&mut self) -> &mut GuestHost {
        &mut self.host
    }
}

impl WasmEdgeEmbedded {
    /// Reads and validates every peer's module up front.
    pub(crate) fn new(
        peers: &[EmbeddedModule],
        memory_limit: Option<u64>,
        hosts: Arc<PeerHosts>,
    ) -> anyhow::Result<Self> {
        let mut modules = HashMap::new();
        for peer in peers {
            let bytes = std::fs::read(&peer.module)
                .map_err(|e| anyhow::anyhow!("embedded peer {}: reading {}: {e}", peer.name, peer.module.display()))?;
            Module::from_bytes(Some(&config(memory_limit)?), &bytes)
                .map_err(|e| anyhow::anyhow!("embedded peer {} ({}): {e}", peer.name, peer.module.display()))?;
            let env = peer.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let preopens = peer.preopens.iter().map(crate::run::preopen).collect::<anyhow::Result<_>>()?;
            modules.insert(peer.name.clone(), PeerModule { bytes, env, preopens });
        }
        Ok(Self { modules, memory_limit, hosts })
    }
}

fn failed(peer: &str, what: impl std::fmt::Display) -> CallError {
    CallError::PeerFailed(format!("embedded peer {peer}: {what}"))
}

impl EmbeddedPeers for WasmEdgeEmbedded {
    fn call(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        self.run(peer, request, deadline, trace)
    }
}

impl WasmEdgeEmbedded {
    /// Runs `peer` on `request` to its answer, stopped at `deadline`.
    fn run(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        let peer_module = self
            .modules
            .get(peer)
            .ok_or_else(|| CallError::UnknownPeer(format!("{peer} (not embedded in this image)")))?;
        let config = config(self.memory_limit).map_err(|e| failed(peer, e))?;
        let module = Module::from_bytes(Some(&config), &peer_module.bytes).map_err(|e| failed(peer, e))?;
        fn strs(list: &[String]) -> Vec<&str> {
            list.iter().map(String::as_str).collect()
        }
        let mut wasi =
            WasiModule::create(Some(vec![peer]), Some(strs(&peer_module.env)), Some(strs(&peer_module.preopens)))
                .map_err(|e| failed(peer, e))?;
        let mut host = self.hosts.host(peer);
        // Its calls end by its caller's deadline and continue its trace.
        host.serve_embedded_call(Some((deadline, trace)));
        let exchange = Exchange {
            host,
            request_ptr: request.as_ptr(),
            request_len: request.len(),
            delivered: false,
            reply: None,
            failure: None,
        };
        let mut builder = ImportObjectBuilder::new(abi::MODULE, exchange).map_err(|e| failed(peer, e))?;
        builder
            .with_func::<i32, i32>(abi::SERVE_NEXT, serve_next)
            .and_then(|b| b.with_func::<(i32, i32), i32>(abi::SERVE_READ, serve_read))
            .and_then(|b| b.with_func::<(i32, i32), i32>(abi::SERVE_REPLY, serve_reply))
            .and_then(|b| b.with_func::<(i32, i32), i32>(abi::SERVE_FAIL, serve_fail))
            .map_err(|e| failed(peer, e))?;
        add_call_imports(&mut builder).map_err(|e| failed(peer, e))?;
        let mut cwasi = builder.build();

        let refusals_before = crate::grow_refusals::count();
        let outcome = {
            let mut instances: HashMap<String, &mut dyn SyncInst> = HashMap::new();
            instances.insert(wasi.name().to_string(), wasi.as_mut());
            instances.insert(abi::MODULE.to_string(), &mut cwasi);
            let mut vm = Vm::new(Store::new(Some(&config), instances).map_err(|e| failed(peer, e))?);
            vm.register_module(None, module).map_err(|e| failed(peer, e))?;
            let instance = vm.active_module_mut().ok_or_else(|| failed(peer, "no active module"))?;
            timed_run::run_start_by(instance, deadline).map_err(|e| failed(peer, format!("{e:#}")))
        };
        // The peer runs on the caller's thread: its refusals are its own.
        let growth_refused = crate::grow_refusals::take() || crate::grow_refusals::count() > refusals_before;
        let exchange = cwasi.get_host_data_mut();
        // The run ends at the peer's next `serve_next` (a termination, which
        // WasmEdge may report as a successful end).
        match (outcome?, exchange.reply.take(), exchange.failure.take()) {
            (Ran::TimedOut, _, _) => Err(CallError::Timeout(format!(
                "embedded peer {peer} still ran at the call's deadline and was stopped"
            ))),
            (Ran::Trapped(e), _, _) if growth_refused => {
                Err(failed(peer, format!("trapped after its memory limit refused a growth: {e}")))
            }
            (Ran::Trapped(e), _, _) => Err(failed(peer, format!("trapped: {e}"))),
            (_, Some(reply), _) => Ok(Box::new(OwnedReply(reply))),
            (_, None, Some(message)) => Err(CallError::PeerFailed(message)),
            (_, None, None) => Err(failed(peer, format!("ended with status {} before answering", wasi.exit_code()))),
        }
    }
}

fn to_status(result: Result<(), Status>) -> i32 {
    result.err().map_or(Status::Ok as i32, |s| s as i32)
}

fn serve_next(exchange: &mut Exchange, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    if exchange.delivered {
        // The one request of this instance is answered: end its run.
        return Err(CoreError::Common(CoreCommonError::Terminated));
    }
    exchange.delivered = true;
    let a = ints(&args);
    let len = exchange.request_len as u32;
    done(with_memory(frame, |m| to_status(write_u32(m, a[0], len))))
}

fn serve_read(exchange: &mut Exchange, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| {
        to_status((|| {
            let out = guest_slice_mut(m, a[0], a[1])?;
            if !exchange.delivered || out.len() != exchange.request_len {
                return Err(Status::LengthMismatch);
            }
            // SAFETY: the request slice stays borrowed by `call`, which runs
            // this instance to its end before returning; the peer's memory is
            // a different instance's, so they never overlap.
            unsafe { std::ptr::copy_nonoverlapping(exchange.request_ptr, out.as_mut_ptr(), out.len()) };
            Ok(())
        })())
    }))
}

fn serve_reply(
    exchange: &mut Exchange,
    _: &mut Instance,
    frame: &mut CallingFrame,
    args: Vec<WasmValue>,
) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| {
        to_status(guest_slice(m, a[0], a[1]).map(|reply| exchange.reply = Some(reply.to_vec())))
    }))
}

fn serve_fail(exchange: &mut Exchange, _: &mut Instance, frame: &mut CallingFrame, args: Vec<WasmValue>) -> HostResult {
    let a = ints(&args);
    done(with_memory(frame, |m| {
        to_status(
            guest_slice(m, a[0], a[1]).map(|msg| exchange.failure = Some(String::from_utf8_lossy(msg).into_owned())),
        )
    }))
}

struct OwnedReply(Vec<u8>);

impl PendingReply for OwnedReply {
    fn wait(&mut self) -> Result<usize, CallError> {
        Ok(self.0.len())
    }

    fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        if out.len() != self.0.len() {
            return Err(CallError::Protocol(format!("reply is {} bytes, buffer {}", self.0.len(), out.len())));
        }
        out.copy_from_slice(&self.0);
        Ok(())
    }
}
