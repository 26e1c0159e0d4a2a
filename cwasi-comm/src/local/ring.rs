//! A single-producer single-consumer stream of messages through a ring of
//! fixed-size slots in shared memory.
//!
//! The producer copies a message chunk by chunk into free slots and
//! publishes each one; the consumer copies each published slot out and
//! frees it. With more than one slot, both copies of a large message run at
//! the same time. Everything read from shared memory is checked: the peer
//! may be buggy or hostile, and must never make us read or write outside
//! the ring.
//!
//! Memory ordering (arm64 reorders what x86 does not): the producer owns
//! `head`, the slots it has not published and the message metadata; the
//! consumer owns `tail`. Each hand-off is a release store of one counter
//! ([`SharedCounter::publish`], SeqCst) that the other side reads with an
//! acquire load ([`SharedCounter::wait_until`]): `head` hands published slots
//! (bytes, `slot_len`, `msg_len`, `status`) to the consumer, `tail` hands the
//! freed slots back, with the consumer's reads of them done. A side reads its
//! own counter `Relaxed`: only it writes it, and a thread that takes over a
//! side (a reply pump, the next handler) got it through a lock or a
//! release/acquire flag (listener.rs: `busy`; client.rs: the idle pool's mutex).
//! A request's trace words (`set_trace`) travel like `msg_len`: stored before
//! its first slot is published, read after `head` is acquired.
//! Each `// Ordering:` comment below names the partner of that access.
//!
//! [`SharedCounter::publish`]: super::futex::SharedCounter::publish
//! [`SharedCounter::wait_until`]: super::futex::SharedCounter::wait_until

use std::ptr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::segment::RingControl;
use crate::CallError;
use crate::trace::TraceContext;

/// How often a waiting side checks that its peer is still there.
pub(crate) const LIVENESS_TICK: Duration = Duration::from_millis(20);

pub(crate) struct Ring<'a> {
    ctl: &'a RingControl,
    data: *mut u8,
    slot_bytes: usize,
    slot_count: usize,
}

/// What the consumer learns about the next message before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageHeader {
    pub(crate) len: u64,
    pub(crate) status: u32,
    /// The request's trace context (requests only).
    pub(crate) trace: Option<TraceContext>,
}

/// How far a patient send got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The whole message is in the ring.
    All,
    /// The consumer stopped taking slots; this many bytes are in the ring and
    /// the rest must follow with [`Ring::send_rest`].
    Stalled(usize),
}

/// Why waiting for a free slot ended early.
enum SlotWait {
    Failed(CallError),
    Stalled,
}

impl<'a> Ring<'a> {
    pub(crate) fn new(ctl: &'a RingControl, data: *mut u8, slot_bytes: usize, slot_count: usize) -> Self {
        Self { ctl, data, slot_bytes, slot_count }
    }

    /// Streams `msg` through the ring. `after_first_slot` runs once the
    /// consumer can see the message (to ring a doorbell).
    pub(crate) fn send(
        &self,
        msg: &[u8],
        status: u32,
        check: &mut dyn FnMut() -> Result<(), CallError>,
        after_first_slot: impl FnMut(),
    ) -> Result<(), CallError> {
        self.send_patiently(msg, status, check, after_first_slot, None).map(|_| ())
    }

    /// Like [`Ring::send`], but when the consumer takes no slot for
    /// `patience`, returns how much it sent instead of waiting on.
    pub(crate) fn send_patiently(
        &self,
        msg: &[u8],
        status: u32,
        check: &mut dyn FnMut() -> Result<(), CallError>,
        after_first_slot: impl FnMut(),
        patience: Option<Duration>,
    ) -> Result<Sent, CallError> {
        // Ordering: Relaxed, made visible by the release of the first slot's
        // `head.publish` in `push`, paired with the consumer's acquire of `head`
        // before it reads them in `wait_message`. The consumer has read the
        // previous message's metadata before we get here: calls alternate, so
        // it answered (or asked) on the other ring after reading it, and we
        // acquired that ring's `head` before sending this message.
        self.ctl.meta.msg_len.store(msg.len() as u64, Ordering::Relaxed);
        self.ctl.meta.status.store(status, Ordering::Relaxed);
        self.push_all(msg, check, after_first_slot, patience)
    }

