//! The requests this server answered lately, with their answers.
//!
//! Redis replicates asynchronously and flushes its log once a second: a
//! master can die after its caller read an answer but before the answer,
//! the delivery and the acknowledgement reached the replica promoted in its
//! place (or the disk a restarted server reloads). That Redis then holds
//! the request as undelivered or as pending, and hands it out again. Only
//! the server that handled it still knows, so it answers again from here
//! instead of handling it a second time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::keys::INLINE_BODY_MAX;

/// Ids remembered at most, and for at most this long: a failover ends,
/// and the requests it brings back are read again, well within both.
const REMEMBERED: usize = 4096;
const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// Answer bodies kept at most, in bytes: past it the oldest answers are
/// remembered without their body, as is any answer too large to go inline.
const KEPT_BYTES: usize = 16 << 20;

/// What a request was answered: the status byte and, when small enough to
/// keep, the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PastAnswer {
    pub status: u8,
    pub body: Option<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Answered {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, PastAnswer>,
    /// Ids oldest first, with when they were answered.
    order: VecDeque<(Instant, String)>,
    kept_bytes: usize,
}

impl Answered {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that request `id` was answered `status`, `body`.
    pub fn remember(&self, id: &str, status: u8, body: &[u8]) {
        let now = Instant::now();
        let mut inner = self.lock();
        let keep = body.len() <= INLINE_BODY_MAX;
        if keep {
            inner.make_room(body.len());
        }
        let answer = PastAnswer { status, body: keep.then(|| body.to_vec()) };
        inner.kept_bytes += answer.body.as_ref().map_or(0, Vec::len);
        if let Some(earlier) = inner.by_id.insert(id.to_owned(), answer) {
            inner.kept_bytes -= earlier.body.map_or(0, |b| b.len());
        } else {
            inner.order.push_back((now, id.to_owned()));
        }
        inner.forget_old(now);
    }

    /// How request `id` was answered here, if it was lately.
    pub fn get(&self, id: &str) -> Option<PastAnswer> {
        let mut inner = self.lock();
        inner.forget_old(Instant::now());
        inner.by_id.get(id).cloned()
    }
}

impl Inner {
    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if self.order.len() <= REMEMBERED && now.duration_since(*at) < REMEMBER_FOR {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            if let Some(answer) = self.by_id.remove(&id) {
                self.kept_bytes -= answer.body.map_or(0, |b| b.len());
            }
        }
    }

    /// Drops the bodies of the oldest answers until `bytes` more fit: the
    /// newest are the likeliest to come back.
    fn make_room(&mut self, bytes: usize) {
        for (_, id) in &self.order {
            if self.kept_bytes + bytes <= KEPT_BYTES {
                return;
            }
            if let Some(body) = self.by_id.get_mut(id).and_then(|a| a.body.take()) {
                self.kept_bytes -= body.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_small_answers_whole_and_large_ones_without_their_body() {
        let answered = Answered::default();
        answered.remember("a", 0, b"reply");
        answered.remember("b", 1, &vec![7; INLINE_BODY_MAX + 1]);
        assert_eq!(answered.get("a"), Some(PastAnswer { status: 0, body: Some(b"reply".to_vec()) }));
        assert_eq!(answered.get("b"), Some(PastAnswer { status: 1, body: None }));
        assert_eq!(answered.get("c"), None);
    }

    #[test]
    fn forgets_the_oldest_past_the_count_and_keeps_the_byte_budget() {
        let answered = Answered::default();
        for i in 0..REMEMBERED + 10 {
            answered.remember(&i.to_string(), 0, &vec![0; INLINE_BODY_MAX]);
        }
        assert_eq!(answered.get("0"), None);
        let newest = answered.get(&(REMEMBERED + 9).to_string()).unwrap();
        assert_eq!(newest.body.map(|b| b.len()), Some(INLINE_BODY_MAX), "the newest answer keeps its body");
        let inner = answered.lock();
        assert!(inner.kept_bytes <= KEPT_BYTES, "{}", inner.kept_bytes);
        assert_eq!(inner.by_id.len(), inner.order.len());
        let kept: usize = inner.by_id.values().map(|a| a.body.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!(kept, inner.kept_bytes);
    }
}
