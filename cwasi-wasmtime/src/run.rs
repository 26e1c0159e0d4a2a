use anyhow::Context as _;
use cwasi_engine::{Engine, GuestExit, GuestHost, GuestSpec, HostParts};
use wasmtime::error::Context as _;
use wasmtime::{Config, Linker, Store, Val};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::embedded::{LoadedPeers, WasmtimeEmbedded};
use crate::host_api::Waiting;
use crate::limits::GuestLimiter;
use crate::module_loader::{self, ModuleSource};
use crate::preopen::add_preopen;

/// Runs WASI preview-1 guests on wasmtime.
pub struct WasmtimeEngine {
    engine: wasmtime::Engine,
    compat: String,
}

pub(crate) struct GuestState {
    wasi: WasiP1Ctx,
    limiter: GuestLimiter,
    pub(crate) host: GuestHost,
}

impl WasmtimeEngine {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Lets an embedded peer be stopped at its caller's deadline.
        config.epoch_interruption(true);
        // An embedded peer's reply is read from its memory after it answered
        // and parked; in between it may grow that memory, which must stay in
        // place (`cwasi_comm::in_process`): a growth that would move it fails
        // instead (with the default 4 GiB reservation a 32-bit memory never
        // needs to). With 64 KiB pages only (the default, stated), a growth
        // that fails is always one the limiter allowed, which the memory
        // budget gives back.
        config.memory_may_move(false);
        config.wasm_custom_page_sizes(false);
        let engine =
            wasmtime::Engine::new(&config).map_err(anyhow::Error::from).context("creating the wasmtime engine")?;
        let compat = module_loader::compat_tag(&engine);
        Ok(Self { engine, compat })
    }

    fn wasi_context(guest: &GuestSpec) -> anyhow::Result<WasiP1Ctx> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&guest.args)
            .envs(&guest.env)
            .inherit_stdio()
            // The guest owns this process: blocking its one thread is what it asked for.
            .allow_blocking_current_thread(true);
        for preopen in &guest.preopens {
            add_preopen(&mut wasi, preopen)?;
        }
        Ok(wasi.build_p1())
    }
}

impl Engine for WasmtimeEngine {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn run(&self, guest: &GuestSpec, host: HostParts) -> anyhow::Result<GuestExit> {
        let (module, source) =
            module_loader::load(&self.engine, &self.compat, &guest.module, guest.cache_dir.as_deref())?;
        tracing::info!(
            module = %guest.module.display(),
            cache = if source == ModuleSource::Cache { "hit" } else { "miss" },
            "module ready"
        );

        // The guest and its embedded peers draw on one budget.
        let memory = guest.memory_budget();
        let host = if guest.embedded.is_empty() {
            host.into_host()
        } else {
            let cache_dir = guest.cache_dir.as_deref();
            let loaded = LoadedPeers::load(&self.engine, &self.compat, &guest.embedded, cache_dir)?;
            host.into_host_with_embedded(|hosts| WasmtimeEmbedded::new(loaded, memory.clone(), hosts))
        };

        let state = GuestState { wasi: Self::wasi_context(guest)?, limiter: GuestLimiter::new(&memory), host };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // The guest itself has no deadline: only its container's life bounds it.
        store.set_epoch_deadline(crate::deadline::NEVER);
        let mut linker = Linker::new(&self.engine);
        p1::add_to_linker_sync(&mut linker, |state: &mut GuestState| &mut state.wasi)?;
        crate::host_api::add_to_linker(&mut linker, |state: &mut GuestState| &mut state.host, Waiting::Blocks)?;

        let outcome = linker
            .instantiate(&mut store, &module)
            .and_then(|instance| call_entry(&mut store, instance, guest.entry.as_deref()));
        Ok(match outcome {
            Ok(code) => GuestExit::Exited(code),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => GuestExit::Exited(exit.0),
                None => trapped(e, &store.data().limiter),
            },
        })
    }
}

