//! Requests handed to an embedded peer by its caller, in the same process.
//!
//! An embedded peer is served like any function: its handler asks its
//! `GuestHost` for the next request, reads it, answers it. What differs is
//! where the request comes from: an [`InProcessSource`], which the caller's
//! engine feeds with the caller's request, read straight from the caller's
//! memory, and which keeps the peer's answer where the peer wrote it, in the
//! peer's memory.
//!
//! The bytes are never copied into a buffer of the host. That is sound
//! because of when each side runs:
//! - the request is read only while its offer stands: the read holds the
//!   lock and checks the offer is the one it took, and the caller withdraws
//!   its offer (under that lock, so after any read in progress) before its
//!   request can go away; a peer still running after its caller gave up (a
//!   deadline) reads nothing;
//! - the answer is read only while the peer is *parked*: waiting for its
//!   next request, so it can neither write nor grow its memory, until the
//!   caller has read the answer and offers the next request. (Between its
//!   answer and parking the peer may grow its memory: engines keep linear
//!   memories in place when they grow, which cwasi's wasmtime configuration
//!   states explicitly.)
//!
//! Engines park a peer in one of two ways: a suspended fiber
//! ([`InProcessSource::poll_next`], wasmtime) or a thread blocked in
//! `serve_next` ([`InProcessSource::next`], WasmEdge).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::trace::TraceContext;
use crate::{CallError, Payload, pages};

/// Bytes in some linear memory, valid only under the rules above.
#[derive(Debug, Clone, Copy)]
struct RawBytes {
    /// Written (its pages taken) only when `given`: then it came from a
    /// `&mut` borrow of the giver's memory.
    ptr: *mut u8,
    len: usize,
    /// Its guest gave it up: its whole pages may move to the reader.
    given: bool,
}

// SAFETY: a RawBytes is a plain address; it is dereferenced only under the
// module's rules (its memory's owner waits), whichever thread reads it.
unsafe impl Send for RawBytes {}

impl RawBytes {
    fn new(payload: Payload<'_>) -> Self {
        match payload {
            Payload::Lent(bytes) => Self { ptr: bytes.as_ptr().cast_mut(), len: bytes.len(), given: false },
            Payload::Given { bytes, .. } => Self { ptr: bytes.as_mut_ptr(), len: bytes.len(), given: true },
        }
    }

    /// Puts these bytes into `out` (as long): their whole pages move when
    /// they were given, else they are copied.
    ///
    /// # Safety
    /// The bytes are readable now, under the module's rules, and nothing
    /// else touches them or `out` meanwhile; `out` lies in another memory.
    unsafe fn deliver(self, out: &mut [u8]) -> Result<(), CallError> {
        debug_assert_eq!(self.len, out.len());
        if self.given {
            // SAFETY: given bytes came from a `&mut` borrow of a linear
            // memory whose guest waits; `out` is another linear memory's, in
            // the host call that receives.
            unsafe { pages::hand_over(self.ptr, out.as_mut_ptr(), self.len) }?;
        } else {
            // SAFETY: as promised by the caller; distinct memories.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr, out.as_mut_ptr(), self.len) };
        }
        Ok(())
    }
}

/// How a peer answered the request it was offered.
pub enum Answer {
    /// Its reply, in its memory; [`InProcessSource::read_reply`] copies it.
    Reply(usize),
    Failure(String),
    /// It parked again without answering.
    None,
}

/// The requests of one embedded peer instance.
#[derive(Default)]
pub struct InProcessSource {
    state: Mutex<State>,
    changed: Condvar,
    /// Counts changes of `state` (an offer, a take, a park), so that a side
    /// about to wait can spin on it a while first, as local mode does: a
    /// small call then costs no sleep when both sides run.
    changes: AtomicU64,
}

#[derive(Default)]
struct State {
    offered: Option<Offer>,
    /// The peer took the offered request.
    taken: bool,
    /// The peer read the offered request, which was given: its pages are
    /// gone from the caller, a second read would see zeros.
    given_read: bool,
    reply: Option<RawBytes>,
    failure: Option<String>,
    /// The peer waits for a request.
    parked: bool,
    /// Counts offers, so that a request taken from an offer since withdrawn
    /// is known to be stale.
    generation: u64,
    /// No more requests: a peer waiting for one is told to end.
    closed: bool,
    /// Threads asleep on `changed`: without one, a change wakes nobody (a
    /// condvar's notify is a system call even with no one waiting).
    sleepers: u32,
}

