//! Prints the file named by its first argument, or fails with exit status 1.
//! `read-file PATH append TEXT` first appends TEXT to PATH (creating it), or
//! fails with exit status 2: what a guest may write where.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).cloned().unwrap_or_else(|| "/data/greeting.txt".into());
    if let (Some("append"), Some(text)) = (args.get(2).map(String::as_str), args.get(3)) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    }
}
