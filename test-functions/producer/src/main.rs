//! `producer PEER SIZE...`: for each size, sends a generated payload of that
//! many bytes to PEER (a SHA-256 server) and checks the digest it returns.
//! Exit status: 0 all digests match, 1 a mismatch, otherwise the call error
//! (3 forbidden, 4 peer gone, 5 unknown peer, 2 anything else).
use cwasi_guest::Status;
use sha2::{Digest, Sha256};

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((peer, sizes)) = args.split_first() else {
        eprintln!("usage: producer PEER SIZE...");
        std::process::exit(2);
    };
    for size in sizes {
        let len: usize = size.parse().expect("sizes are byte counts");
        let data = payload(len, len as u64);
        let expected = Sha256::digest(&data);
        match cwasi_guest::call(peer, &data) {
            Ok(reply) if reply == expected.as_slice() => println!("ok size={len} sha256={}", hex(&reply)),
            Ok(reply) => {
                println!("MISMATCH size={len} expected={} got={}", hex(&expected), hex(&reply));
                std::process::exit(1);
            }
            Err(e) => {
                println!("error size={len}: {e}");
                std::process::exit(match e.status() {
                    Status::Forbidden => 3,
                    Status::PeerGone => 4,
                    Status::UnknownPeer => 5,
                    _ => 2,
                });
            }
        }
    }
}
