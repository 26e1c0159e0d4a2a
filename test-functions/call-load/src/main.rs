//! `call-load [--count N] [--pause-ms P] [--timeout-ms T] PEER=TEXT...`:
//! N rounds (default 1); each round calls every PEER with its TEXT in turn,
//! then pauses P ms. Prints one line per call, `ok PEER MS REPLY` or
//! `err PEER MS STATUS`, and `summary ok=X err=Y` at the end. With T, every
//! call has that deadline. It never stops on an error.
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let (mut count, mut pause, mut timeout) = (1u64, 0u64, None);
    let mut targets = Vec::new();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--count" => count = number("--count"),
            "--pause-ms" => pause = number("--pause-ms"),
            "--timeout-ms" => timeout = Some(Duration::from_millis(number("--timeout-ms"))),
            target => match target.split_once('=') {
                Some((peer, text)) => targets.push((peer.to_owned(), text.to_owned())),
                None => usage(&format!("not PEER=TEXT: {target}")),
            },
        }
    }
    if targets.is_empty() {
        usage("no PEER=TEXT");
    }
    let (mut ok, mut err) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        for (peer, text) in &targets {
            let started = Instant::now();
            let result = match timeout {
                Some(t) => cwasi_guest::call_with_timeout(peer, text.as_bytes(), t),
                None => cwasi_guest::call(peer, text.as_bytes()),
            };
            let ms = started.elapsed().as_millis();
            let _ = match result {
                Ok(reply) => {
                    ok += 1;
                    writeln!(out, "ok {peer} {ms} {}", String::from_utf8_lossy(&reply))
                }
                Err(e) => {
                    err += 1;
                    writeln!(out, "err {peer} {ms} {:?}", e.status())
                }
            };
        }
        let _ = out.flush();
        if pause > 0 {
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
    let _ = writeln!(out, "summary ok={ok} err={err}");
}

fn usage(problem: &str) -> ! {
    eprintln!("call-load: {problem}\nusage: call-load [--count N] [--pause-ms P] [--timeout-ms T] PEER=TEXT...");
    std::process::exit(2);
}
