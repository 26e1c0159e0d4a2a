//! Serves calls: replies `<n>:<request>`, where n counts the requests this
//! instance handled (1, 2, 3, …) — a request handled twice shows as a gap.
//! A request `sleep:<ms>` first sleeps that long. With `COUNT_FILE` set, each
//! request is first appended to that file as `<REPLICA> <request>`: a count
//! that outlives the instance and spans instances.
use std::io::Write;
use std::time::Duration;

fn main() {
    let mut handled = 0u64;
    let count_file = std::env::var("COUNT_FILE").ok();
    let replica = std::env::var("REPLICA").unwrap_or_else(|_| "unknown".into());
    let error = cwasi_guest::serve(|request| {
        handled += 1;
        if let Some(path) = &count_file {
            let line = format!("{replica} {}\n", String::from_utf8_lossy(request));
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                eprintln!("counter-server: cannot append to {path}: {e}");
            }
        }
        if let Some(ms) = request.strip_prefix(b"sleep:") {
            let ms = std::str::from_utf8(ms).ok().and_then(|m| m.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut reply = format!("{handled}:").into_bytes();
        reply.extend_from_slice(request);
        reply
    });
    eprintln!("counter-server: cannot serve: {error}");
    std::process::exit(1);
}
