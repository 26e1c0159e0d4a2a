//! `containerd-shim-cwasi-v1`: containerd starts this binary for runtime
//! `io.containerd.cwasi.v1`. The same binary, started by the shim with
//! [`guest_runner::SUBCOMMAND`], is the process in which one guest runs, and
//! with [`pod_sandbox::SUBCOMMAND`] the process holding a pod's namespaces.

mod bundle;
mod cgroup;
mod confinement;
mod guest_process;
mod guest_runner;
mod instance;
mod instances;
mod pod_sandbox;
mod settings;
mod telemetry;

use containerd_shimkit::sandbox::cli::shim_main;
use containerd_shimkit::{Config, shim_version};

fn main() {
    match std::env::args_os().nth(1) {
        Some(arg) if arg == guest_runner::SUBCOMMAND => std::process::exit(guest_runner::main()),
        Some(arg) if arg == pod_sandbox::SUBCOMMAND => std::process::exit(pod_sandbox::main()),
        // Which engine this build runs guests on (for scripts and benchmarks).
        Some(arg) if arg == "--engine" => {
            println!("{}", guest_runner::engine_name());
            return;
        }
        _ => {}
    }
    // containerd passes -debug when it logs at debug itself.
    telemetry::init_shim(std::env::args_os().any(|arg| arg == "-debug" || arg == "--debug"));
    // The shim library's lines come through `telemetry` (one writer, one format).
    let config = Config { no_setup_logger: true, ..Config::default() };
    shim_main::<instance::CwasiInstance>("cwasi", shim_version!(), Some(config));
}
