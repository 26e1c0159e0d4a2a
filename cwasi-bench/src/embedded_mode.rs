//! Embedded mode through a real container: a `bench-caller` guest whose image
//! ships an echo and a sink peer, run in the caller's engine; memcpy of the
//! same size, measured in the same run, is the reference.

use cwasi_testkit::{Containerd, test_image_with_peers, workspace_root};

use crate::local_mode::{bench_call, memcpy_median_ns};

const MIB: usize = 1 << 20;

pub fn run(quick: bool) -> anyhow::Result<()> {
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
    let containerd = Containerd::start(&shim, &[])?;
    let caller = test_image_with_peers("bench-caller", &["echo-server", "sink-server"])?;
    containerd.import(&caller)?;
    let embed = ["--annotation", "cwasi.io/embed=echo=/echo-server.wasm,sink=/sink-server.wasm"];

    let (small_n, large_n) = if quick { (200, 3) } else { (5000, 15) };
    let large = 100 * MIB;
    let round_trip = bench_call(&containerd, &caller, "echo", 1024, small_n, &embed)?;
    let one_way = bench_call(&containerd, &caller, "sink", large, large_n, &embed)?;
    let memcpy_ns = memcpy_median_ns(large, if quick { 3 } else { 15 });

    println!("embedded mode (peer in the caller's image and engine), in one run:");
    println!(
        "  1 KiB round trip     median {:>9.2} µs   p99 {:>9.2} µs",
        round_trip.median_ns as f64 / 1e3,
        round_trip.p99_ns as f64 / 1e3
    );
    println!(
        "  100 MiB one-way      median {:>9.2} ms   {:>6.2} GB/s   {:>5.2} × memcpy time",
        one_way.median_ns as f64 / 1e6,
        large as f64 / one_way.median_ns as f64,
        one_way.median_ns as f64 / memcpy_ns as f64
    );
    println!(
        "  memcpy 100 MiB       median {:>9.2} ms   {:>6.2} GB/s   (single thread)",
        memcpy_ns as f64 / 1e6,
        large as f64 / memcpy_ns as f64
    );
    Ok(())
}
