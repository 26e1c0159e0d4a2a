//! Serves calls by passing them on: a request `p1,p2,...:PAYLOAD` is sent to
//! p1 as `p2,...:PAYLOAD`; an empty list answers PAYLOAD. The reply is the
//! peer's reply, or `error <Status>` when the call failed, so a chain of
//! relays shows where it broke (`relay-a,relay-a:x` makes relay-a call itself).
fn main() {
    let error = cwasi_guest::serve(|request| {
        let text = String::from_utf8_lossy(request);
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
