//! Round trip of a small remote call through Redis, beside a raw SET+GET,
//! without containers: what the remote protocol itself costs.
//! `cargo run --release -p cwasi-comm --example remote_latency -- redis://127.0.0.1:6379 [bytes] [calls] [listener]`
//! (`listener`: the listener thread reads for the handler, as when local callers are connected).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cwasi_comm::TraceContext;
use cwasi_comm::remote::{RemoteChannel, RemoteListener};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let size: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
    let calls: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    // `listener` as 4th argument: the listener thread reads, as with local callers.
    let listener_reads = args.get(4).is_some_and(|a| a == "listener");
    let function = format!("latency-{}", std::process::id());

    let bell = Arc::new((Mutex::new(0u64), Condvar::new()));
    let ring = bell.clone();
    let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        *ring.0.lock().unwrap() += 1;
        ring.1.notify_one();
    });
    let listener = Arc::new(RemoteListener::start(
        &url,
        "bench",
        &function,
        "consumer-1",
        notify,
        Arc::new(move || listener_reads),
    )?);
    let serving = listener.clone();
    let base = Instant::now();
    let marks = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let server_marks = marks.clone();
    std::thread::spawn(move || {
        loop {
            let request = loop {
                if let Some(r) = serving.take() {
                    break r;
                }
                if serving.handlers_read() {
                    if let Some(r) = serving.read() {
                        break r;
                    }
                    continue;
                }
                let guard = bell.0.lock().unwrap();
                let _ = bell.1.wait_timeout(guard, Duration::from_millis(100)).unwrap();
            };
            let took = base.elapsed().as_nanos() as u64;
            let mut body = vec![0; request.len() as usize];
            request.read_into(&mut body).unwrap();
            request.reply(&body).unwrap();
            server_marks.lock().unwrap().push((took, base.elapsed().as_nanos() as u64));
        }
    });
    let link = cwasi_comm::remote::LinkPool::new(&url)?;
    let channel = RemoteChannel::open(&function, "caller", "bench", link)?;
    // Wait for the server to register.
    std::thread::sleep(Duration::from_millis(500));
    let payload = vec![7u8; size];
    let mut times = Vec::new();
    let mut phases = Vec::new();
    for i in 0..calls + 20 {
        let started = Instant::now();
        let t0 = base.elapsed().as_nanos() as u64;
        let mut pending =
            channel.send(&payload, Instant::now() + Duration::from_secs(10), TraceContext::new_span(None))?;
        let t1 = base.elapsed().as_nanos() as u64;
        let len = pending.wait()?;
        let t2 = base.elapsed().as_nanos() as u64;
        phases.push((t0, t1, t2));
        let mut out = vec![0; len];
        pending.read_into(&mut out)?;
        if i >= 20 {
            times.push(started.elapsed().as_nanos() as u64);
        }
    }
    times.sort_unstable();
    let marks = marks.lock().unwrap().clone();
    let n = phases.len().min(marks.len());
    let mut to_take: Vec<u64> = (0..n).map(|i| marks[i].0.saturating_sub(phases[i].0)).collect();
    let mut handling: Vec<u64> = (0..n).map(|i| marks[i].1 - marks[i].0).collect();
    let mut back: Vec<u64> = (0..n).map(|i| phases[i].2.saturating_sub(marks[i].1)).collect();
    for v in [&mut to_take, &mut handling, &mut back] {
        v.sort_unstable();
    }
    println!(
        "median: send->taken {:.1} µs, taken->answered {:.1} µs, answered->caller has it {:.1} µs",
        to_take[n / 2] as f64 / 1e3,
        handling[n / 2] as f64 / 1e3,
        back[n / 2] as f64 / 1e3
    );
    let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)] as f64 / 1000.0;
    println!("remote round trip {size} B: median {:.1} µs p99 {:.1} µs", q(0.5), q(0.99));

    if url.contains("+cluster://") {
        std::process::exit(0);
    }
    let mut connection = redis::Client::open(cwasi_comm::remote::connection_info(&url)?)?.get_connection()?;
    let mut raw = Vec::new();
    for _ in 0..calls {
        let started = Instant::now();
        redis::cmd("SET").arg("latency:raw").arg(&payload).query::<()>(&mut connection)?;
        let _: Vec<u8> = redis::cmd("GET").arg("latency:raw").query(&mut connection)?;
        raw.push(started.elapsed().as_nanos() as u64);
    }
    raw.sort_unstable();
    let m = raw[raw.len() / 2] as f64 / 1000.0;
    println!("raw SET+GET {size} B: median {m:.1} µs; remote / raw = {:.2}", q(0.5) / m);
    let floor = ping_pong_ns(&url, &payload, calls)?;
    println!(
        "floor (RPUSH+BLPOP to an echo client and back) {size} B: median {:.1} µs; floor / raw = {:.2}",
        floor as f64 / 1e3,
        floor as f64 / 1e3 / m
    );
    std::process::exit(0);
}

/// The least any round trip through a Redis-brokered server can cost: a
/// client pushes to a list another client blocks on, which pushes back.
fn ping_pong_ns(url: &str, payload: &[u8], calls: usize) -> anyhow::Result<u64> {
    let client = redis::Client::open(cwasi_comm::remote::connection_info(url)?)?;
    let mut echo = client.get_connection()?;
    std::thread::spawn(move || {
        loop {
            let Ok((_, body)): redis::RedisResult<(String, Vec<u8>)> =
                redis::cmd("BLPOP").arg("latency:ping").arg(0).query(&mut echo)
            else {
                return;
            };
            let _: redis::RedisResult<()> = redis::cmd("RPUSH").arg("latency:pong").arg(body).query(&mut echo);
        }
    });
    let mut connection = client.get_connection()?;
    let mut times = Vec::new();
    for _ in 0..calls {
        let started = Instant::now();
        redis::cmd("RPUSH").arg("latency:ping").arg(payload).query::<()>(&mut connection)?;
        let _: (String, Vec<u8>) = redis::cmd("BLPOP").arg("latency:pong").arg(0).query(&mut connection)?;
        times.push(started.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}
