//! `call-sequence PEER N [echo]`: calls PEER N times in a row with "0", "1", …
//! and checks every reply. Against a counter-server (the default) the reply
//! must be `<n>:<i>` with n growing by exactly one per call (nothing lost,
//! nothing handled twice); against an echo server (`echo`) it must be `<i>`.
//! Prints `progress <i>` every 100 calls. Exit 0 when all N replies check.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(count)) = (args.first(), args.get(1).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: call-sequence PEER N [echo]");
        std::process::exit(2);
    };
    let echo = args.get(2).is_some_and(|m| m == "echo");
    let mut last_handled: Option<u64> = None;
    for i in 0..count {
        let reply = match cwasi_guest::call(peer, i.to_string().as_bytes()) {
            Ok(reply) => String::from_utf8_lossy(&reply).into_owned(),
            Err(e) => {
                println!("error at call {i}: {e}");
                std::process::exit(2);
            }
        };
        let body = if echo {
            reply.as_str()
        } else {
            let Some((handled, body)) = reply.split_once(':') else {
                println!("bad reply at call {i}: {reply:?}");
                std::process::exit(1);
            };
            let handled: u64 = handled.parse().unwrap_or(0);
            if let Some(last) = last_handled
                && handled != last + 1
            {
                println!("handled count jumped from {last} to {handled} at call {i}");
                std::process::exit(1);
            }
            last_handled = Some(handled);
            body
        };
        if body != i.to_string() {
            println!("wrong reply at call {i}: {reply:?}");
            std::process::exit(1);
        }
        if (i + 1) % 100 == 0 {
            println!("progress {}", i + 1);
            let _ = std::io::stdout().flush();
        }
    }
    println!("sequence ok: {count} calls");
}
