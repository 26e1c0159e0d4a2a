//! `bench-caller PEERS SIZE ITERATIONS [MAX_SECONDS [given]]`: calls the
//! peers (comma-separated; several are called at once, fan-out + fan-in)
//! with a SIZE-byte payload each, ITERATIONS times after a few unmeasured
//! warm-up calls, stopping early after MAX_SECONDS (at least 3 measured
//! calls), and prints one line of timings in nanoseconds for the bench
//! harness. With `given`, one peer is called with the payload given up
//! (`cwasi_guest::Call::start_owned`), written afresh before each call,
//! outside the time measured.
use std::time::Instant;

use cwasi_guest::{Call, PageBuf};

fn fail(e: cwasi_guest::Error) -> ! {
    println!("error: {e}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peers), Some(size), Some(iterations)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: bench-caller PEERS SIZE ITERATIONS [MAX_SECONDS [given]]");
        std::process::exit(2);
    };
    let peers: Vec<&str> = peers.split(',').collect();
    let size: usize = size.parse().expect("size");
    let iterations: usize = iterations.parse().expect("iterations");
    if iterations == 0 {
        eprintln!("bench-caller: ITERATIONS must be at least 1");
        std::process::exit(2);
    }
    let max_seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(f64::INFINITY);
    let given = args.get(4).map(String::as_str) == Some("given");
    if given && peers.len() != 1 {
        eprintln!("bench-caller: given payloads go to one peer");
        std::process::exit(2);
    }
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let calls: Vec<(&str, &[u8])> = peers.iter().map(|p| (*p, payload.as_slice())).collect();
    let warmup = (iterations / 10).clamp(1, 100);
    let mut times = Vec::with_capacity(iterations);
    let started_all = Instant::now();
    for i in 0..warmup + iterations {
        let elapsed = if given {
            let request = PageBuf::from_slice(&payload);
            let started = Instant::now();
            Call::start_owned(peers[0], request).and_then(Call::finish).unwrap_or_else(|e| fail(e));
            started.elapsed().as_nanos() as u64
        } else {
            let started = Instant::now();
            for reply in cwasi_guest::call_all(&calls) {
                if let Err(e) = reply {
                    fail(e);
                }
            }
            started.elapsed().as_nanos() as u64
        };
        if i >= warmup {
            times.push(elapsed);
            if times.len() >= 3 && started_all.elapsed().as_secs_f64() > max_seconds {
                break;
            }
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "bench peers={} size={size} n={} min_ns={} median_ns={} p99_ns={} max_ns={}",
        peers.join(","),
        times.len(),
        times[0],
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}
