//! `call-paced PEER COUNT INTERVAL_MS`: calls PEER COUNT times with "0",
//! "1", …, one call every INTERVAL_MS, and prints one line per call —
//! `call <i> ok after <us> us` or `call <i> error <Status> after <us> us` —
//! going on after errors, so that a test can cut the network mid-series and
//! see each call end, and the calls after the link returns succeed. Exit 0
//! when it got through the series (the lines tell what happened).
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [peer, count, interval] = args.as_slice() else {
        eprintln!("usage: call-paced PEER COUNT INTERVAL_MS");
        std::process::exit(2);
    };
    let (Ok(count), Ok(interval)) = (count.parse::<u64>(), interval.parse::<u64>()) else {
        eprintln!("usage: call-paced PEER COUNT INTERVAL_MS");
        std::process::exit(2);
    };
    for i in 0..count {
        let started = Instant::now();
        let result = cwasi_guest::call(peer, i.to_string().as_bytes());
        let us = started.elapsed().as_micros();
        match result {
            Ok(reply) if reply == i.to_string().as_bytes() => println!("call {i} ok after {us} us"),
            Ok(reply) => println!("call {i} wrong-reply {:?} after {us} us", String::from_utf8_lossy(&reply)),
            Err(e) => println!("call {i} error {:?} after {us} us", e.status()),
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(interval));
    }
}
