use std::collections::HashMap;

use anyhow::Context;
use cwasi_engine::{Engine, GuestExit, GuestSpec, HostParts};
use wasmedge_sdk::error::{CoreCommonError, CoreError, WasmEdgeError};
use wasmedge_sdk::vm::SyncInst;
use wasmedge_sdk::wasi::WasiModule;
use wasmedge_sdk::{AsInstance, Store, Vm};

use crate::embedded::{LoadedPeers, WasmEdgeEmbedded};
use crate::growth_gate;
use crate::setup::{PAGE, config, preopen};

/// Runs WASI preview-1 guests on WasmEdge.
pub struct WasmEdgeEngine;

impl WasmEdgeEngine {
    pub fn new() -> anyhow::Result<Self> {
        // libwasmedge logs errors to stdout, the guest's own stream: they go
        // to `grow_refusals` instead, and traps reach the container's stderr
        // through `GuestExit`.
        crate::grow_refusals::watch();
        Ok(Self)
    }
}

pub(crate) fn wasmedge_error(e: Box<WasmEdgeError>) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub(crate) fn is_termination(e: &WasmEdgeError) -> bool {
    matches!(e, WasmEdgeError::Core(CoreError::Common(CoreCommonError::Terminated)))
}

impl Engine for WasmEdgeEngine {
    fn name(&self) -> &'static str {
        "wasmedge"
    }

    fn run(&self, guest: &GuestSpec, host: HostParts) -> anyhow::Result<GuestExit> {
        // The guest and its embedded peers draw on one budget, through the
        // growth gate; the engine's own cap is the whole limit.
        let memory = guest.memory_budget();
        let memory_limit = memory.limit();
        let config = config(memory_limit)?;
        let module = growth_gate::load(&guest.module, &config)?;
        let share = memory.share();
        let denied = share.denied().clone();
        let mut gate = growth_gate::admit(share, &module, "the guest")?;
        let host = if guest.embedded.is_empty() {
            host.into_host()
        } else {
            let loaded = LoadedPeers::load(&guest.embedded, &config)?;
            host.into_host_with_embedded(|hosts| WasmEdgeEmbedded::new(loaded, memory.clone(), hosts))
        };

        let args: Vec<&str> = guest.args.iter().map(String::as_str).collect();
        let envs: Vec<String> = guest.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let preopens = guest.preopens.iter().map(preopen).collect::<anyhow::Result<Vec<String>>>()?;
        let mut wasi = WasiModule::create(
            Some(args),
            Some(envs.iter().map(String::as_str).collect()),
            Some(preopens.iter().map(String::as_str).collect()),
        )
        .map_err(wasmedge_error)
        .context("creating the WASI module")?;
        let mut cwasi = crate::host_api::import_object(host)?;

        let mut instances: HashMap<String, &mut dyn SyncInst> = HashMap::new();
        instances.insert(wasi.name().to_string(), wasi.as_mut());
        instances.insert(cwasi_abi::MODULE.to_string(), &mut cwasi);
        instances.insert(growth_gate::MODULE.to_string(), &mut gate);
        let mut vm = Vm::new(Store::new(Some(&config), instances).map_err(wasmedge_error)?);
        vm.register_module(None, module.module).map_err(wasmedge_error).context("instantiating the module")?;
        let entry = guest.entry.as_deref().unwrap_or("_start");
        if guest.entry.is_some() && vm.active_module().is_some_and(|m| m.get_func("_initialize").is_ok()) {
            vm.run_func(None, "_initialize", []).map_err(wasmedge_error).context("calling _initialize")?;
        }
        crate::grow_refusals::take();
        let outcome = vm.run_func(None, entry, []);
        let growth_refused = crate::grow_refusals::take();
        let memory_bytes =
            vm.active_module().and_then(|m| m.get_memory_ref("memory").ok().map(|mem| mem.size() as u64 * PAGE));
        drop(vm);
        // WasmEdge counts `proc_exit` as a successful end of the run: the
        // status is in the WASI module either way.
        Ok(match outcome {
            Ok(values) => match values.first() {
                Some(value) => GuestExit::Exited(value.to_i32()),
                None => GuestExit::Exited(wasi.exit_code() as i32),
            },
            Err(e) if is_termination(&e) => GuestExit::Exited(wasi.exit_code() as i32),
            Err(e) => match denied.explain(&memory) {
                Some(why) => GuestExit::Trapped {
                    message: format!("guest exceeded its memory limit: {why}\ncaused by: {e}"),
                    memory_limit_hit: true,
                },
                None => trapped(&e, growth_refused, memory_bytes, memory_limit),
            },
        })
    }
}

/// A trap after a refused growth is the memory limit's doing (the guest
/// asked for more, got -1 and aborted); so is one with the memory within a
/// quarter of its limit.
fn trapped(error: &WasmEdgeError, growth_refused: bool, memory_bytes: Option<u64>, limit: Option<u64>) -> GuestExit {
    match (memory_bytes, limit) {
        (Some(memory), Some(limit)) if growth_refused || memory >= limit - limit / 4 => GuestExit::Trapped {
            message: format!(
                "guest exceeded its memory limit: its memory {} at {memory} bytes of the {limit}-byte limit \
                 (linux.resources.memory.limit)\ncaused by: {error}",
                if growth_refused { "was refused a growth" } else { "stopped" }
            ),
            memory_limit_hit: true,
        },
        _ => GuestExit::Trapped { message: error.to_string(), memory_limit_hit: false },
    }
}
