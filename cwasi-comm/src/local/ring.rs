//! A single-producer single-consumer stream of messages through a ring of
//! fixed-size slots in shared memory.
//!
//! The producer copies a message chunk by chunk into free slots and
//! publishes each one; the consumer copies each published slot out and
//! frees it. With more than one slot, both copies of a large message run at
//! the same time. Everything read from shared memory is checked: the peer
//! may be buggy or hostile, and must never make us read or write outside
//! the ring.

use std::ptr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::segment::RingControl;
use crate::CallError;

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
        mut after_first_slot: impl FnMut(),
    ) -> Result<(), CallError> {
        let n = self.slot_count as u32;
        let mut head = self.ctl.head.value.load(Ordering::Relaxed);
        self.ctl.meta.msg_len.store(msg.len() as u64, Ordering::Relaxed);
        self.ctl.meta.status.store(status, Ordering::Relaxed);
        let mut chunks = msg.chunks(self.slot_bytes);
        let mut first = true;
        loop {
            let chunk: &[u8] = match chunks.next() {
                Some(chunk) => chunk,
                // An empty message still takes one (empty) slot.
                None if first => &[],
                None => return Ok(()),
            };
            self.ctl
                .tail
                .wait_until(|tail| head.wrapping_sub(tail) < n, LIVENESS_TICK, &mut *check)?;
            let slot = (head % n) as usize;
            // SAFETY: slot < slot_count and chunk.len() <= slot_bytes, so the
            // destination lies inside this ring's slots (geometry validated
            // when the segment was mapped). The slot is free: the consumer
            // reads it only after `head` is published below. `chunk` is our
            // own memory, never part of the mapping.
            unsafe {
                ptr::copy_nonoverlapping(chunk.as_ptr(), self.data.add(slot * self.slot_bytes), chunk.len());
            }
            self.ctl.meta.slot_len[slot].store(chunk.len() as u32, Ordering::Relaxed);
            head = head.wrapping_add(1);
            self.ctl.head.publish(head);
            if first {
                after_first_slot();
                first = false;
            }
        }
    }

    /// True when a message (or its first slot) is waiting.
    pub(crate) fn has_message(&self) -> bool {
        self.ctl.head.value.load(Ordering::Acquire) != self.ctl.tail.value.load(Ordering::Relaxed)
    }

    /// Waits for the next message and returns its header without consuming it.
    pub(crate) fn wait_message(
        &self,
        check: &mut dyn FnMut() -> Result<(), CallError>,
    ) -> Result<MessageHeader, CallError> {
        let tail = self.ctl.tail.value.load(Ordering::Relaxed);
        self.ctl.head.wait_until(|head| head != tail, LIVENESS_TICK, &mut *check)?;
        Ok(MessageHeader {
            len: self.ctl.meta.msg_len.load(Ordering::Relaxed),
            status: self.ctl.meta.status.load(Ordering::Relaxed),
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
        let mut tail = self.ctl.tail.value.load(Ordering::Relaxed);
        let mut offset = 0usize;
        loop {
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