/// Calls `_start`, or the named export (after `_initialize` for reactors).
/// An export returning an `i32` gives the exit status.
fn call_entry(
    store: &mut Store<GuestState>,
    instance: wasmtime::Instance,
    entry: Option<&str>,
) -> wasmtime::Result<i32> {
    let name = entry.unwrap_or("_start");
    if entry.is_some()
        && let Some(init) = instance.get_func(&mut *store, "_initialize")
    {
        init.call(&mut *store, &[], &mut []).context("calling _initialize")?;
    }
    let func = instance
        .get_func(&mut *store, name)
        .ok_or_else(|| wasmtime::format_err!("the module exports no function {name:?}"))?;
    let ty = func.ty(&*store);
    if ty.params().len() != 0 || ty.results().len() > 1 {
        wasmtime::bail!("entry {name:?} must take no parameters and return nothing or an i32");
    }
    let mut results = vec![Val::I32(0); ty.results().len()];
    func.call(&mut *store, &[], &mut results)?;
    Ok(results.first().and_then(Val::i32).unwrap_or(0))
}

fn trapped(error: wasmtime::Error, limiter: &GuestLimiter) -> GuestExit {
    let explained = limiter.denied().explain(limiter.budget());
    let memory_limit_hit = explained.is_some();
    let message = match explained {
        Some(why) => format!("guest exceeded its memory limit: {why}\ncaused by: {error:?}"),
        None => format!("{error:?}"),
    };
    GuestExit::Trapped { message, memory_limit_hit }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_host() -> HostParts {
        let config = cwasi_comm::FunctionConfig::from_annotations(&Default::default(), "t", "node").unwrap();
        let registry = cwasi_comm::NodeRegistry::new(std::path::Path::new("/nonexistent"), "node", "ns");
        HostParts::new(config, registry, None, None)
    }

    fn run_wat(wat: &str, memory_limit: Option<u64>) -> GuestExit {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, wat::parse_str(wat).unwrap()).unwrap();
        let spec = GuestSpec {
            module,
            args: vec!["m.wasm".into()],
            memory_limit,
            cache_dir: Some(dir.path().join("cache")),
            ..Default::default()
        };
        WasmtimeEngine::new().unwrap().run(&spec, test_host()).unwrap()
    }

    #[test]
    fn proc_exit_code_is_the_exit() {
        let exit = run_wat(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") (call $exit (i32.const 7))))"#,
            None,
        );
        assert_eq!(exit, GuestExit::Exited(7));
    }

    #[test]
    fn trap_is_reported_with_its_message() {
        let exit = run_wat(r#"(module (func (export "_start") unreachable))"#, None);
        let GuestExit::Trapped { message, memory_limit_hit } = exit else { panic!("expected a trap, got {exit:?}") };
        assert!(message.contains("unreachable"), "{message}");
        assert!(!memory_limit_hit);
    }

    #[test]
    fn memory_limit_denies_growth_and_names_the_limit() {
        let exit = run_wat(
            r#"(module (memory 1)
                (func (export "_start")
                  (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#,
            Some(2 * 65536),
        );
        let GuestExit::Trapped { message, memory_limit_hit } = exit else { panic!("expected a trap, got {exit:?}") };
        assert!(memory_limit_hit);
        assert!(message.contains("memory limit"), "{message}");
        assert!(message.contains("131072"), "{message}");
    }

    #[test]
    fn a_table_growth_past_the_memory_limit_is_refused() {
        // 100 M function references are 800 MB of host memory.
        let exit = run_wat(
            r#"(module (table 1 funcref) (memory 1)
                (func (export "_start")
                  (if (i32.ne (table.grow (ref.null func) (i32.const 100000000)) (i32.const -1))
                    (then unreachable))))"#,
            Some(64 << 20),
        );
        assert_eq!(exit, GuestExit::Exited(0));
    }
}
