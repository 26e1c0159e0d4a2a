//! What the OCI spec asks of the guest *process*: namespaces, rlimits,
//! `oomScoreAdj`, user, capabilities, `noNewPrivileges`, seccomp.
//!
//! The shim checks it at `create` ([`Confinement::from_spec`], so that a
//! field it cannot honour fails there, by name) and hands it to the guest
//! process in its launch; the guest process applies it to itself before
//! the engine starts ([`Confinement::enter_namespaces`] first, while it is
//! single-threaded, then [`Confinement::apply`]). The order is runc's:
//! namespaces and everything that needs privileges first, the user switch
//! and capabilities after, seccomp last (the wasm engine's own syscalls —
//! mmap, mprotect, futex, signals — are all in RuntimeDefault).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, bail};
use libcontainer::syscall::Syscall;
use libcontainer::syscall::linux::LinuxSyscall;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{
    LinuxCapabilities, LinuxNamespaceType, LinuxSeccomp, LinuxSeccompFilterFlag, PosixRlimit, Spec,
};
use serde::{Deserialize, Serialize};

/// A namespace the guest process joins (`path`) or gets a new one of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// `net`, `ipc` or `uts`.
    pub kind: String,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    pub namespaces: Vec<NamespaceEntry>,
    pub hostname: Option<String>,
    pub rlimits: Vec<PosixRlimit>,
    pub oom_score_adj: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub capabilities: Option<LinuxCapabilities>,
    pub no_new_privileges: bool,
    pub seccomp: Option<LinuxSeccomp>,
}

impl Confinement {
    /// Reads the process-level isolation the spec asks for; refuses, by
    /// field name, what the shim cannot honour.
    pub fn from_spec(spec: &Spec) -> anyhow::Result<Self> {
        let mut confinement = Self::default();
        if let Some(process) = spec.process() {
            let user = process.user();
            confinement.uid = user.uid();
            confinement.gid = user.gid();
            confinement.additional_gids = user.additional_gids().clone().unwrap_or_default();
            confinement.umask = user.umask();
            confinement.rlimits = process.rlimits().clone().unwrap_or_default();
            confinement.oom_score_adj = process.oom_score_adj();
            confinement.capabilities = process.capabilities().clone();
            confinement.no_new_privileges = process.no_new_privileges().unwrap_or(false);
            if let Some(score) = confinement.oom_score_adj {
                anyhow::ensure!(
                    (-1000..=1000).contains(&score),
                    "process.oomScoreAdj {score} is outside [-1000, 1000]"
                );
            }
        }
        if let Some(linux) = spec.linux() {
            for ns in linux.namespaces().iter().flatten() {
                let path = ns.path().clone();
                if let Some(path) = &path {
                    anyhow::ensure!(
                        path.exists(),
                        "linux.namespaces: the {} namespace path {} does not exist",
                        ns.typ(),
                        path.display()
                    );
                }
                match ns.typ() {
                    LinuxNamespaceType::Network => {
                        confinement.namespaces.push(NamespaceEntry { kind: "net".into(), path })
                    }
                    LinuxNamespaceType::Ipc => confinement.namespaces.push(NamespaceEntry { kind: "ipc".into(), path }),
                    LinuxNamespaceType::Uts => confinement.namespaces.push(NamespaceEntry { kind: "uts".into(), path }),
                    // A WASI guest has no processes, mounts or cgroup view
                    // of its own to isolate: it sees its preopens only.
                    LinuxNamespaceType::Pid | LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup => {}
                    other => bail!("linux.namespaces: the {other} namespace is not supported by this shim"),
                }
            }
            if let Some(seccomp) = linux.seccomp() {
                check_seccomp(seccomp)?;
                confinement.seccomp = Some(seccomp.clone());
            }
        }
        if confinement.namespaces.iter().any(|n| n.kind == "uts" && n.path.is_none()) {
            confinement.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        }
        Ok(confinement)
    }

