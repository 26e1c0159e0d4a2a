//! What a test reads of a guest process from `/proc`.

use anyhow::Context;

/// Resident memory (`VmRSS`) of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// How many memory mappings process `pid` has (bounded by `vm.max_map_count`).
pub fn map_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?.lines().count())
}

/// CPU time (user + system) of process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').context("no command name in stat")?.1.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // utime and stime, fields 14 and 15 of stat: 11 and 12 from the state on.
    Ok(field(11)? + field(12)?)
}
