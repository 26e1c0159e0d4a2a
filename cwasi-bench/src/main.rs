//! cwasi benchmarks, through private containerd instances and real guests.
//!
//! - `cwasi-bench matrix [--quick] [--payloads BYTES,…]`: every mode (embedded, local, remote,
//!   redis-baseline) × payload × shape (sequential, fan-out 4), beside
//!   memcpy, a raw Redis SET+GET and the broker floor (a push-and-pop round
//!   trip through a second client) measured in the same run; writes
//!   `target/bench/report.{md,csv,svg}` and prints the table.
//! - `cwasi-bench start [--runs N]`: container start time of hello through
//!   cwasi (compiling, cached) and through a stock runwasi shim when built.
//! - `cwasi-bench topologies [--quick]`: remote mode on loopback, with nodes in
//!   network namespaces, on a Redis Cluster, and both, each beside a raw
//!   SET+GET and the broker floor from node A's network.
//! - `cwasi-bench all`: all of them, into one report.

mod baseline;
mod cli;
mod machine;
mod matrix;
mod page_moves;
mod report;
mod rig;
mod start_time;
mod topologies;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match cli::parse(&args) {
        Ok(cli::Command::Run(options)) => options,
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("cwasi-bench: {e:#}\n{}", cli::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = run(options) {
        eprintln!("cwasi-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(options: cli::Options) -> anyhow::Result<()> {
    let cli::Options { benchmark, quick, runs, payloads } = options;
    // Ctrl-C stops the private containerd and redis-server instances too.
    cwasi_testkit::on_interrupt()?;
    let mut report = report::Report::new(machine::describe(), quick);
    match benchmark {
        cli::Benchmark::Matrix => report.matrix = Some(matrix::run(quick, payloads)?),
        cli::Benchmark::Start => report.start = Some(start_time::run(runs)?),
        cli::Benchmark::Topologies => report.topologies = Some(topologies::run(quick)?),
        cli::Benchmark::All => {
            report.start = Some(start_time::run(runs)?);
            report.matrix = Some(matrix::run(quick, payloads)?);
            report.topologies = Some(topologies::run(quick)?);
        }
    }
    let dir = cwasi_testkit::workspace_root().join("target/bench");
    report.write(&dir)?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/report.md, report.csv{}",
        dir.display(),
        if report.matrix.is_some() { ", report.svg" } else { "" }
    );
    Ok(())
}
