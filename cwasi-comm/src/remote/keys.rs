//! Redis key names. Each function's keys share one hash tag,
//! `{<namespace>/<function>}`, so that every atomic step (a script touches
//! a request's stream, reply list, body and state together) stays within
//! one Redis Cluster slot, while the functions of a busy namespace spread
//! over the cluster. One ACL key pattern, `~cwasi:{<namespace>/*`, covers a
//! namespace (names never contain `/`).

use std::time::Duration;

pub(crate) const GROUP: &str = "servers";

/// The keys of one function, in one namespace.
#[derive(Debug, Clone)]
pub(crate) struct FunctionKeys {
    /// `cwasi:{<namespace>/<function>}:`
    prefix: String,
}

impl FunctionKeys {
    pub(crate) fn new(namespace: &str, function: &str) -> Self {
        Self { prefix: format!("cwasi:{{{namespace}/{function}}}:") }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The stream of requests waiting for a server.
    pub(crate) fn requests(&self) -> String {
        self.key("req")
    }

    /// Requests that were refused or delivered too often, with the reason.
    pub(crate) fn dead_letters(&self) -> String {
        self.key("dead")
    }

    /// Liveness of the function's servers: a sorted set of consumer names
    /// scored with the Redis time (seconds) each last showed it was alive.
    pub(crate) fn servers(&self) -> String {
        self.key("servers")
    }

    pub(crate) fn reply_list(&self, request_id: &str) -> String {
        self.key(&format!("rep:{request_id}"))
    }

    /// Where a large request body waits, beside its (small) stream entry.
    pub(crate) fn request_body(&self, request_id: &str) -> String {
        self.key(&format!("body:{request_id}"))
    }

    /// A request's state, written with its stream entry: `q` (queued), then
    /// `d` (answered). A send retried over a reconnect finds it and adds
    /// nothing; a request delivered again after its answer is not handled
    /// twice; a caller that finds it gone after a failover sends again.
    pub(crate) fn request_state(&self, request_id: &str) -> String {
        self.key(&format!("state:{request_id}"))
    }

    /// Why an entry's keys are refused: a server only touches keys that the
    /// entry's own id names under its own function, so a forged entry cannot
    /// make it write or delete anyone else's key.
    pub(crate) fn check_entry(&self, id: &str, reply: &str, body_key: Option<&str>) -> Result<(), String> {
        if id.is_empty() || id.len() > 512 {
            return Err("a request id must have 1 to 512 bytes".into());
        }
        if reply != self.reply_list(id) {
            return Err(format!("reply key {reply:?} is not this request's reply list ({}…)", self.prefix));
        }
        if let Some(body) = body_key
            && body != self.request_body(id)
        {
            return Err(format!("body key {body:?} is not this request's body ({}…)", self.prefix));
        }
        Ok(())
    }
}

/// Bodies up to this size travel inside the stream entry; larger ones as a
/// plain string key, which Redis stores and serves as cheaply as a SET/GET
/// (measured: a 1–100 MiB field in a stream costs 1.4–1.9 × a SET+GET).
pub(crate) const INLINE_BODY_MAX: usize = 64 << 10;

/// How long replies, large bodies and request states are kept (seconds): the
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: the first non-empty `{…}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn a_functions_keys_share_one_hash_tag_and_functions_differ() {
        let keys = FunctionKeys::new("team-a", "f");
        for key in [
            keys.requests(),
            keys.dead_letters(),
            keys.servers(),
            keys.reply_list("r1"),
            keys.request_body("r1"),
            keys.request_state("r1"),
        ] {
            assert!(key.starts_with("cwasi:{team-a/"), "{key}");
            assert_eq!(hash_tag(&key), "team-a/f", "{key}");
        }
        assert_ne!(hash_tag(&FunctionKeys::new("team-a", "g").requests()), "team-a/f");
    }

    #[test]
    fn entry_keys_must_be_the_requests_own_under_its_function() {
        let keys = FunctionKeys::new("a", "f");
        let (reply, body) = (keys.reply_list("r1"), keys.request_body("r1"));
        assert!(keys.check_entry("r1", &reply, None).is_ok());
        assert!(keys.check_entry("r1", &reply, Some(&body)).is_ok());
        // Another namespace's or function's reply list, an arbitrary key, another request's list.
        assert!(keys.check_entry("r1", &FunctionKeys::new("b", "f").reply_list("r1"), None).is_err());
        assert!(keys.check_entry("r1", &FunctionKeys::new("a", "g").reply_list("r1"), None).is_err());
        assert!(keys.check_entry("r1", "victim", None).is_err());
        assert!(keys.check_entry("r1", &keys.reply_list("r2"), None).is_err());
        // A body key elsewhere, or someone else's body.
        assert!(keys.check_entry("r1", &reply, Some(&FunctionKeys::new("b", "f").request_body("r1"))).is_err());
        assert!(keys.check_entry("r1", &reply, Some(&keys.requests())).is_err());
        assert!(keys.check_entry("", &keys.reply_list(""), None).is_err());
        // An id trying to leave the function still yields keys in its slot.
        let sneaky = "x}:rep:{b";
        assert!(keys.check_entry(sneaky, &keys.reply_list(sneaky), None).is_ok());
        assert_eq!(hash_tag(&keys.reply_list(sneaky)), "a/f");
    }
}
