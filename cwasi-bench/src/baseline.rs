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
    set_get_ns(&mut connection, len, runs)
}

/// The same through a Redis Cluster client (the cluster's
/// `redis+cluster://` URL as cwasi takes it).
pub fn cluster_set_get_ns(url: &str, len: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    let seeds = cwasi_comm::remote::cluster_seeds(url).context("not a cluster URL")??;
    let mut connection = redis::cluster::ClusterClient::new(seeds)?.get_connection()?;
    set_get_ns(&mut connection, len, runs)
}

fn set_get_ns(connection: &mut dyn redis::ConnectionLike, len: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs.max(1) + 1 {
        let started = Instant::now();
        redis::cmd("SET").arg("cwasi-bench:raw").arg(&value).query::<()>(connection)?;
        let back: Vec<u8> = redis::cmd("GET").arg("cwasi-bench:raw").query(connection)?;
        let elapsed = started.elapsed().as_nanos() as u64;
        anyhow::ensure!(back.len() == len, "GET returned {} bytes", back.len());
        // The first round warms the connection and Redis' allocator.
        if i > 0 {
            times.push(elapsed);
        }
    }
    redis::cmd("DEL").arg("cwasi-bench:raw").query::<()>(connection)?;
    times.sort_unstable();
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok((median(times.into_iter()), p99))
}

/// What a guest host's bookkeeping of one call costs the caller: reading the
/// clock twice, the relaxed atomic adds of the stats file
/// (`cwasi_comm::stats`, found through the guest's memo of its last peer)
/// and the call's trace context (a new span id); the median over rounds of
/// many calls, in nanoseconds.
pub fn stats_cost_ns() -> anyhow::Result<u64> {
    use cwasi_comm::stats::{FunctionStats, Identity, stats_dir};
    use std::collections::HashMap;
    let run = tempfile::tempdir()?;
    let annotations: HashMap<String, String> = [("cwasi.io/peers".to_owned(), "*".to_owned())].into();
    let function = cwasi_comm::FunctionConfig::from_annotations(&annotations, "bench", "bench-node")?;
    let who = Identity { function: &function, container: "bench", concurrency: 1 };
    let stats = FunctionStats::create(&stats_dir(run.path(), "bench-node"), &who)?;
    const CALLS: u32 = 10_000;
    let mut last = cwasi_comm::stats::LastCounter::default();
    Ok(median((0..51).map(|_| {
        let round = Instant::now();
        for _ in 0..CALLS {
            let started = Instant::now();
            black_box(cwasi_comm::TraceContext::new_span(black_box(None)));
            let counter = last.get(&stats, black_box("peer"), Some(cwasi_comm::Mode::Local));
            stats.record_call(counter, cwasi_abi::Status::Ok, 1024, 1024, started.elapsed());
        }
        round.elapsed().as_nanos() as u64 / u64::from(CALLS)
    })))
}

fn median(times: impl Iterator<Item = u64>) -> u64 {
    let mut times: Vec<u64> = times.collect();
    times.sort_unstable();
    times[times.len() / 2]
}
