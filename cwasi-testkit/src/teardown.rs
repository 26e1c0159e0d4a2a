//! Tearing a rig down, also when the process is interrupted.
//!
//! Dropping a [`Containerd`](crate::Containerd) or a
//! [`RedisServer`](crate::RedisServer) stops what it started; a signal does
//! not run drops. Every live rig piece therefore registers here what its
//! teardown takes, and [`on_interrupt`] (the demo and the benchmarks call it)
//! runs the teardowns of all live pieces on SIGINT or SIGTERM, then exits.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::mounts::unmount_below;

/// What stopping one rig piece takes; runs on any thread.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// A process and its directory.
    Process(Teardown),
    /// Network namespaces (`ip netns add`), deleted with `ip netns del`.
    Netns(Vec<String>),
}

impl Piece {
    fn run(&self) {
        match self {
            Piece::Process(teardown) => {
                teardown.run();
                let _ = fs::remove_dir_all(&teardown.dir);
            }
            Piece::Netns(names) => crate::netns::delete_netns(names),
        }
    }
}

/// What stopping one process piece takes.
#[derive(Debug, Clone)]
pub(crate) struct Teardown {
    /// The piece's own process (containerd, redis-server).
    pub pid: u32,
    /// Its temporary directory: processes whose command line names it are its
    /// helpers (shims and theirs), mounts below it are its containers'.
    pub dir: PathBuf,
}

impl Teardown {
    /// Kills the process and everything started for it, and unmounts.
    pub fn run(&self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        self.sweep();
    }

    /// Kills the helpers (not the piece's own process, which its owner
    /// reaps): shims outlive containerd by design, and a shim's helpers (its
    /// zygote, `shim delete` runs) can outlive the shim, so sweep until none
    /// is left. Guest processes die with their shim (PDEATHSIG).
    pub fn sweep(&self) {
        for _ in 0..20 {
            let pids = processes_naming(&self.dir, self.pid);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        unmount_below(&self.dir);
    }
}

/// Processes whose command line contains `dir`, except `except`.
fn processes_naming(dir: &Path, except: u32) -> Vec<Pid> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != except)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(|pid| Pid::from_raw(pid as i32))
        .collect()
}

static LIVE: Mutex<BTreeMap<u64, Piece>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A registration in the live list; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Registered(u64);

pub(crate) fn register(teardown: Teardown) -> Registered {
    register_piece(Piece::Process(teardown))
}

pub(crate) fn register_piece(piece: Piece) -> Registered {
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).insert(key, piece);
    Registered(key)
}

impl Drop for Registered {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// On SIGINT or SIGTERM: tear down every live containerd and redis-server
/// (with their shims, mounts and directories) and network namespace, then exit 130 (143 for SIGTERM).
/// Installed once per process; later calls do nothing. A [`crate::TestNetwork`]
/// installs it, as namespaces outlive the process that made them.
pub fn on_interrupt() -> anyhow::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| install_on_interrupt().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn install_on_interrupt() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("teardown-on-signal".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("\ninterrupted: stopping the private containerd and redis-server instances");
            // Held until exit: the main thread cannot start or drop a piece meanwhile.
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            // Processes first (in registration order), then the network
            // namespaces they ran in.
            let (netns, processes): (Vec<_>, Vec<_>) = live.values().partition(|p| matches!(p, Piece::Netns(_)));
            for piece in processes.into_iter().chain(netns) {
                piece.run();
            }
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
}
