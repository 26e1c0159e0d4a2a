//! Serves given payloads (the move-semantics ABI) and reports what it saw:
//! - a payload of 4 KiB or more (a whole number of u64 words): keeps it,
//!   notes its digest, overwrites it with 0xab, and gives back a reply as
//!   long whose word i is `i * 7 + 2`;
//! - `kept?`: `kept digest=HEX intact=BOOL reply_zeroed=BOOL`: the digest
//!   noted, whether the kept payload still reads 0xab (its caller's later
//!   writes are not seen here), and whether the reply given last reads as
//!   zeros now (its pages moved to the caller).
use cwasi_guest::{PageBuf, Request};
use word_digest::{digest, words, words_mut};

fn main() {
    let mut kept: Option<(PageBuf, u64)> = None;
    // The reply given last: the caller may take its pages until the next request.
    let mut given: Option<PageBuf> = None;
    loop {
        let request = match Request::next() {
            Ok(request) => request,
            Err(e) => {
                eprintln!("page-keeper: cannot serve: {e}");
                std::process::exit(1);
            }
        };
        let reply_zeroed = given.take().map(|reply| words(&reply).iter().all(|&w| w == 0));
        let Ok(mut body) = request.read_pages() else { continue };
        if body.len() >= 4096 {
            let noted = digest(&body);
            body.fill(0xab);
            let mut reply = PageBuf::zeroed(body.len());
            words_mut(&mut reply).iter_mut().enumerate().for_each(|(i, w)| *w = (i as u64) * 7 + 2);
            kept = Some((body, noted));
            let _ = request.reply_given(given.insert(reply));
        } else {
            let answer = match &kept {
                Some((body, noted)) => format!(
                    "kept digest={noted:016x} intact={} reply_zeroed={}",
                    words(body).iter().all(|&w| w == 0xabab_abab_abab_abab),
                    reply_zeroed.unwrap_or(false)
                ),
                None => "nothing kept".to_owned(),
            };
            let _ = request.reply(answer.as_bytes());
        }
    }
}