    /// Sets the trace context that the next message sent carries (requests
    /// only; a reply carries none). Call before sending it.
    pub(crate) fn set_trace(&self, trace: Option<TraceContext>) {
        let words = trace.map_or([0; 4], TraceContext::to_words);
        for (shared, word) in self.ctl.meta.trace.iter().zip(words) {
            // Ordering: Relaxed, as `msg_len` in `send_patiently`: released by
            // the first slot's `head.publish`, acquired with `head` in `wait_message`.
            shared.store(word, Ordering::Relaxed);
        }
    }

    /// Sends the rest of a message that [`Ring::send_patiently`] left stalled.
    pub(crate) fn send_rest(
        &self,
        rest: &[u8],
        check: &mut dyn FnMut() -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        // Without patience a send never stalls.
        self.push_all(rest, check, || {}, None).map(|_| ())
    }

    fn push_all(
        &self,
        msg: &[u8],
        check: &mut dyn FnMut() -> Result<(), CallError>,
        after_first_slot: impl FnMut(),
        patience: Option<Duration>,
    ) -> Result<Sent, CallError> {
        let mut sent = 0;
        let mut after_first_slot = Some(after_first_slot);
        // An empty message (or the empty rest of a stalled one) still takes one empty slot.
        let chunks = msg.chunks(self.slot_bytes).chain(std::iter::once(&[][..]).filter(|_| msg.is_empty()));
        for chunk in chunks {
            match self.push(chunk, check, after_first_slot.take(), patience) {
                Ok(()) => sent += chunk.len(),
                Err(SlotWait::Stalled) => return Ok(Sent::Stalled(sent)),
                Err(SlotWait::Failed(e)) => return Err(e),
            }
        }
        Ok(Sent::All)
    }

    /// Copies one chunk into the next free slot and publishes it.
    fn push(
        &self,
        chunk: &[u8],
        check: &mut dyn FnMut() -> Result<(), CallError>,
        after_publish: Option<impl FnMut()>,
        patience: Option<Duration>,
    ) -> Result<(), SlotWait> {
        let n = self.slot_count as u32;
        // Ordering: Relaxed, our own counter (see the module comment).
        let head = self.ctl.head.value.load(Ordering::Relaxed);
        let tick = patience.map_or(LIVENESS_TICK, |p| p.min(LIVENESS_TICK));
        // Started at the first check, after the spin: a slot that is free at
        // once (every small message) costs no clock read.
        let mut give_up: Option<Instant> = None;
        // Ordering: `wait_until` loads `tail` with Acquire, paired with the
        // consumer's release `tail.publish` in `recv_into`: its copy out of a
        // slot happens before our copy into it below.
        self.ctl.tail.wait_until(
            |tail| head.wrapping_sub(tail) < n,
            tick,
            || {
                check().map_err(SlotWait::Failed)?;
                let Some(patience) = patience else { return Ok(()) };
                let now = Instant::now();
                match give_up {
                    Some(at) if now >= at => Err(SlotWait::Stalled),
                    Some(_) => Ok(()),
                    None => {
                        give_up = Some(now + patience);
                        Ok(())
                    }
                }
            },
        )?;
        let slot = (head % n) as usize;
        // SAFETY: slot < slot_count and chunk.len() <= slot_bytes, so the
        // destination lies inside this ring's slots (geometry validated
        // when the segment was mapped). The slot is free: the consumer
        // reads it only after `head` is published below. `chunk` is our
        // own memory, never part of the mapping.
        unsafe {
            ptr::copy_nonoverlapping(chunk.as_ptr(), self.data.add(slot * self.slot_bytes), chunk.len());
        }
        // Ordering: the slot's bytes and length (Relaxed) are released by
        // `head.publish` (a SeqCst store), paired with the consumer's acquire
        // of `head` in `wait_until` (`recv_into`, `wait_message`, `has_message`).
        self.ctl.meta.slot_len[slot].store(chunk.len() as u32, Ordering::Relaxed);
        self.ctl.head.publish(head.wrapping_add(1));
        if let Some(mut after_publish) = after_publish {
            after_publish();
        }
        Ok(())
    }

