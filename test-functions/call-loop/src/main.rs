//! `call-loop PEER SIZE CALLS ROUNDS`: ROUNDS rounds of CALLS calls to PEER
//! with a SIZE-byte payload; after each round it prints `round N done` and
//! pauses 300 ms, so that a test can look at the process in between.
use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [peer, size, calls, rounds] = args.as_slice() else {
        eprintln!("usage: call-loop PEER SIZE CALLS ROUNDS");
        std::process::exit(2);
    };
    let payload = vec![7u8; size.parse().expect("size")];
    let (calls, rounds): (usize, usize) = (calls.parse().expect("calls"), rounds.parse().expect("rounds"));
    for round in 1..=rounds {
        for _ in 0..calls {
            if let Err(e) = cwasi_guest::call(peer, &payload) {
                println!("error: {e}");
                std::process::exit(1);
            }
        }
        println!("round {round} done");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(300));
    }
}
