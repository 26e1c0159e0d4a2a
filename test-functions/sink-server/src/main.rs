//! Serves calls: takes each request whole and replies with nothing (one-way
//! transfers). It owns each request: one its caller gave up lands by pages.
use cwasi_guest::PageBuf;

fn main() {
    let error = cwasi_guest::serve_pages(|_request| Ok::<_, std::convert::Infallible>(PageBuf::zeroed(0)));
    eprintln!("sink-server: cannot serve: {error}");
    std::process::exit(1);
}
