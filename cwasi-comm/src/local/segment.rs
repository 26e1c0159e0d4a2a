//! The shared memory segment of one caller-to-server connection.
//!
//! Layout: a 4 KiB header (magic, geometry, the control block of each ring),
//! then the request ring's slots, then the reply ring's slots. The caller
//! creates it as a sealed memfd (it can never shrink under the server, which
//! would fault on access); the server maps it after checking seals and
//! geometry, and keeps its own copy of the geometry, never re-reading it.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

use super::futex::SharedCounter;
use super::ring::Ring;

pub(crate) const HEADER_BYTES: usize = 4096;
pub(crate) const MAX_SLOTS: usize = 16;
const MIN_SLOT_BYTES: usize = 4096;
const MAX_SLOT_BYTES: usize = 64 << 20;
const MAGIC: u64 = u64::from_le_bytes(*b"cwasiSEG");
/// Unchanged by the trace words in `RingMeta`: they sit in what was its
/// alignment padding, which a new memfd holds as zeros (no context), so
/// callers and servers of both layouts still talk during a rolling upgrade.
const VERSION: u32 = 2;

/// One direction's control block: producer and consumer counters (slots
/// published / consumed) and the current message's metadata.
#[repr(C)]
pub(crate) struct RingControl {
    pub(crate) head: SharedCounter,
    pub(crate) tail: SharedCounter,
    pub(crate) meta: RingMeta,
}

#[repr(C, align(64))]
pub(crate) struct RingMeta {
    pub(crate) msg_len: AtomicU64,
    pub(crate) status: AtomicU32,
    /// Request ring only: 0 while a request waits, 1 once the server took it
    /// for its handler. A caller whose server vanished uses it to tell a
    /// request that never reached anyone (safe to send elsewhere) from one
    /// that may have been handled.
    pub(crate) taken: AtomicU32,
    pub(crate) slot_len: [AtomicU32; MAX_SLOTS],
    /// Request ring only: the call's trace context (`TraceContext::to_words`;
    /// zeros: none).
    pub(crate) trace: [AtomicU64; 4],
}

#[repr(C)]
struct SegmentHeader {
    magic: AtomicU64,
    version: AtomicU32,
    slot_bytes: AtomicU32,
    slot_count: AtomicU32,
    request: RingControl,
    reply: RingControl,
    /// What the server takes besides bytes ([`CAN_TAKE_PAGES`]), set before
    /// its welcome. Zero in a new memfd, so a server that predates it offers
    /// nothing and callers copy.
    server_takes: AtomicU32,
    /// What the caller takes besides bytes, set when it made the segment;
    /// zero from a caller that predates it, so its server copies replies.
    caller_takes: AtomicU32,
}

/// Maps messages given as sealed pages (`local/given.rs`).
const CAN_TAKE_PAGES: u32 = 1;

const _: () = assert!(size_of::<SegmentHeader>() <= HEADER_BYTES);
// The layout of version 2: the trace words must fit in its padding.
const _: () = assert!(size_of::<RingMeta>() == 128);

/// A mapped segment with its validated geometry.
pub(crate) struct Segment {
    map: MmapRaw,
    slot_bytes: usize,
    slot_count: usize,
}

