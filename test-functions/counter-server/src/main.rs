//! Serves calls: replies `<n>:<request>`, where n counts the requests this
//! instance handled (1, 2, 3, …) — a request handled twice shows as a gap.
fn main() {
    let mut handled = 0u64;
    let error = cwasi_guest::serve(|request| {
        handled += 1;
        let mut reply = format!("{handled}:").into_bytes();
        reply.extend_from_slice(request);
        reply
    });
    eprintln!("counter-server: cannot serve: {error}");
    std::process::exit(1);
}
