//! cwasi benchmarks, through a private containerd and real guests:
//!
//! - `cwasi-bench start [--runs N]`: median start-to-exit time of hello,
//!   compiling every time (empty cache) and loading from the cache;
//! - `cwasi-bench local [--quick]`: local mode latency and throughput beside memcpy;
//! - `cwasi-bench embedded [--quick]`: the same for embedded mode.

mod embedded_mode;
mod local_mode;
mod start_time;

use anyhow::{Context, bail};

fn main() {
    if let Err(e) = run() {
        eprintln!("cwasi-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs needs a number")?.parse()?,
        None => 20,
    };
    let quick = args.iter().any(|a| a == "--quick");
    match args.first().map(String::as_str) {
        Some("start") => start_time::run(runs),
        Some("local") => local_mode::run(quick),
        Some("embedded") => embedded_mode::run(quick),
        None | Some("all") => {
            start_time::run(runs)?;
            local_mode::run(quick)?;
            embedded_mode::run(quick)
        }
        Some(other) => bail!("unknown benchmark {other:?} (known: start, local, embedded, all)"),
    }
}
