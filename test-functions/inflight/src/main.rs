//! `inflight PEER N PAYLOAD`: starts N calls to PEER (an echo server) before
//! finishing any, then finishes them all and checks that each reply is its
//! own request. PAYLOAD is a size in bytes (each call gets different bytes)
//! or a text sent as is. Prints `inflight ok n=N ms=T` and exits 0, or says
//! which call failed and exits 1.
use std::time::Instant;

use cwasi_guest::Call;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(n), Some(payload)) =
        (args.first(), args.get(1).and_then(|n| n.parse::<usize>().ok()), args.get(2))
    else {
        eprintln!("usage: inflight PEER N PAYLOAD");
        std::process::exit(2);
    };
    let requests: Vec<Vec<u8>> = (0..n)
        .map(|i| match payload.parse::<usize>() {
            Ok(size) => (0..size).map(|j| (j.wrapping_mul(31).wrapping_add(i * 7 + 1) % 251) as u8).collect(),
            Err(_) => payload.as_bytes().to_vec(),
        })
        .collect();
    let started = Instant::now();
    let calls: Vec<_> = requests.iter().map(|request| Call::start(peer, request)).collect();
    let mut failed = false;
    for (i, (call, request)) in calls.into_iter().zip(&requests).enumerate() {
        match call.and_then(Call::finish) {
            Ok(reply) if reply == *request => {}
            Ok(reply) => {
                println!("call {i}: wrong reply ({} bytes, expected {})", reply.len(), request.len());
                failed = true;
            }
            Err(e) => {
                println!("call {i}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    println!("inflight ok n={n} ms={}", started.elapsed().as_millis());
}
