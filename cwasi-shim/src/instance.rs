//! [`CwasiInstance`]: runwasi's `Instance` trait, the container lifecycle.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use containerd_shimkit::sandbox::sync::WaitableCell;
use containerd_shimkit::sandbox::{Error, Instance, InstanceConfig};
use nix::sys::signal::Signal;

use crate::bundle::{self, Workload};
use crate::cgroup::ContainerCgroup;
use crate::confinement::Confinement;
use crate::guest_process::{GuestProcess, GuestStdio};
use crate::guest_runner::GuestLaunch;
use crate::settings;

/// One container managed by this shim.
pub struct CwasiInstance {
    id: String,
    workload: Workload,
    config: InstanceConfig,
    rootfs: PathBuf,
    /// The container's cgroup; a sandbox's holds only the process that holds
    /// the pod's namespaces, and carries the pod-level limits.
    cgroup: Arc<ContainerCgroup>,
    confinement: Confinement,
    exit: WaitableCell<(u32, DateTime<Utc>)>,
    process: Mutex<Option<GuestProcess>>,
}

impl Instance for CwasiInstance {
    async fn new(id: String, cfg: &InstanceConfig) -> Result<Self, Error> {
        let invalid = |e: anyhow::Error| Error::InvalidArgument(format!("container {id}: {e:#}"));
        let spec = bundle::read_spec(&cfg.bundle).map_err(invalid)?;
        let workload = bundle::load(
            &cfg.bundle,
            &spec,
            &cfg.namespace,
            &bundle::ShimSettings {
                cache_dir: settings::cache_dir(),
                redis_url: settings::redis_url(),
                call_timeout: settings::call_timeout(),
                redis_policy: settings::redis_policy()
                    .map_err(|e| Error::InvalidArgument(format!("container {id}: {e:#}")))?,
            },
        )
        .map_err(invalid)?;
        let confinement = Confinement::from_spec(&spec).map_err(invalid)?;
        let cgroup = Arc::new(crate::cgroup::for_container(&spec, &id).map_err(invalid)?);
        match &workload {
            Workload::Function { guest, function } => tracing::info!(
                container = %id,
                function = %function.name,
                node = %function.node,
                module = %guest.module.display(),
                "created function container"
            ),
            Workload::Sandbox => tracing::info!(container = %id, "created sandbox container"),
        }
        Ok(Self {
            rootfs: cfg.bundle.join("rootfs"),
            id,
            workload,
            config: cfg.clone(),
            cgroup,
            confinement,
            exit: WaitableCell::new(),
            process: Mutex::new(None),
        })
    }

    async fn start(&self) -> Result<u32, Error> {
        let Workload::Function { guest, function } = &self.workload else {
            // A sandbox's process only holds the pod's namespaces, which the
            // pod's containers join through /proc/<its pid>/ns.
            let config = self.config.bundle.join("config.json");
            let process = GuestProcess::spawn_pod_sandbox(&config, self.cgroup.clone(), self.exit.clone())
                .map_err(|e| Error::Others(format!("container {}: {e:#}", self.id)))?;
            let pid = process.pid();
            *self.lock_process() = Some(process);
            tracing::info!(container = %self.id, pid, "started pod sandbox");
            return Ok(pid);
        };
        let launch = GuestLaunch {
            container_id: self.id.clone(),
            function: function.clone(),
            guest: guest.clone(),
            run_dir: settings::run_dir(),
            log_path: std::env::current_dir().ok().map(|dir| dir.join("log")),
            confinement: self.confinement.clone(),
        };
        let stdio = GuestStdio {
            stdin: self.config.open_stdin().ok(),
            stdout: self.config.open_stdout().ok(),
            stderr: self.config.open_stderr().ok(),
        };
        let process = GuestProcess::spawn(&launch, stdio, self.cgroup.clone(), self.exit.clone())
            .map_err(|e| Error::Others(format!("container {}: {e:#}", self.id)))?;
        let pid = process.pid();
        *self.lock_process() = Some(process);
        tracing::info!(container = %self.id, pid, "started guest");
        Ok(pid)
    }

    async fn kill(&self, signal: u32) -> Result<(), Error> {
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        tracing::info!(container = %self.id, %signal, "kill");
        match &*self.lock_process() {
            Some(process) => process.signal(signal).map_err(|e| Error::Others(format!("{e:#}"))),
            None => {
                // A container never started has no process: it ends on a stopping signal.
                if matches!(signal, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT) {
                    let _ = self.exit.set((128 + signal as u32, Utc::now()));
                }
                Ok(())
            }
        }
    }

    async fn delete(&self) -> Result<(), Error> {
        if let Err(e) = self.cgroup.remove() {
            // A leftover directory must not keep containerd from deleting the task.
            tracing::error!(container = %self.id, "{e:#}");
        }
        // The shim library mounted the rootfs at create; undo it so containerd
        // can remove the snapshot. Not mounted (no rootfs mounts) is fine.
        match nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::Others(format!("unmounting {}: {e}", self.rootfs.display()))),
        }
    }

    async fn wait(&self) -> (u32, DateTime<Utc>) {
        *self.exit.wait().await
    }
}

impl CwasiInstance {
    fn lock_process(&self) -> std::sync::MutexGuard<'_, Option<GuestProcess>> {
        // A poisoned lock only means another call panicked; the data is a pid.
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }
}
