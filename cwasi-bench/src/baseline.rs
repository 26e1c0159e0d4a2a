//! References measured in the same run: memcpy, a raw Redis SET+GET and
//! the broker floor (a push-and-pop round trip through a second client).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// A connection to the bench's Redis, or to a Redis Cluster when the URL
/// is a `redis+cluster://` one, with the connection settings of cwasi's
/// remote mode (TCP_NODELAY).
type Link = Box<dyn redis::ConnectionLike + Send>;

fn connect(url: &str) -> anyhow::Result<Link> {
    use cwasi_comm::remote::{cluster_seeds, connection_info};
    let Some(seeds) = cluster_seeds(url) else {
        let connection =
            redis::Client::open(connection_info(url)?)?.get_connection().context("connecting to the bench Redis")?;
        return Ok(Box::new(connection));
    };
    let infos = seeds?.iter().map(|seed| connection_info(seed)).collect::<redis::RedisResult<Vec<_>>>()?;
    let connection = redis::cluster::ClusterClientBuilder::new(infos)
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
        // Longer than any blocking pop of the broker floor.
        .response_timeout(Duration::from_secs(3 * ECHO_WAIT_SECS))
        .build()?
        .get_connection()
        .context("connecting to the bench Redis Cluster")?;
    Ok(Box::new(connection))
}

/// Median and p99 time of `SET key <len bytes>` then `GET key` with the
/// `redis` crate, through a cluster client for a `redis+cluster://` URL.
pub fn redis_set_get_ns(url: &str, len: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    let mut connection = connect(url)?;
    let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs.max(1) + 1 {
        let started = Instant::now();
        redis::cmd("SET").arg("cwasi-bench:raw").arg(&value).query::<()>(&mut *connection)?;
        let back: Vec<u8> = redis::cmd("GET").arg("cwasi-bench:raw").query(&mut *connection)?;
        let elapsed = started.elapsed().as_nanos() as u64;
        anyhow::ensure!(back.len() == len, "GET returned {} bytes", back.len());
        // The first round warms the connection and Redis' allocator.
        if i > 0 {
            times.push(elapsed);
        }
    }
    redis::cmd("DEL").arg("cwasi-bench:raw").query::<()>(&mut *connection)?;
    Ok(median_p99(times))
}

/// How long the echo client blocks before it looks whether the
/// measurement ended without telling it (the caller's side failed).
const ECHO_POLL_SECS: u64 = 1;
/// How long the caller waits for its echo before it gives up.
const ECHO_WAIT_SECS: u64 = 5;

/// Makes each run's list keys unique within the process (the pid, across).
static FLOOR_RUNS: AtomicU64 = AtomicU64::new(0);

/// The broker floor, median and p99: the least a round trip through a
/// serving party on Redis costs. The caller `RPUSH`es the payload to a list
/// that an echo client (its own thread and connection) is blocked on with
/// `BLPOP`; the echo `RPUSH`es it onto a second list that the caller
/// `BLPOP`s. The same four wake-ups as a cwasi remote call (caller, Redis,
/// server, Redis, caller) with the least Redis work. On a cluster both
/// lists share one hash tag, so one node serves the whole round trip.
pub fn broker_floor_ns(url: &str, len: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    let tag = format!("{{cwasi-bench-floor:{}:{}}}", std::process::id(), FLOOR_RUNS.fetch_add(1, Ordering::Relaxed));
    let keys = FloorKeys { ping: format!("{tag}:ping"), pong: format!("{tag}:pong"), stop: format!("{tag}:stop") };
    let mut caller = connect(url)?;
    let echo = Echo::start(connect(url)?, keys.clone())?;
    let measured = ping_pong(&mut *caller, &keys, len, runs);
    let echoed = echo.stop(&mut *caller);
    let deleted =
        redis::cmd("DEL").arg(&keys.ping).arg(&keys.pong).arg(&keys.stop).query::<()>(&mut *caller).map_err(Into::into);
    let times = measured?;
    echoed.and(deleted)?;
    Ok(median_p99(times))
}

#[derive(Debug, Clone)]
struct FloorKeys {
    /// Caller to echo.
    ping: String,
    /// Echo to caller.
    pong: String,
    /// Anything pushed here ends the echo thread.
    stop: String,
}

