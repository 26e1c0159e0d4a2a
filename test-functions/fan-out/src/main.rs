//! `fan-out SIZE PEER...`: calls every PEER (SHA-256 servers) at once, each
//! with its own generated payload, checks every digest and prints one digest
//! over all replies (fan-in). A peer may be named several times.
use sha2::{Digest, Sha256};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((size, peers)) = args.split_first() else {
        eprintln!("usage: fan-out SIZE PEER...");
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("size is a byte count");
    let payloads: Vec<Vec<u8>> =
        (0..peers.len()).map(|i| (0..size).map(|j| (j as u64 * 7 + i as u64 * 131) as u8).collect()).collect();
    let calls: Vec<(&str, &[u8])> = peers.iter().map(String::as_str).zip(payloads.iter().map(Vec::as_slice)).collect();
    let mut combined = Sha256::new();
    for (i, result) in cwasi_guest::call_all(&calls).into_iter().enumerate() {
        match result {
            Ok(reply) if reply == Sha256::digest(&payloads[i]).as_slice() => combined.update(&reply),
            Ok(_) => {
                println!("MISMATCH from call {i} to {}", peers[i]);
                std::process::exit(1);
            }
            Err(e) => {
                println!("error from call {i} to {}: {e}", peers[i]);
                std::process::exit(2);
            }
        }
    }
    let digest: String = combined.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("fan-in of {} replies ok: {digest}", peers.len());
}
