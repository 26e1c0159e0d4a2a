//! `linux.resources` as the cgroup files to write, for cgroup v1 and v2.
//!
//! Every write remembers the OCI field it comes from, so that a limit the
//! host refuses fails `create` with an error that names the field.

use anyhow::bail;
use oci_spec::runtime::LinuxResources;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One cgroup file write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// The controller that owns the file (on v1: which hierarchy).
    pub controller: &'static str,
    pub file: String,
    pub value: String,
    /// The OCI field it comes from, for error messages.
    pub field: &'static str,
}

fn write(controller: &'static str, file: impl Into<String>, value: impl ToString, field: &'static str) -> LimitWrite {
    LimitWrite { controller, file: file.into(), value: value.to_string(), field }
}

/// The files to write, in order, for `resources`. Fields the shim cannot
/// honour on this cgroup version are refused with their name.
pub fn limit_writes(resources: &LinuxResources, version: Version) -> anyhow::Result<Vec<LimitWrite>> {
    let mut writes = Vec::new();
    cpu_writes(resources, version, &mut writes)?;
    memory_writes(resources, version, &mut writes)?;
    if let Some(pids) = resources.pids() {
        let value = if pids.limit() > 0 { pids.limit().to_string() } else { "max".to_owned() };
        writes.push(write("pids", "pids.max", value, "linux.resources.pids.limit"));
    }
    for huge in resources.hugepage_limits().iter().flatten() {
        let file = match version {
            Version::V1 => format!("hugetlb.{}.limit_in_bytes", huge.page_size()),
            Version::V2 => format!("hugetlb.{}.max", huge.page_size()),
        };
        writes.push(write("hugetlb", file, huge.limit(), "linux.resources.hugepageLimits"));
    }
    for (key, value) in resources.unified().iter().flatten() {
        if version == Version::V1 {
            bail!("linux.resources.unified is for cgroup v2; this host has cgroup v1");
        }
        let Some((controller, _)) = key.split_once('.') else {
            bail!("linux.resources.unified: {key:?} is not a cgroup file name");
        };
        if key.contains('/') || controller.is_empty() {
            bail!("linux.resources.unified: {key:?} is not a cgroup file name");
        }
        let controller = match controller {
            "cpu" => "cpu",
            "cpuset" => "cpuset",
            "memory" => "memory",
            "pids" => "pids",
            "io" => "io",
            "hugetlb" => "hugetlb",
            _ => "",
        };
        writes.push(write(controller, key.clone(), value, "linux.resources.unified"));
    }
    if resources.block_io().is_some() {
        bail!("linux.resources.blockIO is not supported by this shim");
    }
    if resources.network().is_some() {
        bail!("linux.resources.network is not supported by this shim");
    }
    if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        bail!("linux.resources.rdma is not supported by this shim");
    }
    Ok(writes)
}

fn cpu_writes(resources: &LinuxResources, version: Version, writes: &mut Vec<LimitWrite>) -> anyhow::Result<()> {
    let Some(cpu) = resources.cpu() else {
        return Ok(());
    };
    if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
        bail!("linux.resources.cpu.realtimeRuntime/realtimePeriod are not supported by this shim");
    }
    match version {
        Version::V1 => {
            if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
                writes.push(write("cpu", "cpu.shares", shares, "linux.resources.cpu.shares"));
            }
            // The period first: the kernel checks the quota against it.
            if let Some(period) = cpu.period().filter(|p| *p != 0) {
                writes.push(write("cpu", "cpu.cfs_period_us", period, "linux.resources.cpu.period"));
            }
            if let Some(quota) = cpu.quota().filter(|q| *q != 0) {
                let quota = if quota < 0 { -1 } else { quota };
                writes.push(write("cpu", "cpu.cfs_quota_us", quota, "linux.resources.cpu.quota"));
            }
            if let Some(burst) = cpu.burst() {
                writes.push(write("cpu", "cpu.cfs_burst_us", burst, "linux.resources.cpu.burst"));
            }
        }
        Version::V2 => {
            if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
                writes.push(write("cpu", "cpu.weight", shares_to_weight(shares), "linux.resources.cpu.shares"));
            }
            let quota = cpu.quota().filter(|q| *q != 0);
            let period = cpu.period().filter(|p| *p != 0);
            if quota.is_some() || period.is_some() {
                let quota = match quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_owned(),
                };
                let value = format!("{quota} {}", period.unwrap_or(100_000));
                writes.push(write("cpu", "cpu.max", value, "linux.resources.cpu.quota"));
            }
            if let Some(burst) = cpu.burst() {
                writes.push(write("cpu", "cpu.max.burst", burst, "linux.resources.cpu.burst"));
            }
        }
    }
    if let Some(idle) = cpu.idle() {
        writes.push(write("cpu", "cpu.idle", idle, "linux.resources.cpu.idle"));
    }
    if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
        writes.push(write("cpuset", "cpuset.cpus", cpus, "linux.resources.cpu.cpus"));
    }
    if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
        writes.push(write("cpuset", "cpuset.mems", mems, "linux.resources.cpu.mems"));
    }
    Ok(())
}

