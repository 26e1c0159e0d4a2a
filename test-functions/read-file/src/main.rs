//! Prints the file named by its first argument, or fails with exit status 1.
fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/data/greeting.txt".into());
    match std::fs::read_to_string(&path) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    }
}