#[derive(Clone, Copy)]
struct Offer {
    request: RawBytes,
    deadline: Instant,
    trace: TraceContext,
    generation: u64,
}

impl InProcessSource {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the other side, spinning or asleep (`state` is the locked state).
    fn changed(&self, state: &State) {
        // Ordering: Release, paired with the Acquire loads of the spinning
        // side (`spin_past`, `wait_parked`); the
        // state itself is read under its lock.
        self.changes.fetch_add(1, Ordering::Release);
        if state.sleepers > 0 {
            self.changed.notify_all();
        }
    }

    /// Sleeps on `changed` (at most `timeout`), counted as a sleeper.
    fn sleep<'a>(&self, mut state: MutexGuard<'a, State>, timeout: Option<Duration>) -> MutexGuard<'a, State> {
        state.sleepers += 1;
        let mut state = match timeout {
            Some(timeout) => self.changed.wait_timeout(state, timeout).unwrap_or_else(|e| e.into_inner()).0,
            None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
        state.sleepers -= 1;
        state
    }

    /// Spins a while for a change after `seen`; true if one came.
    fn spin_past(&self, seen: u64) -> bool {
        crate::local::spin_for(|| (self.changes.load(Ordering::Acquire) != seen).then_some(())).is_some()
    }

    /// Offers `request` to the peer. The caller must then keep `request`
    /// borrowed until the peer parks again ([`InProcessSource::wait_parked`],
    /// or the engine's poll returned) and [`InProcessSource::withdraw`].
    pub fn offer(&self, request: Payload<'_>, deadline: Instant, trace: TraceContext) {
        let mut state = self.lock();
        let generation = state.generation + 1;
        let offered = Some(Offer { request: RawBytes::new(request), deadline, trace, generation });
        *state = State { offered, generation, sleepers: state.sleepers, closed: state.closed, ..State::default() };
        self.changed(&state);
    }

    /// The deadline of the request offered now, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().offered.map(|offer| offer.deadline)
    }

    /// Waits until the peer parked with the offered request answered (or
    /// not), at most until `until`; false when it did not park by then.
    pub fn wait_parked(&self, until: Instant) -> bool {
        // Spins until the peer parked, not only until the first change: the
        // first is the peer taking the request, and sleeping then would cost
        // a wake-up in every call.
        let mut seen = self.changes.load(Ordering::Acquire);
        if self.parked_with_answer() {
            return true;
        }
        let parked = crate::local::spin_for(|| {
            let now = self.changes.load(Ordering::Acquire);
            if now == seen {
                return None;
            }
            seen = now;
            let state = self.lock();
            (state.parked && state.taken).then_some(())
        });
        if parked.is_some() {
            return true;
        }
        let mut state = self.lock();
        while !(state.parked && state.taken) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.sleep(state, Some(left));
        }
        true
    }

    /// Whether the peer parked again after taking the offered request.
    pub fn parked_with_answer(&self) -> bool {
        let state = self.lock();
        state.parked && state.taken
    }

    /// No more requests: a peer waiting in [`InProcessSource::next`] ends
    /// its wait (its engine then ends its run).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.changed(&state);
    }

    /// Ends the offer: how the peer answered. From here on the peer cannot
    /// read the request any more. The reply stays readable while the peer
    /// is parked and nothing new is offered.
    pub fn withdraw(&self) -> Answer {
        let mut state = self.lock();
        state.offered = None;
        match (state.reply, state.failure.take()) {
            (Some(reply), _) => Answer::Reply(reply.len),
            (None, Some(message)) => Answer::Failure(message),
            (None, None) => Answer::None,
        }
    }

    /// Puts the parked peer's reply into `out` (its exact length): copied,
    /// or its pages moved when the peer gave it up.
    pub fn read_reply(&self, out: &mut [u8]) -> Result<(), CallError> {
        let state = self.lock();
        let (Some(reply), true) = (state.reply, state.parked) else {
            return Err(CallError::Protocol("no reply of a parked embedded peer to read".into()));
        };
        if reply.len != out.len() {
            return Err(CallError::Protocol(format!("reply is {} bytes, buffer {}", reply.len, out.len())));
        }
        // SAFETY: the reply lies in the memory of the peer, which is parked
        // (checked above, under the lock that offering takes): it cannot run,
        // write or grow its memory until the next offer; `out` is the
        // caller's memory, another instance's, so they do not overlap.
        unsafe { reply.deliver(out) }
    }

    /// The peer's side: the offered request, if there is one not taken yet;
    /// else the peer parks (`Pending`).
    pub fn poll_next(self: &Arc<Self>) -> Poll<InProcessRequest> {
        let mut state = self.lock();
        match state.offered {
            Some(offer) if !state.taken => {
                state.taken = true;
                state.parked = false;
                self.changes.fetch_add(1, Ordering::Release);
                Poll::Ready(InProcessRequest { source: self.clone(), offer })
            }
            _ => {
                if !state.parked {
                    state.parked = true;
                    self.changed(&state);
                }
                Poll::Pending
            }
        }
    }

    /// The peer's side, on a thread of its own: parks until a request is
    /// offered; `None` once the source is closed.
    pub fn next(self: &Arc<Self>) -> Option<InProcessRequest> {
        loop {
            if let Poll::Ready(request) = self.poll_next() {
                return Some(request);
            }
            let seen = self.changes.load(Ordering::Acquire);
            if self.spin_past(seen) {
                continue;
            }
            let state = self.lock();
            if state.closed {
                return None;
            }
            if state.offered.is_some() && !state.taken {
                continue;
            }
            // Every change that ends this wait (an offer, a close) notifies
            // under this lock, and the conditions were checked under it.
            drop(self.sleep(state, None));
        }
    }
}