fn memory_writes(resources: &LinuxResources, version: Version, writes: &mut Vec<LimitWrite>) -> anyhow::Result<()> {
    let Some(memory) = resources.memory() else {
        return Ok(());
    };
    if memory.kernel().is_some() || memory.kernel_tcp().is_some() {
        bail!("linux.resources.memory.kernel/kernelTCP are deprecated and not supported by this shim");
    }
    let limit = memory.limit().filter(|l| *l != 0);
    match version {
        Version::V1 => {
            if let Some(limit) = limit {
                let limit = if limit < 0 { -1 } else { limit };
                writes.push(write("memory", "memory.limit_in_bytes", limit, "linux.resources.memory.limit"));
            }
            if let Some(swap) = memory.swap().filter(|s| *s != 0) {
                let swap = if swap < 0 { -1 } else { swap };
                writes.push(write("memory", "memory.memsw.limit_in_bytes", swap, "linux.resources.memory.swap"));
            }
            if let Some(reservation) = memory.reservation().filter(|r| *r != 0) {
                writes.push(write(
                    "memory",
                    "memory.soft_limit_in_bytes",
                    reservation,
                    "linux.resources.memory.reservation",
                ));
            }
            if let Some(swappiness) = memory.swappiness() {
                writes.push(write("memory", "memory.swappiness", swappiness, "linux.resources.memory.swappiness"));
            }
            if memory.disable_oom_killer() == Some(true) {
                writes.push(write("memory", "memory.oom_control", 1, "linux.resources.memory.disableOOMKiller"));
            }
        }
        Version::V2 => {
            if let Some(limit) = limit {
                let value = if limit < 0 { "max".to_owned() } else { limit.to_string() };
                writes.push(write("memory", "memory.max", value, "linux.resources.memory.limit"));
            }
            // v2 limits swap alone; OCI's swap is memory + swap.
            if let Some(swap) = memory.swap().filter(|s| *s != 0) {
                let value = match (swap, limit) {
                    (s, _) if s < 0 => "max".to_owned(),
                    (s, Some(l)) if l > 0 && s >= l => (s - l).to_string(),
                    _ => bail!("linux.resources.memory.swap ({swap}) must be -1 or at least memory.limit on cgroup v2"),
                };
                writes.push(write("memory", "memory.swap.max", value, "linux.resources.memory.swap"));
            }
            if let Some(reservation) = memory.reservation().filter(|r| *r != 0) {
                writes.push(write("memory", "memory.low", reservation, "linux.resources.memory.reservation"));
            }
            if memory.swappiness().is_some() {
                bail!("linux.resources.memory.swappiness does not exist on cgroup v2");
            }
            if memory.disable_oom_killer() == Some(true) {
                bail!("linux.resources.memory.disableOOMKiller does not exist on cgroup v2");
            }
        }
    }
    Ok(())
}

/// cgroup v1 shares [2, 262144] onto v2 weight [1, 10000], as runc and crun map them.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};

    use super::*;

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(20_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).swap(64i64 << 20).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
            .build()
            .unwrap()
    }

    fn files(writes: &[LimitWrite]) -> Vec<(&str, &str)> {
        writes.iter().map(|w| (w.file.as_str(), w.value.as_str())).collect()
    }

    #[test]
    fn v1_writes_period_before_quota_and_memsw_after_the_limit() {
        let writes = limit_writes(&resources(), Version::V1).unwrap();
        assert_eq!(
            files(&writes),
            [
                ("cpu.shares", "512"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "20000"),
                ("cpuset.cpus", "0"),
                ("memory.limit_in_bytes", "67108864"),
                ("memory.memsw.limit_in_bytes", "67108864"),
                ("pids.max", "32"),
            ]
        );
    }

    #[test]
    fn v2_converts_shares_quota_and_swap() {
        let writes = limit_writes(&resources(), Version::V2).unwrap();
        assert_eq!(
            files(&writes),
            [
                ("cpu.weight", "20"),
                ("cpu.max", "20000 100000"),
                ("cpuset.cpus", "0"),
                ("memory.max", "67108864"),
                ("memory.swap.max", "0"),
                ("pids.max", "32"),
            ]
        );
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let rt = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().realtime_runtime(1000i64).build().unwrap())
            .build()
            .unwrap();
        assert!(format!("{:#}", limit_writes(&rt, Version::V1).unwrap_err()).contains("realtimeRuntime"));
        let unified = LinuxResourcesBuilder::default()
            .unified(
                [("memory.high".to_owned(), "1000".to_owned())]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        assert!(format!("{:#}", limit_writes(&unified, Version::V1).unwrap_err()).contains("linux.resources.unified"));
        assert_eq!(files(&limit_writes(&unified, Version::V2).unwrap()), [("memory.high", "1000")]);
    }
}