    /// Joins (or creates) the namespaces; call while single-threaded,
    /// before anything opens a socket.
    pub fn enter_namespaces(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            let flag = match ns.kind.as_str() {
                "net" => CloneFlags::CLONE_NEWNET,
                "ipc" => CloneFlags::CLONE_NEWIPC,
                "uts" => CloneFlags::CLONE_NEWUTS,
                other => bail!("linux.namespaces: unknown namespace {other}"),
            };
            match &ns.path {
                Some(path) => {
                    let file = File::open(path).with_context(|| {
                        format!("linux.namespaces: opening the {} namespace {}", ns.kind, path.display())
                    })?;
                    nix::sched::setns(file.as_fd(), flag).with_context(|| {
                        format!("linux.namespaces: joining the {} namespace {}", ns.kind, path.display())
                    })?;
                }
                None => nix::sched::unshare(flag)
                    .with_context(|| format!("linux.namespaces: creating a {} namespace", ns.kind))?,
            }
        }
        if let Some(hostname) = &self.hostname {
            nix::unistd::sethostname(hostname).with_context(|| format!("hostname: setting {hostname:?}"))?;
        }
        Ok(())
    }

    /// Everything else, in runc's order. The guest's code runs on the
    /// calling thread and threads it starts later inherit all of it.
    pub fn apply(&self) -> anyhow::Result<()> {
        let syscall = LinuxSyscall;
        for rlimit in &self.rlimits {
            syscall.set_rlimit(rlimit).with_context(|| format!("process.rlimits: setting {:?}", rlimit.typ()))?;
        }
        if let Some(score) = self.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", score.to_string())
                .context("process.oomScoreAdj: writing /proc/self/oom_score_adj")?;
        }
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it
        // while the process still has it (runc does the same).
        if !self.no_new_privileges {
            self.load_seccomp()?;
        }
        if let Some(caps) = &self.capabilities
            && caps.bounding().is_some()
        {
            // Dropping from the bounding set needs CAP_SETPCAP: before the user switch.
            let mut bounding = LinuxCapabilities::default();
            bounding.set_bounding(caps.bounding().clone());
            bounding.set_effective(None).set_permitted(None).set_inheritable(None).set_ambient(None);
            libcontainer::capabilities::drop_privileges(&bounding, &syscall)
                .context("process.capabilities.bounding")?;
        }
        let shim = nix::unistd::getppid();
        self.switch_user()?;
        // A change of credentials clears the parent-death signal: arm it
        // again, and leave if the shim died in between.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .context("process.user: re-arming the parent-death signal")?;
        if nix::unistd::getppid() != shim {
            bail!("the shim exited while the guest was starting");
        }
        if let Some(caps) = &self.capabilities {
            let mut rest = caps.clone();
            rest.set_bounding(None);
            libcontainer::capabilities::drop_privileges(&rest, &syscall).context("process.capabilities")?;
        }
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs().context("process.noNewPrivileges")?;
            self.load_seccomp()?;
        }
        Ok(())
    }

    fn switch_user(&self) -> anyhow::Result<()> {
        if let Some(umask) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
        }
        // glibc's set*id wrappers change every thread of the process, not
        // just this one; KEEPCAPS keeps the permitted set across a switch to
        // a non-root uid so that the spec's capabilities can be set after it.
        let gids: Vec<Gid> = self.additional_gids.iter().copied().map(Gid::from_raw).collect();
        nix::unistd::setgroups(&gids).context("process.user.additionalGids")?;
        nix::sys::prctl::set_keepcaps(true).context("process.user: PR_SET_KEEPCAPS")?;
        let gid = Gid::from_raw(self.gid);
        nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("process.user.gid {}", self.gid))?;
        let uid = Uid::from_raw(self.uid);
        nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("process.user.uid {}", self.uid))?;
        nix::sys::prctl::set_keepcaps(false).context("process.user: PR_SET_KEEPCAPS")?;
        Ok(())
    }

    fn load_seccomp(&self) -> anyhow::Result<()> {
        let Some(seccomp) = &self.seccomp else {
            return Ok(());
        };
        // Threads the guest process started before this point (listeners
        // of a serving function) get the filter too.
        let mut seccomp = seccomp.clone();
        let mut flags = seccomp.flags().clone().unwrap_or_default();
        if !flags.contains(&LinuxSeccompFilterFlag::SeccompFilterFlagTsync) {
            flags.push(LinuxSeccompFilterFlag::SeccompFilterFlagTsync);
        }
        seccomp.set_flags(Some(flags));
        libcontainer::seccomp::initialize_seccomp(&seccomp).context("linux.seccomp: loading the filter")?;
        Ok(())
    }
}

/// Refuses what the filter loader would only discover in the guest process.
fn check_seccomp(seccomp: &LinuxSeccomp) -> anyhow::Result<()> {
    use oci_spec::runtime::LinuxSeccompAction as Action;
    let supported = |action: Action| !matches!(action, Action::ScmpActNotify);
    if !supported(seccomp.default_action()) {
        bail!("linux.seccomp.defaultAction {:?} is not supported by this shim", seccomp.default_action());
    }
    for rule in seccomp.syscalls().iter().flatten() {
        if !supported(rule.action()) {
            bail!(
                "linux.seccomp.syscalls: action {:?} (for {:?}) is not supported by this shim",
                rule.action(),
                rule.names()
            );
        }
    }
    if seccomp.listener_path().is_some() {
        bail!("linux.seccomp.listenerPath is not supported by this shim");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, ProcessBuilder, SpecBuilder, UserBuilder};

    use super::*;

    fn spec_with(namespaces: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .user(
                        UserBuilder::default().uid(1000u32).gid(1000u32).additional_gids(vec![10u32]).build().unwrap(),
                    )
                    .oom_score_adj(500)
                    .no_new_privileges(true)
                    .build()
                    .unwrap(),
            )
            .linux(LinuxBuilder::default().namespaces(namespaces).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn reads_user_oom_score_and_namespaces() {
        let ns = |typ, path: Option<&str>| {
            let b = LinuxNamespaceBuilder::default().typ(typ);
            match path {
                Some(p) => b.path(p).build().unwrap(),
                None => b.build().unwrap(),
            }
        };
        let spec = spec_with(vec![
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Network, Some("/proc/self/ns/net")),
            ns(LinuxNamespaceType::Uts, None),
        ]);
        let c = Confinement::from_spec(&spec).unwrap();
        assert_eq!((c.uid, c.gid, c.additional_gids.as_slice()), (1000, 1000, &[10][..]));
        assert_eq!(c.oom_score_adj, Some(500));
        assert!(c.no_new_privileges);
        assert_eq!(
            c.namespaces,
            [
                NamespaceEntry { kind: "net".into(), path: Some("/proc/self/ns/net".into()) },
                NamespaceEntry { kind: "uts".into(), path: None }
            ]
        );
    }

    #[test]
    fn a_missing_namespace_path_or_a_user_namespace_is_refused_by_name() {
        let missing =
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path("/nonexistent/ns").build().unwrap();
        let err = Confinement::from_spec(&spec_with(vec![missing])).unwrap_err();
        assert!(format!("{err:#}").contains("linux.namespaces"), "{err:#}");
        let user = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).build().unwrap();
        let err = Confinement::from_spec(&spec_with(vec![user])).unwrap_err();
        assert!(format!("{err:#}").contains("user namespace"), "{err:#}");
    }
}
