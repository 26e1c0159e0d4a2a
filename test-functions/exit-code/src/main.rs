//! Exits with the status given as its first argument (7 by default).
fn main() {
    let code = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    println!("exiting with {code}");
    std::process::exit(code);
}
