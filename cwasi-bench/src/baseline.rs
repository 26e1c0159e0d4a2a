//! References measured in the same run: memcpy and a raw Redis SET+GET.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Context;

/// Median time of a single-threaded copy of `len` bytes between resident buffers.
pub fn memcpy_median_ns(len: usize, runs: usize) -> u64 {
    let source: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut target = vec![1u8; len];
    median((0..runs.max(1)).map(|_| {
        let started = Instant::now();
        target.copy_from_slice(black_box(&source));
        black_box(&mut target);
        started.elapsed().as_nanos() as u64
    }))
}

/// Median and p99 time of `SET key <len bytes>` then `GET key` with the `redis` crate.
pub fn redis_set_get_ns(url: &str, len: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    // The same connection settings as cwasi's remote mode (TCP_NODELAY).
    let info = cwasi_comm::remote::connection_info(url)?;
    let mut connection = redis::Client::open(info)?.get_connection().context("connecting to the bench Redis")?;
    let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs.max(1) + 1 {
        let started = Instant::now();
        redis::cmd("SET").arg("cwasi-bench:raw").arg(&value).query::<()>(&mut connection)?;
        let back: Vec<u8> = redis::cmd("GET").arg("cwasi-bench:raw").query(&mut connection)?;
        let elapsed = started.elapsed().as_nanos() as u64;
        anyhow::ensure!(back.len() == len, "GET returned {} bytes", back.len());
        // The first round warms the connection and Redis' allocator.
        if i > 0 {
            times.push(elapsed);
        }
    }
    redis::cmd("DEL").arg("cwasi-bench:raw").query::<()>(&mut connection)?;
    times.sort_unstable();
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok((median(times.into_iter()), p99))
}

fn median(times: impl Iterator<Item = u64>) -> u64 {
    let mut times: Vec<u64> = times.collect();
    times.sort_unstable();
    times[times.len() / 2]
}
