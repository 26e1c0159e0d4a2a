//! Serves calls by passing them on: a request `p1,p2,...:PAYLOAD` is sent to
//! p1 as `p2,...:PAYLOAD`; an empty list answers PAYLOAD. The reply is the
//! peer's reply, or `error <Status>` when the call failed, so a chain of
//! relays shows where it broke (`relay-a,relay-a:x` makes relay-a call itself).
//! A request `+p1,p2,...:PAYLOAD` sends PAYLOAD as it is to each peer and
//! answers their replies joined by `|`.
fn main() {
    let error = cwasi_guest::serve(|request| {
        let text = String::from_utf8_lossy(request);
        if let Some((peers, payload)) = text.strip_prefix('+').and_then(|t| t.split_once(':')) {
            let replies: Vec<String> = peers
                .split(',')
                .map(|peer| match cwasi_guest::call(peer, payload.as_bytes()) {
                    Ok(reply) => String::from_utf8_lossy(&reply).into_owned(),
                    Err(e) => format!("error {:?}", e.status()),
                })
                .collect();
            return replies.join("|").into_bytes();
        }
        let Some((route, payload)) = text.split_once(':') else {
            return b"error: expected PEERS:PAYLOAD".to_vec();
        };
        let mut hops = route.split(',').filter(|p| !p.is_empty());
        let Some(next) = hops.next() else {
            return payload.as_bytes().to_vec();
        };
        let rest: Vec<&str> = hops.collect();
        let onward = format!("{}:{payload}", rest.join(","));
        match cwasi_guest::call(next, onward.as_bytes()) {
            Ok(reply) => reply,
            Err(e) => format!("error {:?}", e.status()).into_bytes(),
        }
    });
    eprintln!("relay: cannot serve: {error}");
    std::process::exit(1);
}
