//! `make demo`: what cwasi is for, in under a minute.
//!
//! A caller sends bytes to a `sha256` function and gets their digest back,
//! by four routes: the function shipped in the caller's image (embedded), in
//! another container on the node (local), on a second node through Redis
//! (remote), and on the same node forced through Redis (what functions do
//! without cwasi). Two private containerd instances play the two nodes; a
//! private redis-server connects them. The table shows the mode cwasi chose
//! (from the shim's log), the median latency of a small and a large payload,
//! and the speed-up over the Redis-only route. Everything is torn down at
//! the end, also on Ctrl-C.

use std::time::Instant;

use anyhow::Context;
use cwasi_testkit::{Measured, Route, TwoNodes, human_bytes, human_latency, workspace_root};

const SMALL: usize = 1 << 10;
const LARGE: usize = 10 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

/// One route's measurements.
struct Row {
    route: Route,
    small: Measured,
    large: Measured,
    echo: Measured,
}

fn run() -> anyhow::Result<()> {
    cwasi_testkit::on_interrupt()?;
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    let started = Instant::now();
    println!("cwasi demo: a caller sends bytes to a sha256 function and gets their digest back, by four routes.");
    println!("Starting two private containerd nodes (A, B) with the cwasi shim, a private redis-server, and");
    println!("sha256 (and echo) on both nodes ...");
    let nodes = TwoNodes::start(&shim, &[("sha256", "sha256-server", &[]), ("echo", "echo-server", &[])])?;
    let mut rows = Vec::new();
    for route in Route::ALL {
        println!("calling from node A: {} ...", description(route));
        let id = |what: &str| format!("demo-{}-{what}", route.name());
        let small = nodes.bench_call(&id("small"), route, &["sha256"], SMALL, 500, 2.0)?;
        let large = nodes.bench_call(&id("large"), route, &["sha256"], LARGE, 10, 3.0)?;
        let echo = nodes.bench_call(&id("echo"), route, &["echo"], LARGE, 10, 3.0)?;
        rows.push(Row { route, small, large, echo });
    }
    let base = rows.iter().find(|r| r.route == Route::RedisBaseline).context("no Redis-only row")?;
    let base = [base.small.timings.median_ns, base.large.timings.median_ns, base.echo.timings.median_ns];
    let (small, large) = (human_bytes(SMALL), human_bytes(LARGE));
    println!();
    println!(
        "{:<38} {:<11} {:>20} {:>20} {:>20}",
        "",
        "",
        format!("sha256 of {small}"),
        format!("sha256 of {large}"),
        format!("echo of {large}")
    );
    println!(
        "{:<38} {:<11} {:>11} {:>8} {:>11} {:>8} {:>11} {:>8}",
        "route (caller on node A)", "cwasi chose", "median", "speed-up", "median", "speed-up", "median", "speed-up"
    );
    println!("{}", "-".repeat(113));
    for row in &rows {
        let medians = [row.small.timings.median_ns, row.large.timings.median_ns, row.echo.timings.median_ns];
        let cells: Vec<String> = medians
            .iter()
            .zip(base)
            .map(|(&ns, base)| format!("{:>11} {:>8}", human_latency(ns), speed_up(base, ns)))
            .collect();
        println!(
            "{:<38} {:<11} {}",
            description(row.route),
            row.small.mode.as_deref().unwrap_or("(no log)"),
            cells.join(" ")
        );
    }
    println!();
    println!("Median round trip over the calls of each run; speed-up over the Redis-only route. \"cwasi chose\"");
    println!("is the mode the shim logged for the call (\"calling peer ... mode=...\"). Hashing 10 MiB in the");
    println!("guest takes the same time on every route; echo shows the transport alone (10 MiB out and back).");
    println!(
        "Demo took {:.0} s. The full benchmark (every mode, 1 KiB to 100 MiB, fan-out, start times):",
        started.elapsed().as_secs_f64()
    );
    println!("  make bench");
    Ok(())
}

fn description(route: Route) -> &'static str {
    match route {
        Route::Embedded => "peer in the caller's image",
        Route::Local => "peer in another container, node A",
        Route::Remote => "peer on node B, through Redis",
        Route::RedisBaseline => "peer on node A, forced through Redis",
    }
}

/// `12×`, `1.5×`: how many times faster than the baseline.
fn speed_up(baseline_ns: u64, ns: u64) -> String {
    let x = baseline_ns as f64 / ns.max(1) as f64;
    if x >= 10.0 { format!("{x:.0}×") } else { format!("{x:.1}×") }
}