    /// The producer's position: where the next message will start.
    pub(crate) fn head(&self) -> u32 {
        // Ordering: Relaxed, the producer's own counter.
        self.ctl.head.value.load(Ordering::Relaxed)
    }

    /// Producer side: the message published from slot `start` on, if the
    /// consumer has not touched it (the whole message is still in the ring).
    /// The consumer must be gone, so that nothing moves under us.
    pub(crate) fn unconsumed_message(&self, start: u32) -> Option<Vec<u8>> {
        let n = self.slot_count as u32;
        // Ordering: `head` is our own (Acquire is more than needed). `tail`:
        // Acquire, paired with the gone consumer's last release `tail.publish`
        // in `recv_into`; a slot it took shows as `tail != start`.
        let head = self.ctl.head.value.load(Ordering::Acquire);
        let tail = self.ctl.tail.value.load(Ordering::Acquire);
        let slots = head.wrapping_sub(start);
        if tail != start || slots == 0 || slots > n {
            return None;
        }
        // Ordering: Relaxed, metadata and slot lengths we wrote ourselves.
        let len = usize::try_from(self.ctl.meta.msg_len.load(Ordering::Relaxed)).ok()?;
        let mut message = Vec::with_capacity(len);
        for i in 0..slots {
            let slot = (start.wrapping_add(i) % n) as usize;
            let slot_len = (self.ctl.meta.slot_len[slot].load(Ordering::Relaxed) as usize).min(self.slot_bytes);
            // SAFETY: slot < slot_count and slot_len <= slot_bytes keep the
            // read inside this ring's slots; the consumer is gone and we are
            // the only producer, so nobody writes them meanwhile.
            let bytes = unsafe { std::slice::from_raw_parts(self.data.add(slot * self.slot_bytes), slot_len) };
            message.extend_from_slice(bytes);
        }
        (message.len() == len).then_some(message)
    }

    /// Consumer side: marks the waiting request as taken by a handler.
    pub(crate) fn mark_taken(&self) {
        // Ordering: Release, paired with the caller's Acquire in `was_taken`.
        // The flag carries no other data; the caller reads it after it saw
        // the server's socket hang up, which the kernel orders after this
        // store. It follows the caller's `clear_taken` in the flag's
        // modification order: we acquired `head`, which the caller released
        // after clearing it.
        self.ctl.meta.taken.store(1, Ordering::Release);
    }

    /// Producer side, before a new request: not taken yet.
    pub(crate) fn clear_taken(&self) {
        // Ordering: Relaxed, released by the request's first `head.publish`
        // (the server marks a request taken only after acquiring `head`, so
        // its `mark_taken` cannot be overwritten by this store).
        self.ctl.meta.taken.store(0, Ordering::Relaxed);
    }

    pub(crate) fn was_taken(&self) -> bool {
        // Ordering: Acquire, paired with the server's Release in `mark_taken`.
        self.ctl.meta.taken.load(Ordering::Acquire) != 0
    }

    /// True when a message (or its first slot) is waiting.
    pub(crate) fn has_message(&self) -> bool {
        // Ordering: `head` Acquire, paired with the producer's release
        // `head.publish` in `push`; `tail` Relaxed, the consumer's own counter.
        self.ctl.head.value.load(Ordering::Acquire) != self.ctl.tail.value.load(Ordering::Relaxed)
    }

    /// Waits for the next message and returns its header without consuming it.
    pub(crate) fn wait_message(
        &self,
        check: &mut dyn FnMut() -> Result<(), CallError>,
    ) -> Result<MessageHeader, CallError> {
        // Ordering: `tail` Relaxed (our own). `wait_until` loads `head` with
        // Acquire, paired with the producer's release `head.publish` in
        // `push`, which makes the Relaxed metadata below (stored before the
        // first slot was published, see `send_patiently`) visible.
        let tail = self.ctl.tail.value.load(Ordering::Relaxed);
        self.ctl.head.wait_until(|head| head != tail, LIVENESS_TICK, &mut *check)?;
        let trace = std::array::from_fn(|i| self.ctl.meta.trace[i].load(Ordering::Relaxed));
        Ok(MessageHeader {
            len: self.ctl.meta.msg_len.load(Ordering::Relaxed),
            status: self.ctl.meta.status.load(Ordering::Relaxed),
            trace: TraceContext::from_words(trace),
        })
    }

