//! Serves calls: replies with the SHA-256 digest (32 bytes) of each request.
use sha2::{Digest, Sha256};

fn main() {
    let error = cwasi_guest::serve(|request| Sha256::digest(request).to_vec());
    eprintln!("sha256-server: cannot serve: {error}");
    std::process::exit(1);
}
