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

/// Ids remembered at most (a few MiB of them), and for at most this long:
/// the requests a failover brings back are read again within seconds, or
/// claimed one a second; at thousands of answers a second, 65 536 still
/// cover the tens of seconds that takes.
const REMEMBERED: usize = 65_536;
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
    /// Ids whose body may still be kept, oldest first: the bodies to drop
    /// for a new one, without walking past those dropped already.
    with_body: VecDeque<String>,
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
        if keep {
            inner.with_body.push_back(id.to_owned());
        }
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
            // Both are in the order of answers: the oldest goes from both.
            if self.with_body.front() == Some(&id) {
                self.with_body.pop_front();
            }
        }
        // Bounded even if an id was answered twice (pushed twice here).
        while self.with_body.len() > REMEMBERED {
            self.with_body.pop_front();
        }
    }

    /// Drops the bodies of the oldest answers until `bytes` more fit: the
    /// newest are the likeliest to come back.
    fn make_room(&mut self, bytes: usize) {
        while self.kept_bytes + bytes > KEPT_BYTES {
            let Some(id) = self.with_body.pop_front() else { return };
            // Forgotten already, or answered again since: nothing to drop.
            if let Some(body) = self.by_id.get_mut(&id).and_then(|a| a.body.take()) {
                self.kept_bytes -= body.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_answers_keep_the_books_bounded() {
        let answered = Answered::default();
        for i in 0..REMEMBERED * 2 {
            answered.remember(&i.to_string(), 0, b"");
        }
        let inner = answered.lock();
        assert_eq!((inner.order.len(), inner.by_id.len()), (REMEMBERED, REMEMBERED));
        assert!(inner.with_body.len() <= REMEMBERED, "{}", inner.with_body.len());
    }

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
    fn keeps_the_byte_budget_by_dropping_the_oldest_bodies() {
        let answered = Answered::default();
        let answers = KEPT_BYTES / INLINE_BODY_MAX + 10;
        let body = vec![0; INLINE_BODY_MAX];
        for i in 0..answers {
            answered.remember(&i.to_string(), 0, &body);
        }
        assert_eq!(answered.get("0"), Some(PastAnswer { status: 0, body: None }), "remembered, without its body");
        let newest = answered.get(&(answers - 1).to_string()).unwrap();
        assert_eq!(newest.body.map(|b| b.len()), Some(INLINE_BODY_MAX), "the newest answer keeps its body");
        let inner = answered.lock();
        assert!(inner.kept_bytes <= KEPT_BYTES, "{}", inner.kept_bytes);
        let kept: usize = inner.by_id.values().map(|a| a.body.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!(kept, inner.kept_bytes);
    }
}
