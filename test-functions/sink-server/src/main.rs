//! Serves calls: takes each request whole and replies with nothing (one-way transfers).
fn main() {
    let error = cwasi_guest::serve(|_request| Vec::new());
    eprintln!("sink-server: cannot serve: {error}");
    std::process::exit(1);
}
