//! The process that holds a pod's namespaces, in place of the pause process.
//!
//! containerd's CRI plugin gives every app container of a pod the sandbox
//! task's namespaces as `/proc/<sandbox pid>/ns/{net,ipc,uts}`. The sandbox's
//! spec names the network namespace containerd pinned (and set up with CNI)
//! and asks for new IPC and UTS namespaces; the shim's own process is in none
//! of them, so the sandbox task is this small process, started by the shim
//! with [`SUBCOMMAND`] and the sandbox's `config.json`: it enters those
//! namespaces and sleeps until it is killed.

use std::path::Path;

use anyhow::Context;

use crate::confinement::Confinement;

/// First argument that makes the shim binary a pod sandbox process.
pub const SUBCOMMAND: &str = "__cwasi-pod-sandbox";

/// Entry point of the sandbox process; returns only on an error (exit code).
pub fn main() -> i32 {
    let Some(config) = std::env::args_os().nth(2) else {
        eprintln!("cwasi pod sandbox: no config.json given");
        return 2;
    };
    match hold(Path::new(&config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cwasi pod sandbox: {e:#}");
            1
        }
    }
}

fn hold(config: &Path) -> anyhow::Result<()> {
    let spec = oci_spec::runtime::Spec::load(config).with_context(|| format!("reading {}", config.display()))?;
    // Single-threaded here, as entering namespaces needs.
    Confinement::from_spec(&spec)?.enter_namespaces()?;
    loop {
        // Ends on the stop signal's default action.
        nix::unistd::pause();
    }
}
