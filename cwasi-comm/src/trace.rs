//! W3C trace context (`traceparent`) carried by every call, so that the calls
//! of one workflow share a trace id across embedded, local and remote hops.
//!
//! A call is a span (the caller's side), and so is the serving of its
//! request (the server's side, a child of the call's). A call made while
//! serving a request is a child of that serving; one made outside any (the
//! start of a workflow) starts a new trace. Log lines carry `trace_id`,
//! `span_id` and `parent_id`, which is enough to draw the call tree from the
//! logs of every node.

use std::cell::Cell;
use std::fmt;

/// `sampled` in the trace flags: cwasi keeps a caller's decision as it is
/// and samples a trace it starts.
const SAMPLED: u8 = 0x01;
/// The longest `traceparent` read (a later version may append fields).
const MAX_LEN: usize = 256;

/// One call's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    /// The parent span, if any (known for spans made here; a parsed or
    /// received context carries none).
    parent_id: Option<u64>,
    flags: u8,
}

impl TraceContext {
    /// A new span: a child of `parent` (same trace), or with `None` the root
    /// of a new trace.
    pub fn new_span(parent: Option<&TraceContext>) -> Self {
        match parent {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id: random_nonzero_u64(),
                parent_id: Some(parent.span_id),
                // Flags this version does not know are not passed on.
                flags: parent.flags & SAMPLED,
            },
            None => {
                // One hash per trace: the root span's id is derived from the
                // trace id's fresh half, which it travels beside anyway.
                let (thread, fresh) = new_trace_halves();
                Self {
                    trace_id: (u128::from(thread) << 64) | u128::from(fresh),
                    span_id: (fresh.rotate_left(32) ^ thread).max(1),
                    parent_id: None,
                    flags: SAMPLED,
                }
            }
        }
    }

    /// Parses a `traceparent` header value; `None` for anything the W3C
    /// format rejects (a bad length, upper-case or non-hex digits, an all-zero
    /// id, version `ff`). A later version's extra fields are ignored, as the
    /// format asks.
    pub fn parse(traceparent: &str) -> Option<Self> {
        if traceparent.len() > MAX_LEN {
            return None;
        }
        let bytes = traceparent.as_bytes();
        // ASCII first: the slices below must fall on character boundaries.
        if !traceparent.is_ascii() || bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = hex(&traceparent[0..2])? as u8;
        if version == 0xff || (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        let trace_id = hex(&traceparent[3..35])?;
        let span_id = hex(&traceparent[36..52])? as u64;
        let flags = hex(&traceparent[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id, parent_id: None, flags })
    }

    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    pub fn span_id(&self) -> SpanId {
        SpanId(self.span_id)
    }

    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id.map(SpanId)
    }

    /// The fixed-size form carried in shared memory (local mode): trace id,
    /// span id, flags; zeros mean no context.
    pub(crate) fn to_words(self) -> [u64; 4] {
        [(self.trace_id >> 64) as u64, self.trace_id as u64, self.span_id, u64::from(self.flags)]
    }

    /// Reads [`TraceContext::to_words`] back; `None` for zeros (no context)
    /// or anything a well-behaved caller never writes.
    pub(crate) fn from_words(words: [u64; 4]) -> Option<Self> {
        let trace_id = (u128::from(words[0]) << 64) | u128::from(words[1]);
        let flags = u8::try_from(words[3]).ok()?;
        (trace_id != 0 && words[2] != 0).then_some(Self { trace_id, span_id: words[2], parent_id: None, flags })
    }
}

/// The `traceparent` header value (version 00) of this call.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// A trace id as logged: 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id as logged: 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(u64);

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Lower-case hex only, as the format requires.
fn hex(digits: &str) -> Option<u128> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(digits, 16).ok()
}

thread_local! {
    /// A keyed hash (SipHash, its key random per process and thread) of a
    /// counter: ids never repeat within a thread, and one seen in a request
    /// does not tell another tenant the next (which would let it graft spans
    /// onto traces not its own). No system call per id. With it, a random
    /// word per thread: the high half of the thread's trace ids.
    static IDS: Ids = Ids::new();
}

struct Ids {
    key: std::collections::hash_map::RandomState,
    counter: Cell<u64>,
    thread: u64,
}

impl Ids {
    fn new() -> Self {
        use std::hash::BuildHasher;
        let key = std::collections::hash_map::RandomState::new();
        let thread = key.hash_one(u64::MAX).max(1);
        Self { key, counter: Cell::new(0), thread }
    }

    fn next(&self) -> u64 {
        use std::hash::BuildHasher;
        loop {
            let n = self.counter.get().wrapping_add(1);
            self.counter.set(n);
            let id = self.key.hash_one(n);
            if id != 0 {
                return id;
            }
        }
    }
}

fn random_nonzero_u64() -> u64 {
    IDS.with(Ids::next)
}

/// This thread's random word and a fresh id: a trace id's two halves.
fn new_trace_halves() -> (u64, u64) {
    IDS.with(|ids| (ids.thread, ids.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let root = TraceContext::new_span(None);
        let text = root.to_string();
        assert_eq!(text.len(), 55);
        let parsed = TraceContext::parse(&text).unwrap();
        assert_eq!((parsed.trace_id(), parsed.span_id()), (root.trace_id(), root.span_id()));
        assert_eq!(TraceContext::from_words(root.to_words()).unwrap().to_string(), text);
    }

    #[test]
    fn a_call_continues_its_parent_trace_with_a_new_span() {
        let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let child = TraceContext::new_span(Some(&parent));
        assert_eq!(child.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(child.parent_id().unwrap().to_string(), "00f067aa0ba902b7");
        assert_ne!(child.span_id(), parent.span_id());
        assert!(child.to_string().ends_with("-01"));
        // Flags unknown to this version are not passed on.
        let odd = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert!(TraceContext::new_span(Some(&odd)).to_string().ends_with("-01"));
        let other = TraceContext::new_span(None);
        assert_ne!(other.trace_id(), TraceContext::new_span(None).trace_id());
        assert!(other.parent_id().is_none());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
            "00-\u{e9}bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00+4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
        // A later version may add fields after a dash.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
        assert!(
            TraceContext::parse(&format!(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
                "x".repeat(300)
            ))
            .is_none()
        );
        assert!(TraceContext::from_words([0; 4]).is_none());
        assert!(TraceContext::from_words([1, 2, 3, 256]).is_none());
    }
}
