use std::time::{Duration, Instant};

use anyhow::Context;
use cwasi_testkit::{Containerd, test_image, workspace_root};

/// Times `ctr run --rm` of hello, from the command to the guest's exit.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
    let image = test_image("hello")?;
    let containerd = Containerd::start(&shim, &[])?;
    containerd.import(&image)?;
    let cache = containerd.dir().join("cache");

    let time_runs = |label: &str, clear_cache: bool| -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(runs);
        for i in 0..runs {
            if clear_cache {
                let _ = std::fs::remove_dir_all(&cache);
            }
            let id = format!("start-{label}-{i}");
            let started = Instant::now();
            containerd.run(&id, &image, &["--rm"], &[])?.ok().with_context(|| format!("run {id}"))?;
            times.push(started.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    };
    // One unmeasured run warms the image snapshot and the page cache.
    containerd.run("start-warmup", &image, &["--rm"], &[])?.ok()?;
    let cold = time_runs("compile", true)?;
    let warm = time_runs("cached", false)?;
    println!("start-to-exit of hello through containerd-shim-cwasi-v1, median of {runs} runs:");
    println!("  compiling the module every start : {:>8.1} ms", ms(cold));
    println!("  module loaded from the cache     : {:>8.1} ms", ms(warm));
    println!("  cached / compiling               : {:>8.2}", ms(warm) / ms(cold));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