/// The request an embedded peer is serving.
pub struct InProcessRequest {
    source: Arc<InProcessSource>,
    offer: Offer,
}

impl InProcessRequest {
    pub fn len(&self) -> u64 {
        self.offer.request.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.offer.request.len == 0
    }

    pub fn trace(&self) -> TraceContext {
        self.offer.trace
    }

    /// The caller's deadline: the peer's own calls end by it.
    pub fn deadline(&self) -> Instant {
        self.offer.deadline
    }

    /// The source's state, if this request's offer still stands.
    fn standing(&self) -> Result<MutexGuard<'_, State>, CallError> {
        let state = self.source.lock();
        match state.offered {
            Some(offer) if offer.generation == self.offer.generation => Ok(state),
            _ => Err(CallError::Timeout("the caller gave up on this request".into())),
        }
    }

    /// Puts the request from the caller's memory into `out` (its length):
    /// copied, or its pages moved when the caller gave it up.
    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        let request = self.offer.request;
        if out.len() != request.len {
            return Err(CallError::Protocol("request length mismatch".into()));
        }
        let mut standing = self.standing()?;
        if request.given && std::mem::replace(&mut standing.given_read, true) {
            return Err(CallError::Protocol("a given request is read once".into()));
        }
        // SAFETY: the offer stands (checked under the lock held until the
        // delivery ends), and its caller withdraws it, under that lock,
        // before `request` can go away (it waits in its call meanwhile);
        // `out` is the peer's memory, another instance's, so they do not
        // overlap.
        unsafe { request.deliver(out) }
    }

    /// Keeps where the reply lies: the caller reads it once the peer parks
    /// (the ABI has the peer leave it unchanged until its next request).
    pub fn reply(self, reply: Payload<'_>) -> Result<(), CallError> {
        self.standing()?.reply = Some(RawBytes::new(reply));
        Ok(())
    }

    pub fn fail(self, message: &str) -> Result<(), CallError> {
        self.standing()?.failure = Some(message.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_trace() -> TraceContext {
        TraceContext::new_span(None)
    }

    #[test]
    fn a_peer_takes_the_offer_once_and_its_reply_is_read_once_parked() {
        let source = Arc::new(InProcessSource::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        // Nothing offered: the peer parks.
        assert!(source.poll_next().is_pending());
        let request = b"ping".to_vec();
        source.offer(Payload::Lent(&request), deadline, a_trace());
        let Poll::Ready(taken) = source.poll_next() else { panic!("the offer was not taken") };
        let mut peer_memory = [0u8; 4];
        taken.read_into(&mut peer_memory).unwrap();
        assert_eq!(&peer_memory, b"ping");
        let reply = b"pong!".to_vec();
        taken.reply(Payload::Lent(&reply)).unwrap();
        // Running: the reply cannot be read yet.
        assert!(source.read_reply(&mut [0; 5]).is_err());
        assert!(source.poll_next().is_pending());
        assert!(source.wait_parked(deadline));
        let Answer::Reply(len) = source.withdraw() else { panic!("no reply") };
        let mut out = vec![0; len];
        source.read_reply(&mut out).unwrap();
        assert_eq!(out, b"pong!");
        assert!(source.poll_next().is_pending(), "a withdrawn offer is not taken again");
    }

    #[test]
    fn a_peer_on_its_own_thread_is_woken_by_the_offer() {
        let source = Arc::new(InProcessSource::default());
        let peer = source.clone();
        let reply = b"done".to_vec();
        std::thread::spawn(move || {
            loop {
                let Some(request) = peer.next() else { return };
                let mut bytes = vec![0; request.len() as usize];
                request.read_into(&mut bytes).unwrap();
                if bytes == b"fail" {
                    request.fail("asked to").unwrap();
                } else {
                    request.reply(Payload::Lent(&reply)).unwrap();
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        for (request, expected) in [(&b"x"[..], Some(4)), (b"fail", None), (b"y", Some(4))] {
            source.offer(Payload::Lent(request), deadline, a_trace());
            assert!(source.wait_parked(deadline));
            match source.withdraw() {
                Answer::Reply(len) => assert_eq!(Some(len), expected),
                Answer::Failure(message) => assert_eq!((message.as_str(), expected), ("asked to", None)),
                Answer::None => panic!("no answer"),
            }
        }
    }

    #[test]
    fn a_request_whose_caller_gave_up_reads_and_answers_nothing() {
        let source = Arc::new(InProcessSource::default());
        let request = b"gone soon".to_vec();
        source.offer(Payload::Lent(&request), Instant::now() + Duration::from_secs(5), a_trace());
        let Poll::Ready(taken) = source.poll_next() else { panic!("the offer was not taken") };
        // The caller's deadline passed: it withdraws, then its request may go away.
        assert!(matches!(source.withdraw(), Answer::None));
        drop(request);
        assert!(matches!(taken.read_into(&mut [0; 9]), Err(CallError::Timeout(_))));
        assert!(matches!(taken.reply(Payload::Lent(b"late")), Err(CallError::Timeout(_))));
        assert!(matches!(source.withdraw(), Answer::None), "a stale reply is not kept");
    }

    #[test]
    fn closing_ends_the_wait_of_a_peer_on_its_own_thread() {
        let source = Arc::new(InProcessSource::default());
        let peer = source.clone();
        let waiting = std::thread::spawn(move || peer.next().is_none());
        std::thread::sleep(Duration::from_millis(20));
        source.close();
        assert!(waiting.join().unwrap());
    }

    #[test]
    fn a_peer_that_never_parks_is_given_up_on_at_the_deadline() {
        let source = InProcessSource::default();
        let request = b"slow".to_vec();
        source.offer(Payload::Lent(&request), Instant::now(), a_trace());
        let started = Instant::now();
        assert!(!source.wait_parked(Instant::now() + Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    /// A given request's pages move into the peer's memory and a given
    /// reply's into the caller's; lent bytes are copied and stay.
    #[test]
    fn given_bytes_move_and_lent_bytes_are_copied() {
        const LEN: usize = 2 << 20;
        let source = Arc::new(InProcessSource::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut caller = memmap2::MmapMut::map_anon(LEN).unwrap();
        let mut peer = memmap2::MmapMut::map_anon(2 * LEN).unwrap();
        caller.fill(3);
        source.offer(Payload::Given { bytes: &mut caller[..], pages: &mut None }, deadline, a_trace());
        let Poll::Ready(taken) = source.poll_next() else { panic!("the offer was not taken") };
        let (request_buffer, reply) = peer.split_at_mut(LEN);
        taken.read_into(request_buffer).unwrap();
        assert!(request_buffer.iter().all(|&b| b == 3));
        reply.fill(4);
        taken.reply(Payload::Given { bytes: reply, pages: &mut None }).unwrap();
        assert!(source.poll_next().is_pending());
        assert!(matches!(source.withdraw(), Answer::Reply(LEN)));
        source.read_reply(&mut caller[..]).unwrap();
        assert!(caller.iter().all(|&b| b == 4), "the reply's pages came over");
        assert!(peer[LEN..].iter().all(|&b| b == 0), "and left zero pages behind");

        let lent = vec![5u8; LEN];
        source.offer(Payload::Lent(&lent), deadline, a_trace());
        let Poll::Ready(taken) = source.poll_next() else { panic!("the offer was not taken") };
        taken.read_into(&mut peer[..LEN]).unwrap();
        assert!(peer[..LEN].iter().all(|&b| b == 5) && lent.iter().all(|&b| b == 5));
    }
}
