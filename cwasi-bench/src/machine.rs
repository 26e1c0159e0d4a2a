//! What the benchmark ran on, for the report.

use std::process::Command;

pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("?").to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    let engine =
        cwasi_testkit::shim_engine(&cwasi_testkit::workspace_root().join("target/release/containerd-shim-cwasi-v1"));
    format!(
        "{cpu}, {cores} cores, {memory_gib} GiB, Linux {}, containerd {}, redis-server {}, engine {engine}",
        kernel.trim(),
        version("containerd", "--version"),
        version("redis-server", "--version").trim_start_matches("v="),
    )
}
