//! `page-giver PEER MIB [ROUNDS]`: gives PEER (a `page-keeper`) MIB MiB
//! through the move-semantics ABI and prints what each side saw, one
//! `key=value` each, then gives ROUNDS rounds of 50 more payloads (each a
//! new buffer, the reply given back) with `call_owned`, printing `round N`
//! and pausing 300 ms after each, for a test to look at the process:
//! - `given_zeroed`: the given buffer reads as zeros after the call (its
//!   pages moved; false when the mode copied);
//! - `reply_ok`: the reply is word for word what the keeper gave;
//! - `kept_match`: the keeper's digest of what it got is the one sent;
//! - `kept_intact`: the keeper's copy did not see this side's later writes;
//! - `reply_zeroed`: the keeper's given reply read as zeros afterwards.
use cwasi_guest::raw::{self, abi};
use cwasi_guest::{PageBuf, Status};
use word_digest::{digest, words, words_mut};

fn check(code: i32, what: &str) {
    if code != Status::Ok as i32 {
        println!("error: {what}: {:?}", Status::from_code(code));
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(peer), Some(mib)) = (args.first(), args.get(1).and_then(|m| m.parse::<usize>().ok())) else {
        eprintln!("usage: page-giver PEER MIB");
        std::process::exit(2);
    };
    let len = mib << 20;
    let mut given = PageBuf::zeroed(len);
    words_mut(&mut given).iter_mut().enumerate().for_each(|(i, w)| *w = (i as u64).wrapping_mul(31) + 1);
    let sent = digest(&given);

    // The raw ABI, so that the given buffer can be looked at afterwards.
    let (mut handle, mut reply_len) = (0u32, 0u32);
    // SAFETY: every pointer is valid for its length; `given` is not touched
    // until call_wait returned.
    check(
        unsafe {
            raw::call_start_owned(
                abi(peer.as_ptr()),
                abi(peer.len()),
                abi(given.as_mut_ptr()),
                abi(given.len()),
                abi(0u32),
                abi(&raw mut handle),
            )
        },
        "call_start_owned",
    );
    // SAFETY: a valid u32 for the host to write.
    check(unsafe { raw::call_wait(abi(handle), abi(&raw mut reply_len)) }, "call_wait");
    let mut reply = PageBuf::zeroed(reply_len as usize);
    // SAFETY: room for exactly `reply_len` bytes.
    check(unsafe { raw::call_read(abi(handle), abi(reply.as_mut_ptr()), abi(reply_len)) }, "call_read");

    let given_zeroed = words(&given).iter().all(|&w| w == 0);
    let reply_ok = reply.len() == len && words(&reply).iter().enumerate().all(|(i, &w)| w == (i as u64) * 7 + 2);
    // Writes on this side after the call: the keeper must not see them.
    given.fill(3);
    reply.fill(4);
    let kept = match cwasi_guest::call(peer, b"kept?") {
        Ok(kept) => String::from_utf8_lossy(&kept).into_owned(),
        Err(e) => {
            println!("error: kept?: {e}");
            std::process::exit(1);
        }
    };
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(0);
    println!(
        "given_zeroed={given_zeroed} reply_ok={reply_ok} kept_match={} kept_intact={} reply_zeroed={}",
        kept.contains(&format!("digest={sent:016x} ")),
        kept.contains("intact=true"),
        kept.contains("reply_zeroed=true"),
    );
    for round in 0..rounds {
        for _ in 0..50 {
            let request = PageBuf::zeroed(len);
            match cwasi_guest::call_owned(peer, request) {
                Ok(reply) if reply.len() == len => {}
                Ok(reply) => {
                    println!("error: a reply of {} bytes", reply.len());
                    std::process::exit(1);
                }
                Err(e) => {
                    println!("error: round {round}: {e}");
                    std::process::exit(1);
                }
            }
        }
        println!("round {round}");
        // Still, for a test to read this process now.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
