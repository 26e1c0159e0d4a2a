//! `caller PEER TEXT`: calls PEER with TEXT and prints the reply, or the error
//! (exit status 3 forbidden, 4 peer gone, 5 unknown peer, 6 peer failed, 2 other).
use cwasi_guest::Status;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(text)) = (args.first(), args.get(1)) else {
        eprintln!("usage: caller PEER TEXT");
        std::process::exit(2);
    };
    match cwasi_guest::call(peer, text.as_bytes()) {
        Ok(reply) => println!("reply: {}", String::from_utf8_lossy(&reply)),
        Err(e) => {
            println!("error: {e}");
            std::process::exit(match e.status() {
                Status::Forbidden => 3,
                Status::PeerGone => 4,
                Status::UnknownPeer => 5,
                Status::PeerFailed => 6,
                _ => 2,
            });
        }
    }
}
