//! Serves calls: echoes each request. A request `sleep:<ms>` first sleeps
//! that long; `fail:<message>` fails with that message; `panic:<message>`
//! panics (a trap); `spin:<ms>` computes (no host call to wait in) that long;
//! `whoami` answers the `REPLICA` environment variable; `hold:<MiB>` grows
//! its linear memory by that much (untouched) and keeps it; `env:<NAME>`
//! answers that variable (`unset` without it); `read:<path>` answers the
//! file; `write:<path>` appends a line to it (created) and answers `wrote`.
use std::time::Duration;

fn main() {
    let error = cwasi_guest::serve_fallible(|request| {
        if let Some(ms) = request.strip_prefix(b"sleep:") {
            let ms = std::str::from_utf8(ms).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(ms) = request.strip_prefix(b"spin:") {
            let ms = std::str::from_utf8(ms).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut spins = 0u64;
            while std::time::Instant::now() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if let Some(mib) = request.strip_prefix(b"hold:") {
            let mib: usize = std::str::from_utf8(mib).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            // Kept for the instance's life: what it holds counts against its container.
            std::mem::forget(Vec::<u8>::with_capacity(mib << 20));
            return Ok(format!("holding {mib} MiB").into_bytes());
        }
        if let Some(name) = text_after(request, b"env:") {
            return Ok(std::env::var(name).unwrap_or_else(|_| "unset".into()).into_bytes());
        }
        if let Some(path) = text_after(request, b"read:") {
            return std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"));
        }
        if let Some(path) = text_after(request, b"write:") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot write {path}: {e}"))?;
            file.write_all(b"planted\n").map_err(|e| format!("cannot write {path}: {e}"))?;
            return Ok(b"wrote".to_vec());
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

/// The text after `prefix`, if the request starts with it (an echoed
/// payload is not decoded: benchmarks measure the transport, not UTF-8).
fn text_after<'a>(request: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    request.strip_prefix(prefix).and_then(|rest| std::str::from_utf8(rest).ok())
}
