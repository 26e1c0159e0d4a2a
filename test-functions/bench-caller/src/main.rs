//! `bench-caller PEER SIZE ITERATIONS`: calls PEER ITERATIONS times with a
//! SIZE-byte payload (after a few unmeasured warm-up calls) and prints one
//! line of timings, in nanoseconds, for the bench harness to parse.
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(size), Some(iterations)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: bench-caller PEER SIZE ITERATIONS");
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("size");
    let iterations: usize = iterations.parse().expect("iterations");
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let warmup = (iterations / 10).clamp(1, 100);
    let mut times = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let started = Instant::now();
        let reply = cwasi_guest::call(peer, &payload);
        let elapsed = started.elapsed().as_nanos() as u64;
        if let Err(e) = reply {
            println!("error: {e}");
            std::process::exit(1);
        }
        if i >= warmup {
            times.push(elapsed);
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "bench peer={peer} size={size} n={} min_ns={} median_ns={} p99_ns={} max_ns={}",
        times.len(),
        times[0],
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}
