//! The guest side: the process in which one function's module runs.
//!
//! The shim starts this binary with [`SUBCOMMAND`] and hands it a
//! [`GuestLaunch`] in the environment; stdio are the container's FIFOs, so
//! whatever the guest (or a trap report) writes reaches `ctr` and `kubectl logs`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cwasi_comm::{FunctionConfig, FunctionServer, HostParts, NodeRegistry, stats};
use cwasi_engine::{Engine, GuestExit, GuestSpec};
use serde::{Deserialize, Serialize};

use crate::confinement::Confinement;
use crate::{instances, telemetry};

pub const SUBCOMMAND: &str = "__cwasi-run-guest";
const LAUNCH_ENV: &str = "CWASI_GUEST_LAUNCH";
/// The shim's log FIFO: guest-process logs join the shim's in containerd's log.
const LOG_PATH_ENV: &str = "CWASI_LOG_PATH";

/// Everything the guest process needs, prepared by the shim.
#[derive(Debug, Serialize, Deserialize)]
pub struct GuestLaunch {
    pub container_id: String,
    pub function: FunctionConfig,
    pub guest: GuestSpec,
    /// Root of the node registry.
    pub run_dir: PathBuf,
    pub log_path: Option<PathBuf>,
    /// The spec's process isolation, applied before the engine starts.
    pub confinement: Confinement,
}

/// What the shim binary needs to start again as another process (the guest
/// runner, the pod sandbox): where an engine's shared library (libwasmedge)
/// lives.
pub const BINARY_ENV: [&str; 1] = ["LD_LIBRARY_PATH"];

/// `names` that are set in this process's environment, with their values.
pub fn inherited<'a>(names: &'a [&'static str]) -> impl Iterator<Item = (&'static str, String)> + 'a {
    names.iter().filter_map(|&name| std::env::var(name).ok().map(|value| (name, value)))
}

/// The environment of the guest process (it starts with an empty one).
pub fn launch_env(launch: &GuestLaunch) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![(LAUNCH_ENV.to_owned(), serde_json::to_string(launch).context("encoding the guest launch")?)];
    if let Some(path) = &launch.log_path {
        env.push((LOG_PATH_ENV.to_owned(), path.to_string_lossy().into_owned()));
    }
    // SSL_CERT_FILE/SSL_CERT_DIR: where rustls finds the system's CA store for rediss://.
    let passed_on = [
        telemetry::FILTER_ENV,
        cwasi_comm::local::SPIN_ENV,
        cwasi_comm::remote::RETRY_ENV,
        cwasi_comm::remote::CA_FILE_ENV,
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ];
    let passed_on = [&passed_on[..], &telemetry::otlp::ENV, &BINARY_ENV].concat();
    env.extend(inherited(&passed_on).map(|(name, value)| (name.to_owned(), value)));
    Ok(env)
}

/// The engine is chosen at build time: `--features wasmedge` selects WasmEdge.
#[cfg(not(feature = "wasmedge"))]
pub type SelectedEngine = cwasi_wasmtime::WasmtimeEngine;
#[cfg(feature = "wasmedge")]
pub type SelectedEngine = cwasi_wasmedge::WasmEdgeEngine;

pub fn engine_name() -> &'static str {
    if cfg!(feature = "wasmedge") { "wasmedge" } else { "wasmtime" }
}