    /// Copies the current message into `out`, whose length must be the
    /// message's, and frees its slots.
    pub(crate) fn recv_into(
        &self,
        out: &mut [u8],
        check: &mut dyn FnMut() -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        let n = self.slot_count as u32;
        // Ordering: Relaxed, the consumer's own counter.
        let mut tail = self.ctl.tail.value.load(Ordering::Relaxed);
        let mut offset = 0usize;
        loop {
            // Ordering: `wait_until` loads `head` with Acquire, paired with the
            // producer's release `head.publish` in `push`: the slot's bytes
            // and `slot_len` (Relaxed, below) are the published ones.
            let head = self.ctl.head.wait_until(|head| head != tail, LIVENESS_TICK, &mut *check)?;
            if head.wrapping_sub(tail) > n {
                return Err(CallError::Protocol("ring counters out of range".into()));
            }
            let slot = (tail % n) as usize;
            let len = self.ctl.meta.slot_len[slot].load(Ordering::Relaxed) as usize;
            let room = out.len() - offset;
            if len > self.slot_bytes || len > room || (len == 0 && room != 0) {
                return Err(CallError::Protocol(format!("slot of {len} bytes with {room} bytes of message left")));
            }
            // SAFETY: slot < slot_count and len <= slot_bytes keep the source
            // inside this ring's slots; the producer leaves the slot alone
            // until `tail` moves past it; out[offset..offset + len] is in
            // bounds (len <= room). Source and destination never overlap.
            unsafe {
                ptr::copy_nonoverlapping(self.data.add(slot * self.slot_bytes), out.as_mut_ptr().add(offset), len);
            }
            offset += len;
            tail = tail.wrapping_add(1);
            // Ordering: `publish` is a SeqCst (so release) store, paired with
            // the producer's acquire of `tail` in `push`: our copy out of the
            // slot is done before the producer may write it again.
            self.ctl.tail.publish(tail);
            if offset == out.len() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::Segment;

    fn ok() -> Result<(), crate::CallError> {
        Ok(())
    }

    #[test]
    fn a_request_carries_its_trace_context_and_a_reply_none() {
        use crate::trace::TraceContext;
        let (segment, _fd) = Segment::create(4096, 2).unwrap();
        let trace = TraceContext::new_span(None);
        let mut ok = ok;
        segment.request().set_trace(Some(trace));
        segment.request().send(b"ping", 0, &mut ok, || {}).unwrap();
        let header = segment.request().wait_message(&mut ok).unwrap();
        assert_eq!(header.trace.map(|t| t.to_string()), Some(trace.to_string()));
        let mut out = [0u8; 4];
        segment.request().recv_into(&mut out, &mut ok).unwrap();
        segment.reply().send(b"pong", 0, &mut ok, || {}).unwrap();
        assert_eq!(segment.reply().wait_message(&mut ok).unwrap().trace, None);
    }

    #[test]
    fn messages_of_every_size_cross_intact() {
        let (producer, fd) = Segment::create(4096, 3).unwrap();
        let consumer = Segment::open(fd).unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 50_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let received = std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let ring = consumer.request();
                    let header = ring.wait_message(&mut ok).unwrap();
                    assert_eq!(header.status, 7);
                    let mut out = vec![0u8; header.len as usize];
                    ring.recv_into(&mut out, &mut ok).unwrap();
                    out
                });
                producer.request().send(&msg, 7, &mut ok, || {}).unwrap();
                reader.join().unwrap()
            });
            assert_eq!(received, msg, "length {len}");
        }
    }

    /// Calls as the local protocol makes them (request, then reply on the
    /// other ring) between two threads, thousands of times, with sizes that
    /// wrap the two-slot rings at every offset; every byte is checked. Run
    /// under qemu by `make test-arm64` (emulation does not reorder memory the
    /// way arm64 hardware can; see README: arm64 / edge).
    #[test]
    fn many_calls_cross_intact_both_ways() {
        const CALLS: u32 = 3000;
        let (caller_side, fd) = Segment::create(4096, 2).unwrap();
        let server_side = Segment::open(fd).unwrap();
        // A hung ring fails the test instead of hanging it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let in_time = move || {
            if std::time::Instant::now() < deadline { Ok(()) } else { Err(crate::CallError::Timeout("stress".into())) }
        };
        // Sizes from 0 to three slots and a bit, varied by a small LCG.
        let size = |call: u32, salt: u32| {
            (call.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 7) as usize % (3 * 4096 + 17)
        };
        let pattern = |call: u32, salt: u32, len: usize| -> Vec<u8> {
            (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(call ^ salt) as u8).collect()
        };
        let receive = |ring: super::Ring<'_>, check: &mut dyn FnMut() -> Result<(), crate::CallError>| {
            let header = ring.wait_message(&mut *check).unwrap();
            let mut out = vec![0u8; header.len as usize];
            ring.recv_into(&mut out, check).unwrap();
            (header.status, out)
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut check = in_time;
                for call in 0..CALLS {
                    let (status, request) = receive(server_side.request(), &mut check);
                    assert_eq!(status, call, "request status of call {call}");
                    assert!(request == pattern(call, 1, size(call, 1)), "request of call {call} corrupted");
                    let reply = pattern(call, 2, size(call, 2));
                    server_side.reply().send(&reply, call + 1, &mut check, || {}).unwrap();
                }
            });
            let mut check = in_time;
            for call in 0..CALLS {
                let request = pattern(call, 1, size(call, 1));
                caller_side.request().send(&request, call, &mut check, || {}).unwrap();
                let (status, reply) = receive(caller_side.reply(), &mut check);
                assert_eq!(status, call + 1, "reply status of call {call}");
                assert!(reply == pattern(call, 2, size(call, 2)), "reply of call {call} corrupted");
            }
        });
    }

    #[test]
    fn a_stalled_send_resumes_where_it_stopped() {
        let (producer, fd) = Segment::create(4096, 2).unwrap();
        let consumer = Segment::open(fd).unwrap();
        let msg: Vec<u8> = (0..5 * 4096 + 7).map(|i| (i % 253) as u8).collect();
        let patience = Some(std::time::Duration::from_millis(5));
        // Nobody reads: two slots fill, then the send gives up.
        let sent = producer.request().send_patiently(&msg, 0, &mut ok, || {}, patience).unwrap();
        assert_eq!(sent, super::Sent::Stalled(2 * 4096));
        let received = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let ring = consumer.request();
                let header = ring.wait_message(&mut ok).unwrap();
                let mut out = vec![0u8; header.len as usize];
                ring.recv_into(&mut out, &mut ok).unwrap();
                out
            });
            producer.request().send_rest(&msg[2 * 4096..], &mut ok).unwrap();
            reader.join().unwrap()
        });
        assert_eq!(received, msg);
    }

    #[test]
    fn an_untouched_message_can_be_recovered_by_its_producer() {
        let (producer, fd) = Segment::create(4096, 4).unwrap();
        let consumer = Segment::open(fd).unwrap();
        let msg: Vec<u8> = (0..9000).map(|i| (i % 7) as u8).collect();
        let start = producer.request().head();
        producer.request().send(&msg, 0, &mut ok, || {}).unwrap();
        assert_eq!(producer.request().unconsumed_message(start), Some(msg.clone()));
        // Once the consumer read it, it is not the producer's to resend.
        let mut out = vec![0u8; msg.len()];
        consumer.request().recv_into(&mut out, &mut ok).unwrap();
        assert_eq!(producer.request().unconsumed_message(start), None);
    }

    #[test]
    fn lying_slot_lengths_are_a_protocol_error() {
        let (producer, fd) = Segment::create(4096, 2).unwrap();
        let consumer = Segment::open(fd).unwrap();
        producer.request().send(&[1, 2, 3], 0, &mut ok, || {}).unwrap();
        // The consumer asks for fewer bytes than the slot holds.
        let mut out = [0u8; 2];
        assert!(consumer.request().recv_into(&mut out, &mut ok).is_err());
    }
}
