//! `containerd-shim-cwasi-v1`: containerd starts this binary for runtime
//! `io.containerd.cwasi.v1`. The same binary, started by the shim with
//! [`guest_runner::SUBCOMMAND`], is the process in which one guest runs.

mod bundle;
mod guest_process;
mod guest_runner;
mod instance;
mod settings;

use containerd_shimkit::sandbox::cli::shim_main;
use containerd_shimkit::shim_version;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == guest_runner::SUBCOMMAND) {
        std::process::exit(guest_runner::main());
    }
    shim_main::<instance::CwasiInstance>("cwasi", shim_version!(), None);
}
