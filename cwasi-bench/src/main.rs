//! cwasi benchmarks, through private containerd instances and real guests.
//!
//! - `cwasi-bench matrix [--quick] [--payloads BYTES,…]`: every mode (embedded, local, remote,
//!   redis-baseline) × payload × shape (sequential, fan-out 4), beside
//!   memcpy and a raw Redis SET+GET measured in the same run; writes
//!   `target/bench/report.{md,csv,svg}` and prints the table.
//! - `cwasi-bench start [--runs N]`: container start time of hello through
//!   cwasi (compiling, cached) and through a stock runwasi shim when built.
//! - `cwasi-bench all`: both, into one report.

mod baseline;
mod machine;
mod matrix;
mod report;
mod rig;
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
    let payloads = match args.iter().position(|a| a == "--payloads") {
        Some(i) => Some(
            args.get(i + 1)
                .context("--payloads needs sizes in bytes, comma-separated")?
                .split(',')
                .map(|p| p.parse::<usize>().with_context(|| format!("bad payload size {p:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let mut report = report::Report::new(machine::describe(), quick);
    match args.first().map(String::as_str) {
        Some("matrix") => report.matrix = Some(matrix::run(quick, payloads)?),
        Some("start") => report.start = Some(start_time::run(runs)?),
        None | Some("all") => {
            report.start = Some(start_time::run(runs)?);
            report.matrix = Some(matrix::run(quick, payloads)?);
        }
        Some(other) => bail!("unknown benchmark {other:?} (known: matrix, start, all)"),
    }
    let dir = cwasi_testkit::workspace_root().join("target/bench");
    report.write(&dir)?;
    print!("{}", report.markdown());
    eprintln!("wrote {}/report.md, report.csv{}", dir.display(), if report.matrix.is_some() { ", report.svg" } else { "" });
    Ok(())
}
