//! Serves calls: echoes each request. A request `sleep:<ms>` first sleeps
//! that long; `fail:<message>` fails with that message; `panic:<message>`
//! panics (a trap); `whoami` answers the `REPLICA` environment variable.
use std::time::Duration;

fn main() {
    let error = cwasi_guest::serve_fallible(|request| {
        if let Some(ms) = request.strip_prefix(b"sleep:") {
            let ms = std::str::from_utf8(ms).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        if request == b"whoami" {
            return Ok(std::env::var("REPLICA").unwrap_or_else(|_| "unknown".into()).into_bytes());
        }
        if let Some(message) = request.strip_prefix(b"panic:") {
            panic!("{}", String::from_utf8_lossy(message));
        }
        if let Some(message) = request.strip_prefix(b"fail:") {
            return Err(String::from_utf8_lossy(message).into_owned());
        }
        Ok(request.to_vec())
    });
    eprintln!("echo-server: cannot serve: {error}");
    std::process::exit(1);
}
