//! Container start time: hello through cwasi (compiling, cached) and through
//! a stock runwasi shim (crates.io `containerd-shim-wasm` + wasmtime, built by
//! `make bench` from `bench/runwasi-reference`), same module, same containerd.

use std::time::{Duration, Instant};

use anyhow::Context;
use cwasi_testkit::{Containerd, RUNTIME, TestImage, test_image, workspace_root};

const RUNWASI_BINARY: &str = "containerd-shim-runwasi-v1";
const RUNWASI_RUNTIME: &str = "io.containerd.runwasi.v1";

/// Medians of `runs` starts, in milliseconds.
#[derive(Debug, Clone)]
pub struct StartTimes {
    pub runs: usize,
    pub cwasi_compiling_ms: f64,
    pub cwasi_cached_ms: f64,
    pub runwasi_ms: Option<f64>,
}

pub fn run(runs: usize) -> anyhow::Result<StartTimes> {
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
    let runwasi = workspace_root().join("target/release").join(RUNWASI_BINARY);
    let mut shims = vec![("containerd-shim-cwasi-v1", shim.as_path())];
    if runwasi.exists() {
        shims.push((RUNWASI_BINARY, runwasi.as_path()));
    } else {
        eprintln!(
            "start time: {} not built (make bench builds it); skipping the runwasi comparison",
            runwasi.display()
        );
    }
    let image = test_image("hello")?;
    let containerd = Containerd::start_with_shims(&shims, &[])?;
    containerd.import(&image)?;
    let cache = containerd.dir().join("cache");

    // One unmeasured run warms the image snapshot and the page cache.
    time_one(&containerd, &image, RUNTIME, "warmup")?;
    let cwasi_compiling_ms = median_ms(runs, |i| {
        let _ = std::fs::remove_dir_all(&cache);
        time_one(&containerd, &image, RUNTIME, &format!("compile-{i}"))
    })?;
    let cwasi_cached_ms = median_ms(runs, |i| time_one(&containerd, &image, RUNTIME, &format!("cached-{i}")))?;
    let runwasi_ms = if runwasi.exists() {
        time_one(&containerd, &image, RUNWASI_RUNTIME, "runwasi-warmup")?;
        Some(median_ms(runs, |i| time_one(&containerd, &image, RUNWASI_RUNTIME, &format!("runwasi-{i}")))?)
    } else {
        None
    };
    Ok(StartTimes { runs, cwasi_compiling_ms, cwasi_cached_ms, runwasi_ms })
}

/// `ctr run --rm` of hello, from the command to the guest's exit.
fn time_one(containerd: &Containerd, image: &TestImage, runtime: &str, id: &str) -> anyhow::Result<Duration> {
    let args = Containerd::run_args_with(runtime, id, image, &["--rm"], &[]);
    let started = Instant::now();
    let out = containerd.ctr(&args)?.ok().with_context(|| format!("{runtime} run {id}"))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(out.stdout.contains("Hello from a WebAssembly function"), "{runtime} did not run hello: {out:?}");
    Ok(elapsed)
}

fn median_ms(runs: usize, mut one: impl FnMut(usize) -> anyhow::Result<Duration>) -> anyhow::Result<f64> {
    eprintln!("start time: {runs} runs");
    let mut times = (0..runs.max(1)).map(&mut one).collect::<anyhow::Result<Vec<_>>>()?;
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}
