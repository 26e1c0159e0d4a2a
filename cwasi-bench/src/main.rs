//! `cwasi-bench start [--runs N]`: median start-to-exit time of the hello
//! function through the cwasi shim, compiling every time (empty cache) and
//! loading the compiled module from the cache.

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
    match args.first().map(String::as_str) {
        Some("start") | None => start_time::run(runs),
        Some(other) => bail!("unknown benchmark {other:?} (known: start)"),
    }
}