/// Runs the guest and returns the process exit status.
pub fn main() -> i32 {
    let launch = match std::env::var(LAUNCH_ENV)
        .context("missing guest launch")
        .and_then(|json| serde_json::from_str::<GuestLaunch>(&json).context("bad guest launch"))
    {
        Ok(launch) => launch,
        Err(e) => {
            init_logging(None);
            tracing::error!("{e:#}");
            eprintln!("cwasi: {e:#}");
            return 1;
        }
    };
    let exporter = init_logging(Some(&launch));
    let _span = tracing::info_span!(
        "guest",
        container = %launch.container_id,
        function = %launch.function.name
    )
    .entered();
    // Stop signals are blocked before any thread exists, so that every
    // thread inherits the mask and only the stop handler takes them.
    // Namespaces next, while this process is single-threaded and before it
    // opens a socket; the user switch, capabilities and seccomp after the
    // host side is connected (the node registry is root's), before any
    // guest code runs.
    let hosts = instances::block_stop_signals()
        .context("blocking stop signals")
        .and_then(|stop| launch.confinement.enter_namespaces().map(|()| stop))
        .and_then(|stop| guest_hosts(&launch, stop))
        .and_then(|hosts| launch.confinement.apply().map(|()| hosts));
    // Started confined, as any thread of the guest must be: see `Exporter::spawn`.
    if let (Ok(_), Some(exporter)) = (&hosts, exporter)
        && let Err(e) = exporter.spawn()
    {
        tracing::warn!("no OTLP export: cannot start its thread: {e}");
    }
    let status = match hosts {
        Ok(hosts) => instances::run_all(&launch.guest, hosts, run),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cwasi: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    telemetry::otlp::flush();
    status
}

/// Connects each handler instance to its peers: a router for its calls and,
/// for a serving function, the function's one registration on this node.
/// Also makes a stop signal drain the function first.
fn guest_hosts(launch: &GuestLaunch, stop: instances::StopSignals) -> anyhow::Result<Vec<HostParts>> {
    let function = &launch.function;
    let registry = NodeRegistry::new(&launch.run_dir, &function.node, &function.namespace);
    let server = if function.serve {
        Some(Arc::new(FunctionServer::start(function, &registry, function.redis_url.as_deref()).with_context(
            || format!("registering {} on node {} in {}", function.name, function.node, launch.run_dir.display()),
        )?))
    } else {
        None
    };
    stop.handle(server.clone()).context("handling stop signals")?;
    let count = if function.serve { function.concurrency.max(1) } else { 1 };
    let who = stats::Identity { function, container: &launch.container_id, concurrency: count };
    // Counters are for the operator: without them the function still runs.
    let stats = match stats::FunctionStats::create(&stats::stats_dir(&launch.run_dir, &function.node), &who) {
        Ok(stats) => Some(Arc::new(stats)),
        Err(e) => {
            tracing::warn!("no stats file for the node tool: {e}");
            None
        }
    };
    Ok((0..count).map(|_| HostParts::new(function.clone(), registry.clone(), server.clone(), stats.clone())).collect())
}

fn run(guest: &GuestSpec, host: HostParts) -> i32 {
    let result = SelectedEngine::new().and_then(|engine| engine.run(guest, host));
    match result {
        Ok(exit) => {
            match &exit {
                GuestExit::Exited(code) => tracing::info!(code, "guest exited"),
                GuestExit::Trapped { message, memory_limit_hit } => {
                    tracing::error!(memory_limit_hit, "guest trapped: {message}");
                    eprintln!("cwasi: guest trapped: {message}");
                }
            }
            exit.status()
        }
        Err(e) => {
            tracing::error!("cannot run {}: {e:#}", guest.module.display());
            eprintln!("cwasi: cannot run {}: {e:#}", guest.module.display());
            1
        }
    }
}

/// Logs go to the shim's log FIFO, in the shim's format; `cwasi.io/log`
/// sets the level for this function. Returns the OTLP span exporter when the
/// environment names a collector.
fn init_logging(launch: Option<&GuestLaunch>) -> Option<telemetry::otlp::Exporter> {
    let path = std::env::var_os(LOG_PATH_ENV)?;
    let resource = launch.map(|launch| telemetry::otlp::Resource {
        function: launch.function.name.clone(),
        namespace: launch.function.namespace.clone(),
        container: launch.container_id.clone(),
        node: launch.function.node.clone(),
    });
    let level = launch.and_then(|l| l.function.log_level.as_deref());
    match telemetry::init_guest(path.into(), level, resource) {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("cwasi: cannot set up logging: {e:#}");
            None
        }
    }
}