fn ping_pong(
    caller: &mut dyn redis::ConnectionLike,
    keys: &FloorKeys,
    len: usize,
    runs: usize,
) -> anyhow::Result<Vec<u64>> {
    let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs.max(1) + 1 {
        let started = Instant::now();
        redis::cmd("RPUSH").arg(&keys.ping).arg(&value).query::<()>(caller)?;
        let back: Option<(String, Vec<u8>)> = redis::cmd("BLPOP").arg(&keys.pong).arg(ECHO_WAIT_SECS).query(caller)?;
        let elapsed = started.elapsed().as_nanos() as u64;
        let (_, back) = back.with_context(|| format!("no echo within {ECHO_WAIT_SECS} s"))?;
        anyhow::ensure!(back.len() == len, "the echo returned {} bytes", back.len());
        // The first round warms the connections and Redis' allocator.
        if i > 0 {
            times.push(elapsed);
        }
    }
    Ok(times)
}

/// The echo client's thread.
struct Echo {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    done: Arc<AtomicBool>,
    stop_key: String,
}

impl Echo {
    fn start(mut connection: Link, keys: FloorKeys) -> anyhow::Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let stop_key = keys.stop.clone();
        let thread = std::thread::Builder::new().name("bench-floor-echo".into()).spawn(move || {
            loop {
                let popped: Option<(String, Vec<u8>)> =
                    redis::cmd("BLPOP").arg(&keys.ping).arg(&keys.stop).arg(ECHO_POLL_SECS).query(&mut *connection)?;
                match popped {
                    Some((key, body)) if key == keys.ping => {
                        redis::cmd("RPUSH").arg(&keys.pong).arg(body).query::<()>(&mut *connection)?
                    }
                    // The stop key.
                    Some(_) => return Ok(()),
                    None if finished.load(Ordering::Acquire) => return Ok(()),
                    None => {}
                }
            }
        })?;
        Ok(Self { thread, done, stop_key })
    }

    /// Ends the thread: at once through the stop key, or within
    /// [`ECHO_POLL_SECS`] if Redis cannot be told.
    fn stop(self, caller: &mut dyn redis::ConnectionLike) -> anyhow::Result<()> {
        self.done.store(true, Ordering::Release);
        let _ = redis::cmd("RPUSH").arg(&self.stop_key).arg("stop").query::<()>(caller);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the broker floor's echo thread panicked"))?
            .context("the broker floor's echo client")
    }
}

/// What a guest host's bookkeeping of one call costs the caller: reading the
/// clock twice, the relaxed atomic adds of the stats file
/// (`cwasi_comm::stats`, found through the guest's memo of its last peer)
/// and the call's trace context (a new span id); the median over rounds of
/// many calls, in nanoseconds.
pub fn stats_cost_ns() -> anyhow::Result<u64> {
    use std::collections::HashMap;

    use cwasi_comm::stats::{FunctionStats, Identity, stats_dir};
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

/// Median and p99 of `times`, which holds at least one.
fn median_p99(mut times: Vec<u64>) -> (u64, u64) {
    times.sort_unstable();
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (times[times.len() / 2], p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor's lists: every key of this process's runs.
    fn floor_keys(connection: &mut dyn redis::ConnectionLike) -> Vec<String> {
        let pattern = format!("{{cwasi-bench-floor:{}:*", std::process::id());
        redis::cmd("KEYS").arg(pattern).query(connection).unwrap()
    }

    /// The echo answers every round with the caller's bytes, its thread
    /// ends (the join in `broker_floor_ns` returns) and no list is left.
    fn floor_round_trips(url: &str) {
        for len in [1, 1024, 1 << 20] {
            let (median, p99) = broker_floor_ns(url, len, 20).unwrap();
            assert!(0 < median && median <= p99, "{len} B: median {median} ns, p99 {p99} ns");
        }
        assert_eq!(floor_keys(&mut *connect(url).unwrap()), Vec::<String>::new());
    }

    #[test]
    fn broker_floor_on_one_redis() {
        let redis = cwasi_testkit::RedisServer::start().unwrap();
        floor_round_trips(&redis.url());
    }

    #[test]
    fn broker_floor_on_a_cluster_keeps_both_lists_on_one_slot() {
        let cluster = cwasi_testkit::RedisCluster::start().unwrap();
        floor_round_trips(&cluster.url());
    }

    #[test]
    fn runs_do_not_share_lists() {
        let redis = cwasi_testkit::RedisServer::start().unwrap();
        let url = redis.url();
        let parallel: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || broker_floor_ns(&url, 1024, 200))
            })
            .collect();
        for run in parallel {
            // A crossed list hands one run another's echo (or none): a
            // missing echo times out, a stray one leaves a list behind.
            run.join().unwrap().unwrap();
        }
        assert_eq!(floor_keys(&mut *connect(&url).unwrap()), Vec::<String>::new());
    }
}
