//! Redis key names. The namespace sits in a hash tag so that one
//! namespace's keys land on one Redis Cluster slot.

pub(crate) const GROUP: &str = "servers";

pub(crate) fn request_stream(namespace: &str, function: &str) -> String {
    format!("cwasi:{{{namespace}}}:req:{function}")
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

/// How long replies and done markers are kept (seconds).
pub(crate) const KEEP_SECONDS: u64 = 3600;

/// First byte of a reply list element.
pub(crate) const REPLY_OK: u8 = 0;
pub(crate) const REPLY_FAILED: u8 = 1;
