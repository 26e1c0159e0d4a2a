//! The shim side of a guest: one child process per running function.
//!
//! Each guest runs in its own process (this binary, re-executed with
//! [`guest_runner::SUBCOMMAND`]) so that a kill is a real signal that stops
//! a guest wherever it is — spinning in wasm or blocked in a host call — and
//! so that nothing a guest does can take the shim down.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use anyhow::Context;
use chrono::{DateTime, Utc};
use containerd_shimkit::sandbox::sync::WaitableCell;
use futures::FutureExt as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cgroup::ContainerCgroup;
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
    /// Starts the guest process inside `cgroup` (joined between fork and
    /// exec, so no guest code ever runs outside it).
    pub fn spawn(
        launch: &GuestLaunch,
        stdio: GuestStdio,
        cgroup: Arc<ContainerCgroup>,
        exit: WaitableCell<(u32, DateTime<Utc>)>,
    ) -> anyhow::Result<Self> {
        // containerd-shim's reaper collects every child's status and publishes
        // it; subscribe before the child exists so its exit cannot be missed.
        let subscription = containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
            .map_err(|e| anyhow::anyhow!("subscribing to process exits: {e}"))?;

        // Where an exit reason the guest cannot report (an OOM kill) goes.
        let reason_out = stdio.stderr.as_ref().and_then(|f| f.try_clone().ok());
        let exe = std::env::current_exe().context("locating the shim binary")?;
        let mut command = Command::new(exe);
        command
            .arg(guest_runner::SUBCOMMAND)
            .env_clear()
            .envs(guest_runner::launch_env(launch)?)
            .stdin(stdio.stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(stdio.stdout.map_or_else(Stdio::null, Stdio::from))
            .stderr(stdio.stderr.map_or_else(Stdio::null, Stdio::from));
        Self::start(command, cgroup, exit, subscription, reason_out)
    }

    /// Starts the process holding a pod's namespaces (see [`crate::pod_sandbox`])
    /// for the sandbox whose spec is `config`, inside the sandbox's cgroup.
    pub fn spawn_pod_sandbox(
        config: &std::path::Path,
        cgroup: Arc<ContainerCgroup>,
        exit: WaitableCell<(u32, DateTime<Utc>)>,
    ) -> anyhow::Result<Self> {
        let subscription = containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
            .map_err(|e| anyhow::anyhow!("subscribing to process exits: {e}"))?;
        let exe = std::env::current_exe().context("locating the shim binary")?;
        let mut command = Command::new(exe);
        command
            .arg(crate::pod_sandbox::SUBCOMMAND)
            .arg(config)
            .env_clear()
            .envs(guest_runner::inherited(&guest_runner::BINARY_ENV))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its errors go to the shim's log, as the shim's own do.
            .stderr(Stdio::inherit());
        Self::start(command, cgroup, exit, subscription, None)
    }

    /// Spawns `command` inside `cgroup`, tied to the shim's life; its exit
    /// status (from `subscription`) lands in `exit`.
    fn start(
        mut command: Command,
        cgroup: Arc<ContainerCgroup>,
        exit: WaitableCell<(u32, DateTime<Utc>)>,
        subscription: containerd_shim::monitor::Subscription,
        reason_out: Option<File>,
    ) -> anyhow::Result<Self> {
        let procs_files = cgroup.procs_files();
        // SAFETY: the closure runs between fork and exec. It allocates
        // nothing (the paths are prepared above) and makes only raw,
        // async-signal-safe syscalls (prctl, open, write, close, close_range)
        // on memory the child owns.
        unsafe {
            command.pre_exec(move || {
                // Tie the guest's life to the shim's.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                join_cgroup(&procs_files)?;
                close_inherited_descriptors();
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(command).context("starting the guest process")?;
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
                if code == 128 + Signal::SIGKILL as i32 && cgroup.oom_kills().unwrap_or(0) > 0 {
                    let limit = cgroup.memory_limit().unwrap_or_default();
                    let reason = format!(
                        "cwasi: the guest was killed by the kernel's OOM killer: the container reached its memory limit (linux.resources.memory.limit, {limit} bytes)"
                    );
                    tracing::error!(pid = pid.as_raw(), "{reason}");
                    if let Some(mut out) = reason_out {
                        let _ = writeln!(out, "{reason}");
                    }
                }
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

/// Moves the calling (forked, not yet exec'd) process into the container's
/// cgroup: writing `0` to `cgroup.procs` means "this process".
fn join_cgroup(procs_files: &[CString]) -> io::Result<()> {
    for file in procs_files {
        // SAFETY: `file` is a NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: writes one byte from a static buffer to the fd opened above.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let error = io::Error::last_os_error();
        // SAFETY: closes the fd opened above, which nothing else uses.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// Marks every descriptor above stdio close-on-exec, so the guest inherits
/// none of the shim's (its ttrpc socket, other containers' FIFOs). Kernels
/// before 5.11 lack the flag; the guest then inherits what is not
/// close-on-exec already.
fn close_inherited_descriptors() {
    // SAFETY: close_range takes plain integers and touches no memory.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
}

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process, and the shim library serves requests on threads that come
/// and go: a guest started from one of them was killed when it ended. Every
/// guest is therefore started from one thread that lives as long as the shim.
fn spawn_from_long_lived_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnRequest>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new().name("cwasi-spawner".into()).spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        match started {
            Ok(_) => Some(Mutex::new(requests)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the spawner thread; guests may die with request threads");
                None
            }
        }
    });
    let Some(spawner) = spawner else {
        let mut command = command;
        return command.spawn();
    };
    let (reply, result) = mpsc::sync_channel(1);
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    result.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
}
