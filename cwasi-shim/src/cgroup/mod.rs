//! The container's cgroup: created at `create` from `linux.cgroupsPath` with
//! `linux.resources` applied, joined by the guest process before it runs
//! guest code, removed at `delete`.
//!
//! Direct cgroupfs writes: a handful of `mkdir` and `write` calls, a few
//! hundred microseconds, and nothing to wait for — the cached start of a
//! guest stays what it was. cgroup v1 (and hybrid hosts, where the v1
//! hierarchies carry the controllers) and the unified v2 hierarchy.

mod path;
mod resources;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oci_spec::runtime::{LinuxResources, Spec};
pub use path::relative_cgroup_path;
pub use resources::{LimitWrite, Version, limit_writes};

const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Creates the cgroup `spec` asks for (`linux.cgroupsPath`, `linux.resources`).
pub fn for_container(spec: &Spec, container_id: &str) -> anyhow::Result<ContainerCgroup> {
    static HIERARCHIES: OnceLock<Result<Hierarchies, String>> = OnceLock::new();
    let hierarchies = HIERARCHIES
        .get_or_init(|| Hierarchies::detect().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("linux.cgroupsPath: {e}"))?;
    let linux = spec.linux().as_ref();
    let relative = relative_cgroup_path(linux.and_then(|l| l.cgroups_path().as_deref()), container_id)?;
    let started = Instant::now();
    let cgroup = ContainerCgroup::create(hierarchies, &relative, linux.and_then(|l| l.resources().as_ref()))?;
    tracing::debug!(path = %relative.display(), elapsed_us = started.elapsed().as_micros() as u64, "created the container's cgroup");
    Ok(cgroup)
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone)]
pub enum Hierarchies {
    /// One mount per controller set (`/sys/fs/cgroup/cpu`, `/sys/fs/cgroup/memory`, …).
    V1(Vec<V1Hierarchy>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

#[derive(Debug, Clone)]
pub struct V1Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
}

impl Hierarchies {
    /// Reads this host's cgroup mounts.
    pub fn detect() -> anyhow::Result<Self> {
        let mountinfo = fs::read_to_string(DEFAULT_MOUNTINFO).context("reading /proc/self/mountinfo")?;
        Self::from_mountinfo(&mountinfo)
    }

    fn from_mountinfo(mountinfo: &str) -> anyhow::Result<Self> {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, options) = (right.next().unwrap_or(""), right.nth(1).unwrap_or(""));
            match fstype {
                "cgroup2" if v2.is_none() || mount == "/sys/fs/cgroup" => v2 = Some(PathBuf::from(mount)),
                "cgroup" => {
                    // Named hierarchies (name=systemd) carry no controller.
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .map(str::to_owned)
                        .collect();
                    if !controllers.is_empty() {
                        v1.push(V1Hierarchy { mount: PathBuf::from(mount), controllers });
                    }
                }
                _ => {}
            }
        }
        match (v1.is_empty(), v2) {
            (false, _) => Ok(Self::V1(v1)),
            (true, Some(root)) => Ok(Self::V2(root)),
            (true, None) => bail!("no cgroup hierarchy is mounted on this host"),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Self::V1(_) => Version::V1,
            Self::V2(_) => Version::V2,
        }
    }
}

/// A container's cgroup (one directory per v1 hierarchy, or one on v2).
#[derive(Debug)]
pub struct ContainerCgroup {
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    version: Version,
}

impl ContainerCgroup {
    /// Creates `relative` in every hierarchy and applies `resources`; an
    /// error names the OCI field that could not be honoured.
    pub fn create(
        hierarchies: &Hierarchies,
        relative: &Path,
        resources: Option<&LinuxResources>,
    ) -> anyhow::Result<Self> {
        let writes = match resources {
            Some(r) => limit_writes(r, hierarchies.version())?,
            None => Vec::new(),
        };
        let cgroup = match hierarchies {
            Hierarchies::V1(list) => create_v1(list, relative, &writes)?,
            Hierarchies::V2(root) => create_v2(root, relative, &writes)?,
        };
        Ok(cgroup)
    }

