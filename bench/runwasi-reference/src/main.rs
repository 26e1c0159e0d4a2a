//! A stock runwasi-style wasmtime shim: `containerd-shim-wasm`'s container
//! path (youki runs the container, the module comes from its rootfs), and a
//! WASI preview-1 run that compiles the module at every start, as runwasi's
//! wasmtime shim does for modules in the rootfs.

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use containerd_shim_wasm::shim::{Cli, Config, Shim, Version, version};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

struct RunwasiReference;

#[derive(Default)]
struct WasmtimeSandbox;

impl Shim for RunwasiReference {
    type Sandbox = WasmtimeSandbox;

    fn name() -> &'static str {
        "runwasi"
    }

    fn version() -> Version {
        version!()
    }
}

impl Sandbox for WasmtimeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        let entrypoint = ctx.entrypoint();
        let Source::File(path) = entrypoint.source else {
            anyhow::bail!("only modules in the rootfs are supported");
        };
        let engine = Engine::default();
        let module = Module::from_file(&engine, &path).map_err(anyhow::Error::from).context("compiling")?;
        let envs: Vec<(String, String)> = ctx
            .envs()
            .iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let wasi: WasiP1Ctx = WasiCtxBuilder::new()
            .args(ctx.args())
            .envs(&envs)
            .inherit_stdio()
            .preopened_dir("/", "/", FsPerms::ReadWrite)
            .map_err(anyhow::Error::from)?
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        // Async, as runwasi's wasmtime shim runs guests: the executor drives
        // this future on its own runtime.
        let mut linker = Linker::new(&engine);
        p1::add_to_linker_async(&mut linker, |wasi| wasi)?;
        let instance = linker.instantiate_async(&mut store, &module).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, &entrypoint.func)?;
        match start.call_async(&mut store, ()).await {
            Ok(()) => Ok(0),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(anyhow::Error::from(e)),
            },
        }
    }
}

fn main() {
    RunwasiReference::run(Config::default());
}