// SAFETY: the mapping is plain shared memory; all shared state in it is
// accessed through atomics or through ring slots whose ownership the ring
// protocol hands back and forth, so the handle may move between threads.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only exposes atomics and ring operations.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a sealed memfd segment (caller side) and returns it with its fd.
    pub(crate) fn create(slot_bytes: usize, slot_count: usize) -> io::Result<(Self, OwnedFd)> {
        assert!((MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&slot_bytes));
        assert!((1..=MAX_SLOTS).contains(&slot_count));
        let fd = memfd_create(c"cwasi-segment", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
        let len = total_len(slot_bytes, slot_count);
        let file = File::from(fd);
        file.set_len(len as u64)?;
        seal(&file)?;
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        let segment = Self { map, slot_bytes, slot_count };
        let header = segment.header();
        // Ordering: the geometry (Relaxed) is released by the `magic` store,
        // paired with the Acquire load of `magic` in `open`. (The fd reaches
        // the server through sendmsg, which orders these stores anyway.)
        header.version.store(VERSION, Ordering::Relaxed);
        header.slot_bytes.store(slot_bytes as u32, Ordering::Relaxed);
        header.slot_count.store(slot_count as u32, Ordering::Relaxed);
        header.caller_takes.store(CAN_TAKE_PAGES, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
        Ok((segment, file.into()))
    }

    /// Maps a segment received from a caller (server side), refusing anything
    /// that is not a well-formed, sealed segment.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Self> {
        let file = File::from(fd);
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io::Error::from)?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(SealFlag::F_SEAL_SHRINK) {
            return Err(invalid("segment is not sealed against shrinking"));
        }
        let len = file.metadata()?.len();
        if len < HEADER_BYTES as u64 || len > total_len(MAX_SLOT_BYTES, MAX_SLOTS) as u64 {
            return Err(invalid("segment size out of range"));
        }
        let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
        let mut segment = Self { map, slot_bytes: 0, slot_count: 0 };
        let header = segment.header();
        // Ordering: Acquire on `magic`, paired with the Release store in
        // `create`: the geometry read (Relaxed) after it is the caller's.
        if header.magic.load(Ordering::Acquire) != MAGIC || header.version.load(Ordering::Relaxed) != VERSION {
            return Err(invalid("not a cwasi segment of this version"));
        }
        let slot_bytes = header.slot_bytes.load(Ordering::Relaxed) as usize;
        let slot_count = header.slot_count.load(Ordering::Relaxed) as usize;
        if !(MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&slot_bytes)
            || !(1..=MAX_SLOTS).contains(&slot_count)
            || total_len(slot_bytes, slot_count) as u64 != len
        {
            return Err(invalid("segment geometry does not match its size"));
        }
        segment.slot_bytes = slot_bytes;
        segment.slot_count = slot_count;
        Ok(segment)
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is at least HEADER_BYTES long (checked at
        // create/open) and page-aligned, which satisfies SegmentHeader's
        // alignment; every field is an atomic, so the peer writing it
        // concurrently is not a data race.
        unsafe { &*(self.map.as_ptr() as *const SegmentHeader) }
    }

    /// Server side, before its welcome: it takes requests given as pages.
    pub(crate) fn set_server_takes_pages(&self) {
        // Ordering: Release, paired with the caller's Acquire in
        // `server_takes_pages` (the welcome's sendmsg orders them anyway).
        self.header().server_takes.fetch_or(CAN_TAKE_PAGES, Ordering::Release);
    }

    /// Caller side, after the welcome: whether the server takes requests
    /// given as pages.
    pub(crate) fn server_takes_pages(&self) -> bool {
        self.header().server_takes.load(Ordering::Acquire) & CAN_TAKE_PAGES != 0
    }

    /// Server side: whether the caller takes replies given as pages.
    pub(crate) fn caller_takes_pages(&self) -> bool {
        // Ordering: Relaxed, released with the geometry by `magic` (`open`).
        self.header().caller_takes.load(Ordering::Relaxed) & CAN_TAKE_PAGES != 0
    }

    pub(crate) fn request(&self) -> Ring<'_> {
        // SAFETY: HEADER_BYTES is inside the mapping (create/open checked the length).
        let data = unsafe { self.map.as_mut_ptr().add(HEADER_BYTES) };
        Ring::new(&self.header().request, data, self.slot_bytes, self.slot_count)
    }

    pub(crate) fn reply(&self) -> Ring<'_> {
        // SAFETY: the reply slots start right after the request slots and end
        // at the end of the mapping (total_len was checked against its size).
        let data = unsafe { self.map.as_mut_ptr().add(HEADER_BYTES + self.slot_bytes * self.slot_count) };
        Ring::new(&self.header().reply, data, self.slot_bytes, self.slot_count)
    }
}

fn total_len(slot_bytes: usize, slot_count: usize) -> usize {
    HEADER_BYTES + 2 * slot_bytes * slot_count
}

fn seal(file: &File) -> io::Result<()> {
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_fd().as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(io::Error::from)?;
    Ok(())
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}

/// A one-page shared counter a server rings callers' requests on.
pub(crate) struct Doorbell {
    map: MmapRaw,
}

// SAFETY: only an atomic counter is reached through the mapping.
unsafe impl Send for Doorbell {}
// SAFETY: as above.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    pub(crate) fn create() -> io::Result<(Self, OwnedFd)> {
        let fd = memfd_create(c"cwasi-doorbell", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(HEADER_BYTES as u64)?;
        seal(&file)?;
        let map = MmapOptions::new().len(HEADER_BYTES).map_raw(&file)?;
        Ok((Self { map }, file.into()))
    }

    pub(crate) fn open(fd: OwnedFd) -> io::Result<Self> {
        let file = File::from(fd);
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io::Error::from)?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK)
            || file.metadata()?.len() != HEADER_BYTES as u64
        {
            return Err(invalid("not a sealed cwasi doorbell"));
        }
        let map = MmapOptions::new().len(HEADER_BYTES).map_raw(&file)?;
        Ok(Self { map })
    }

    pub(crate) fn counter(&self) -> &SharedCounter {
        // SAFETY: the page is mapped for our lifetime, page-aligned, and
        // SharedCounter is made of atomics only.
        unsafe { &*(self.map.as_ptr() as *const SharedCounter) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_accepts_a_created_segment_and_rejects_others() {
        let (_segment, fd) = Segment::create(4096, 2).unwrap();
        let opened = Segment::open(fd).unwrap();
        assert_eq!((opened.slot_bytes, opened.slot_count), (4096, 2));

        // A plain (unsealed) file of the right size is refused.
        let file = tempfile::tempfile().unwrap();
        file.set_len(total_len(4096, 2) as u64).unwrap();
        assert!(Segment::open(file.into()).is_err());

        // A sealed memfd with garbage in the header is refused.
        let fd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        let file = File::from(fd);
        file.set_len(total_len(4096, 2) as u64).unwrap();
        seal(&file).unwrap();
        assert!(Segment::open(file.into()).is_err());
    }
}