    /// The `cgroup.procs` files the guest process writes `0` into to join
    /// (prepared here so that joining between fork and exec allocates nothing).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs.iter().filter_map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()).collect()
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.memory_dir.as_ref()?;
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// The memory limit in force, for messages.
    pub fn memory_limit(&self) -> Option<String> {
        let dir = self.memory_dir.as_ref()?;
        let file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_owned())
    }

    /// Removes the container's directories (not the shared parents). The
    /// guest has exited; the kernel may need a moment to release the cgroup.
    pub fn remove(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc_ebusy()) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing cgroup {}", dir.display()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

fn create_v1(hierarchies: &[V1Hierarchy], relative: &Path, writes: &[LimitWrite]) -> anyhow::Result<ContainerCgroup> {
    let mut dirs = Vec::new();
    let mut memory_dir = None;
    for hierarchy in hierarchies {
        let dir = hierarchy.mount.join(relative);
        create_leaf(&dir)?;
        if hierarchy.controllers.iter().any(|c| c == "cpuset") {
            inherit_cpuset(&hierarchy.mount, relative)?;
        }
        if hierarchy.controllers.iter().any(|c| c == "memory") {
            memory_dir = Some(dir.clone());
        }
        dirs.push(dir);
    }
    for w in writes {
        let Some(index) = hierarchies.iter().position(|h| h.controllers.iter().any(|c| c == w.controller)) else {
            bail!("{}: the {} cgroup controller is not mounted on this host", w.field, w.controller);
        };
        write_limit(&dirs[index], w)?;
    }
    Ok(ContainerCgroup { dirs, memory_dir, version: Version::V1 })
}

fn create_v2(root: &Path, relative: &Path, writes: &[LimitWrite]) -> anyhow::Result<ContainerCgroup> {
    let mut wanted: Vec<&str> = writes.iter().map(|w| w.controller).filter(|c| !c.is_empty()).collect();
    // Memory and CPU accounting also feed `ctr task metrics`.
    wanted.extend(["cpu", "memory", "pids"]);
    wanted.sort_unstable();
    wanted.dedup();
    // Each level hands the controllers down to the next one.
    let mut dir = root.to_path_buf();
    let levels = relative.components().count();
    for (level, component) in relative.components().enumerate() {
        enable_controllers(&dir, &wanted)?;
        dir.push(component);
        if level + 1 == levels { create_leaf(&dir)? } else { create_dir(&dir)? }
    }
    for w in writes {
        write_limit(&dir, w)?;
    }
    Ok(ContainerCgroup { memory_dir: Some(dir.clone()), dirs: vec![dir], version: Version::V2 })
}

/// Creates the container's own directory (and missing parents).
fn create_leaf(dir: &Path) -> anyhow::Result<()> {
    // A container id can come back (ctr run of the same id after a shim
    // was killed): start from fresh defaults, not the last one's limits.
    // A cgroup that still has processes stays (rmdir fails) and is reused.
    let _ = fs::remove_dir(dir);
    create_dir(dir)
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("linux.cgroupsPath: cannot create cgroup {}", dir.display()))
}

fn write_limit(dir: &Path, w: &LimitWrite) -> anyhow::Result<()> {
    let file = dir.join(&w.file);
    fs::write(&file, &w.value).with_context(|| format!("{}: writing {:?} to {}", w.field, w.value, file.display()))
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and a
/// process cannot join it until both are set: copy them down from the parent.
fn inherit_cpuset(mount: &Path, relative: &Path) -> anyhow::Result<()> {
    let mut parent = mount.to_path_buf();
    for component in relative.components() {
        let child = parent.join(component);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = fs::read_to_string(child.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let inherited = fs::read_to_string(parent.join(file))
                    .with_context(|| format!("linux.cgroupsPath: reading {}", parent.join(file).display()))?;
                fs::write(child.join(file), inherited.trim())
                    .with_context(|| format!("linux.cgroupsPath: writing {}", child.join(file).display()))?;
            }
        }
        parent = child;
    }
    Ok(())
}

