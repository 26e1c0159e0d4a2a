//! `hold PEER SIZE SECONDS`: starts a call with SIZE bytes to PEER (an echo
//! server, so the reply is as large), prints `holding`, and does not read
//! the reply for SECONDS; then reads it and prints `held ok`.
use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(size), Some(seconds)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: hold PEER SIZE SECONDS");
        std::process::exit(2);
    };
    let request = vec![7u8; size];
    let call = cwasi_guest::Call::start(peer, &request).unwrap_or_else(|e| {
        println!("error: {e}");
        std::process::exit(1)
    });
    println!("holding");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(seconds));
    match call.finish() {
        Ok(reply) if reply == request => println!("held ok"),
        Ok(_) => println!("held: wrong reply"),
        Err(e) => println!("held: {e}"),
    }
}
