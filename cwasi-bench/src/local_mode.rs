//! Local mode through real containers: a `bench-caller` guest calls an echo
//! (round trip) and a sink (one-way) function on the same node; memcpy of
//! the same size, measured in the same run, is the reference.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Context;
use cwasi_testkit::{Containerd, test_image, workspace_root};

const MIB: usize = 1 << 20;

/// Timings a `bench-caller` guest printed, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct CallTimings {
    pub median_ns: u64,
    pub p99_ns: u64,
}

/// A private containerd with an echo and a sink function serving.
struct LocalRig {
    containerd: Containerd,
    caller: cwasi_testkit::TestImage,
}

impl LocalRig {
    fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
        anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
        let containerd = Containerd::start(&shim, env)?;
        let echo = test_image("echo-server")?;
        let sink = test_image("sink-server")?;
        let caller = test_image("bench-caller")?;
        for image in [&echo, &sink, &caller] {
            containerd.import(image)?;
        }
        containerd.serve(&echo, "echo", &[])?;
        containerd.serve(&sink, "sink", &[])?;
        Ok(Self { containerd, caller })
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let (small_n, large_n) = if quick { (200, 3) } else { (5000, 15) };
    let large = 100 * MIB;
    let rig = LocalRig::start(&[])?;
    let round_trip = bench_call(&rig.containerd, &rig.caller, "echo", 1024, small_n, &[])?;
    let one_way = bench_call(&rig.containerd, &rig.caller, "sink", large, large_n, &[])?;
    drop(rig);
    // The same small call when waiters sleep on the futex at once (no spin).
    let no_spin = LocalRig::start(&[(cwasi_comm::local::SPIN_ENV, "0")])?;
    let round_trip_no_spin = bench_call(&no_spin.containerd, &no_spin.caller, "echo", 1024, small_n, &[])?;
    drop(no_spin);
    let memcpy_ns = memcpy_median_ns(large, if quick { 3 } else { 15 });

    let gbps = |ns: u64| large as f64 / ns as f64;
    println!("local mode (two containers on this node, shared memory), in one run:");
    println!("  1 KiB round trip     median {:>9.1} µs   p99 {:>9.1} µs   (spin 60 µs, then futex)", us(round_trip.median_ns), us(round_trip.p99_ns));
    println!(
        "  1 KiB round trip     median {:>9.1} µs   p99 {:>9.1} µs   (futex only, CWASI_SPIN_US=0)",
        us(round_trip_no_spin.median_ns),
        us(round_trip_no_spin.p99_ns)
    );
    println!(
        "  100 MiB one-way      median {:>9.2} ms   {:>6.2} GB/s   {:>5.1} % of memcpy",
        ms(one_way.median_ns),
        gbps(one_way.median_ns),
        100.0 * memcpy_ns as f64 / one_way.median_ns as f64
    );
    println!("  memcpy 100 MiB       median {:>9.2} ms   {:>6.2} GB/s   (single thread)", ms(memcpy_ns), gbps(memcpy_ns));
    Ok(())
}

/// Runs `bench-caller` against `peer` and parses its timings.
/// `flags` go to `ctr run` (e.g. `cwasi.io/embed` annotations).
pub fn bench_call(
    containerd: &Containerd,
    caller: &cwasi_testkit::TestImage,
    peer: &str,
    size: usize,
    iterations: usize,
    flags: &[&str],
) -> anyhow::Result<CallTimings> {
    let id = format!("bench-{peer}-{size}");
    let peers = format!("cwasi.io/peers={peer}");
    let (size_arg, n_arg) = (size.to_string(), iterations.to_string());
    let mut all_flags = vec!["--rm", "--annotation", &peers];
    all_flags.extend_from_slice(flags);
    let out = containerd
        .run(&id, caller, &all_flags, &["/bench-caller.wasm", peer, &size_arg, &n_arg])?
        .ok()
        .with_context(|| format!("benchmark {id}"))?;
    let line = out.stdout.lines().find(|l| l.starts_with("bench ")).context("no timings printed")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("{name} missing in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(CallTimings { median_ns: field("median_ns")?, p99_ns: field("p99_ns")? })
}

/// Median time of a single-threaded copy of `len` bytes between buffers
/// that are already resident.
pub fn memcpy_median_ns(len: usize, runs: usize) -> u64 {
    let source: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut target = vec![1u8; len];
    let mut times: Vec<u64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            target.copy_from_slice(black_box(&source));
            black_box(&mut target);
            started.elapsed().as_nanos() as u64
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}
