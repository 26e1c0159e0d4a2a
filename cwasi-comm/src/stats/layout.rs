//! The stats file: a header about the function, then one slot per (peer,
//! mode) it called. Every counter is an `AtomicU64` that only its process
//! adds to (`Relaxed`: counters need no ordering among themselves); a slot's
//! peer and mode are written before `slots_used` publishes it (`Release`,
//! paired with the reader's `Acquire`). The fixed header fields are written
//! before the file is renamed into place, so a reader never sees them half
//! written.

use std::sync::atomic::AtomicU64;

pub const MAGIC: [u8; 8] = *b"cwasist1";
pub const NAME_LEN: usize = 64;
pub const CONTAINER_LEN: usize = 128;
/// Slots for (peer, mode) pairs; calls beyond them count in the header's
/// `unslotted_calls`.
pub const SLOTS: usize = 64;
/// Statuses are small negative numbers; their errors count at `-status`.
pub const STATUSES: usize = 16;
/// Latency buckets, two per power of two of microseconds (see [`bucket`]).
pub const BUCKETS: usize = 64;

#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub pid: u64,
    pub started_unix_ms: u64,
    pub concurrency: u64,
    pub serving: u64,
    pub namespace: [u8; NAME_LEN],
    pub function: [u8; NAME_LEN],
    pub node: [u8; NAME_LEN],
    pub container: [u8; CONTAINER_LEN],
    /// Requests this function took, answered with a reply, answered as
    /// failed, and being handled now.
    pub served: AtomicU64,
    pub served_ok: AtomicU64,
    pub served_failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub served_bytes_in: AtomicU64,
    pub served_bytes_out: AtomicU64,
    pub unslotted_calls: AtomicU64,
    pub slots_used: AtomicU64,
}

#[repr(C)]
pub struct Slot {
    pub peer: [u8; NAME_LEN],
    /// [`crate::Mode`] as 0 embedded, 1 local, 2 remote; `u64::MAX` for calls
    /// refused before a mode was chosen.
    pub mode: u64,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub errors_by_status: [AtomicU64; STATUSES],
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub latency_sum_ns: AtomicU64,
    pub buckets: [AtomicU64; BUCKETS],
}

/// The file's size: the header, then the slots.
pub const FILE_LEN: usize = size_of::<Header>() + SLOTS * size_of::<Slot>();

pub fn slot_offset(index: usize) -> usize {
    size_of::<Header>() + index * size_of::<Slot>()
}

/// The bucket of a latency: 0 below 1 µs; then two per power of two
/// ([1, 1.5) µs, [1.5, 2) µs, [2, 3) µs, [3, 4) µs, …), the last open-ended.
/// Integer steps of 250 ns keep the halves exact.
pub fn bucket(nanos: u64) -> usize {
    let quarters = nanos / 250;
    if quarters < 4 {
        return 0;
    }
    let exponent = 63 - quarters.leading_zeros() as usize;
    let upper_half = ((quarters >> (exponent - 1)) & 1) as usize;
    (1 + 2 * (exponent - 2) + upper_half).min(BUCKETS - 1)
}

/// The upper bound of a bucket in nanoseconds (`u64::MAX` for the last).
pub fn bucket_upper_ns(index: usize) -> u64 {
    if index == 0 {
        return 1000;
    }
    if index >= BUCKETS - 1 {
        return u64::MAX;
    }
    let (exponent, upper_half) = (2 + (index - 1) / 2, (index - 1) % 2);
    let base = 250u64 << exponent;
    if upper_half == 0 { base + base / 2 } else { base * 2 }
}

/// `text` in a fixed NUL-padded field (cut at the field's length).
pub fn put_name<const N: usize>(field: &mut [u8; N], text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(N)];
    field[..bytes.len()].copy_from_slice(bytes);
}

pub fn name<const N: usize>(field: &[u8; N]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(N);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_below_its_buckets_upper_bound_and_above_the_previous() {
        for nanos in [0, 999, 1000, 1499, 1500, 1999, 2000, 4_100, 1_000_000, 60_000_000_000] {
            let b = bucket(nanos);
            assert!(nanos < bucket_upper_ns(b), "{nanos} in {b}");
            if b > 0 {
                assert!(nanos >= bucket_upper_ns(b - 1), "{nanos} in {b}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!((bucket(1_000), bucket(1_600), bucket(2_000)), (1, 2, 3));
    }

    #[test]
    fn names_are_cut_to_their_field_and_read_back() {
        let mut field = [0u8; 8];
        put_name(&mut field, "echo");
        assert_eq!(name(&field), "echo");
        put_name(&mut field, "a-very-long-name");
        assert_eq!(name(&field), "a-very-l");
    }
}