/// Enables the wanted controllers that `dir` offers in its `cgroup.subtree_control`.
fn enable_controllers(dir: &Path, wanted: &[&str]) -> anyhow::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<String> =
        wanted.iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| format!("+{c}")).collect();
    if enable.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    fs::write(&file, enable.join(" "))
        .with_context(|| format!("linux.cgroupsPath: enabling {} in {}", enable.join(" "), file.display()))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    use super::*;

    const MOUNTINFO_V1: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const MOUNTINFO_V2: &str = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(20_000i64).period(100_000u64).build().unwrap())
            .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn detects_v1_hybrid_and_v2_layouts() {
        let Hierarchies::V1(list) = Hierarchies::from_mountinfo(MOUNTINFO_V1).unwrap() else { panic!("not v1") };
        let names: Vec<_> = list.iter().flat_map(|h| h.controllers.clone()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "cpuset", "memory"]);
        let Hierarchies::V2(root) = Hierarchies::from_mountinfo(MOUNTINFO_V2).unwrap() else { panic!("not v2") };
        assert_eq!(root, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn v2_enables_controllers_down_the_path_and_writes_limits_in_the_leaf() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids").unwrap();
        let cgroup =
            ContainerCgroup::create(&Hierarchies::V2(root.path().into()), Path::new("k8s/pod1/c1"), Some(&resources()))
                .unwrap();
        let leaf = root.path().join("k8s/pod1/c1");
        assert_eq!(fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
        assert_eq!(fs::read_to_string(leaf.join("cpu.max")).unwrap(), "20000 100000");
        assert_eq!(fs::read_to_string(leaf.join("memory.max")).unwrap(), "67108864");
        assert_eq!(cgroup.procs_files(), [CString::new(leaf.join("cgroup.procs").to_str().unwrap()).unwrap()]);
        fs::write(leaf.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cgroup.oom_kills(), Some(1));
        for file in ["cpu.max", "memory.max", "memory.events"] {
            fs::remove_file(leaf.join(file)).unwrap();
        }
        cgroup.remove().unwrap();
        assert!(!leaf.exists() && leaf.parent().unwrap().exists());
    }

    #[test]
    fn v1_writes_each_limit_in_its_hierarchy_and_inherits_cpusets() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = |name: &str| V1Hierarchy { mount: root.path().join(name), controllers: vec![name.to_owned()] };
        let list = vec![hierarchy("cpu"), hierarchy("cpuset"), hierarchy("memory")];
        for h in &list {
            fs::create_dir_all(&h.mount).unwrap();
        }
        fs::write(root.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let cgroup =
            ContainerCgroup::create(&Hierarchies::V1(list), Path::new("default/c1"), Some(&resources())).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("cpu/default/c1/cpu.cfs_quota_us")).unwrap(), "20000");
        assert_eq!(
            fs::read_to_string(root.path().join("memory/default/c1/memory.limit_in_bytes")).unwrap(),
            "67108864"
        );
        assert_eq!(fs::read_to_string(root.path().join("cpuset/default/cpuset.cpus")).unwrap(), "0-1");
        assert_eq!(fs::read_to_string(root.path().join("cpuset/default/c1/cpuset.mems")).unwrap(), "0");
        assert_eq!(cgroup.procs_files().len(), 3);
        assert_eq!(cgroup.memory_limit().as_deref(), Some("67108864"));
    }

    #[test]
    fn a_missing_controller_is_refused_with_the_field() {
        let root = tempfile::tempdir().unwrap();
        let list = vec![V1Hierarchy { mount: root.path().join("cpu"), controllers: vec!["cpu".into()] }];
        let err = ContainerCgroup::create(&Hierarchies::V1(list), Path::new("c1"), Some(&resources())).unwrap_err();
        assert!(format!("{err:#}").contains("linux.resources.memory.limit"), "{err:#}");
    }
}
