//! The shim side of a guest: one child process per running function.
//!
//! Each guest runs in its own process (this binary, re-executed with
//! [`guest_runner::SUBCOMMAND`]) so that a kill is a real signal that stops
//! a guest wherever it is — spinning in wasm or blocked in a host call — and
//! so that nothing a guest does can take the shim down.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::Context;
use futures::FutureExt as _;
use containerd_shimkit::sandbox::sync::WaitableCell;
use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::guest_runner::{self, GuestLaunch};

/// Container stdio as opened from containerd's FIFOs; `None` is `/dev/null`.
#[derive(Debug, Default)]
pub struct GuestStdio {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// A started guest process. Its exit status lands in `exit`.
pub struct GuestProcess {
    pid: Pid,
    exit: WaitableCell<(u32, DateTime<Utc>)>,
}

impl GuestProcess {
    pub fn spawn(
        launch: &GuestLaunch,
        stdio: GuestStdio,
        exit: WaitableCell<(u32, DateTime<Utc>)>,
    ) -> anyhow::Result<Self> {
        // containerd-shim's reaper collects every child's status and publishes
        // it; subscribe before the child exists so its exit cannot be missed.
        let subscription =
            containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
                .map_err(|e| anyhow::anyhow!("subscribing to process exits: {e}"))?;

        let exe = std::env::current_exe().context("locating the shim binary")?;
        let mut command = Command::new(exe);
        command
            .arg(guest_runner::SUBCOMMAND)
            .env_clear()
            .envs(guest_runner::launch_env(launch)?)
            .stdin(stdio.stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(stdio.stdout.map_or_else(Stdio::null, Stdio::from))
            .stderr(stdio.stderr.map_or_else(Stdio::null, Stdio::from));
        // SAFETY: the closure runs between fork and exec and only makes the
        // prctl syscall, which is async-signal-safe and touches no memory of
        // the parent. It ties the guest's life to the shim's.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().context("starting the guest process")?;
        let pid = Pid::from_raw(child.id() as i32);
        // The reaper waits for the child, not `Child::wait`.
        drop(child);

        let exit_cell = exit.clone();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let code = loop {
                    match subscription.rx.recv() {
                        Ok(event) => match event.subject {
                            containerd_shim::monitor::Subject::Pid(p) if p == pid.as_raw() => {
                                break event.exit_code;
                            }
                            _ => continue,
                        },
                        // The reaper is gone: the shim is shutting down.
                        Err(_) => break 255,
                    }
                };
                tracing::info!(pid = pid.as_raw(), exit_code = code, "guest process exited");
                let _ = exit_cell.set((code as u32, Utc::now()));
            })
            .context("starting the guest exit watcher")?;
        Ok(Self { pid, exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Sends `signal` unless the guest already exited (its pid may be reused).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if self.exit.wait().now_or_never().is_some() {
            return Ok(());
        }
        match kill(self.pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("sending {signal} to guest {}", self.pid)),
        }
    }
}
