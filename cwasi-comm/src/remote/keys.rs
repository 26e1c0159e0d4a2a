//! Redis key names. The namespace sits in a hash tag so that one
//! namespace's keys land on one Redis Cluster slot, and one ACL key pattern,
//! `~cwasi:{<namespace>}:*`, covers all of them.

use std::time::Duration;

pub(crate) const GROUP: &str = "servers";

pub(crate) fn request_stream(namespace: &str, function: &str) -> String {
    format!("cwasi:{{{namespace}}}:req:{function}")
}

/// Requests that were refused or delivered too often, with the reason.
pub(crate) fn dead_letters(namespace: &str, function: &str) -> String {
    format!("cwasi:{{{namespace}}}:dead:{function}")
}

/// Liveness of a function's servers: a sorted set of consumer names scored
/// with the Redis time (seconds) each last showed it was alive.
pub(crate) fn servers(namespace: &str, function: &str) -> String {
    format!("cwasi:{{{namespace}}}:servers:{function}")
}

pub(crate) fn reply_list(namespace: &str, request_id: &str) -> String {
    format!("cwasi:{{{namespace}}}:rep:{request_id}")
}

/// Where a large request body waits, beside its (small) stream entry.
pub(crate) fn request_body(namespace: &str, request_id: &str) -> String {
    format!("cwasi:{{{namespace}}}:body:{request_id}")
}

/// Bodies up to this size travel inside the stream entry; larger ones as a
/// plain string key, which Redis stores and serves as cheaply as a SET/GET
/// (measured: a 1–100 MiB field in a stream costs 1.4–1.9 × a SET+GET).
pub(crate) const INLINE_BODY_MAX: usize = 64 << 10;

pub(crate) fn done_marker(namespace: &str, function: &str, request_id: &str) -> String {
    format!("cwasi:{{{namespace}}}:done:{function}:{request_id}")
}

/// How long replies, large bodies and done markers are kept (seconds): the
/// longest call deadline (`cwasi.io/timeout` ≤ 60 m), so a request added
/// twice is still recognised as done while its caller may wait.
pub(crate) const KEEP_SECONDS: u64 = 3600;

/// A function's stream, liveness record and dead letters expire this long
/// after its last server stopped (seconds); each server refreshes them.
pub(crate) const FORGET_SECONDS: u64 = 86_400;

/// No server of a function seen for this long: callers get `UnknownPeer`
/// (at send, and while waiting for a reply), and a request still queued
/// is withdrawn. A server that restarts within it keeps its queue.
pub(crate) const SERVER_GONE: Duration = Duration::from_secs(30);

/// A request is handed to a handler at most this many times; at the next
/// delivery it goes to the dead-letter stream and its caller gets `PeerFailed`.
pub(crate) const MAX_DELIVERIES: u64 = 3;

/// At most this many requests wait in one function's stream; a call beyond
/// it fails at once instead of growing the queue.
pub(crate) const MAX_QUEUED: u64 = 100_000;

/// Dead-letter streams keep about this many entries.
pub(crate) const DEAD_LETTERS_KEPT: u64 = 10_000;

/// First byte of a reply list element.
pub(crate) const REPLY_OK: u8 = 0;
pub(crate) const REPLY_FAILED: u8 = 1;

/// Why an entry's keys are refused: a server only touches keys that the
/// entry's own id names in its own namespace, so a forged entry cannot make
/// it write or delete anyone else's key.
pub(crate) fn check_entry_keys(namespace: &str, id: &str, reply: &str, body_key: Option<&str>) -> Result<(), String> {
    if id.is_empty() || id.len() > 512 {
        return Err("a request id must have 1 to 512 bytes".into());
    }
    if reply != reply_list(namespace, id) {
        return Err(format!("reply key {reply:?} is not this request's reply list in namespace {namespace}"));
    }
    if let Some(body) = body_key
        && body != request_body(namespace, id)
    {
        return Err(format!("body key {body:?} is not this request's body in namespace {namespace}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_namespace_share_its_prefix_and_hash_tag() {
        let prefix = "cwasi:{team-a}:";
        for key in [
            request_stream("team-a", "f"),
            dead_letters("team-a", "f"),
            servers("team-a", "f"),
            reply_list("team-a", "r1"),
            request_body("team-a", "r1"),
            done_marker("team-a", "f", "r1"),
        ] {
            assert!(key.starts_with(prefix), "{key}");
        }
    }

    #[test]
    fn entry_keys_must_be_the_requests_own_in_its_namespace() {
        let reply = reply_list("a", "r1");
        let body = request_body("a", "r1");
        assert!(check_entry_keys("a", "r1", &reply, None).is_ok());
        assert!(check_entry_keys("a", "r1", &reply, Some(&body)).is_ok());
        // Another namespace's reply list, an arbitrary key, another request's list.
        assert!(check_entry_keys("a", "r1", &reply_list("b", "r1"), None).is_err());
        assert!(check_entry_keys("a", "r1", "victim", None).is_err());
        assert!(check_entry_keys("a", "r1", &reply_list("a", "r2"), None).is_err());
        // A body key outside the namespace, or someone else's body.
        assert!(check_entry_keys("a", "r1", &reply, Some(&request_body("b", "r1"))).is_err());
        assert!(check_entry_keys("a", "r1", &reply, Some("cwasi:{a}:req:f")).is_err());
        assert!(check_entry_keys("a", "", &reply_list("a", ""), None).is_err());
        // An id trying to leave the namespace still yields keys inside it.
        let sneaky = "x}:rep:{b";
        assert!(check_entry_keys("a", sneaky, &reply_list("a", sneaky), None).is_ok());
        assert!(reply_list("a", sneaky).starts_with("cwasi:{a}:"));
    }
}
