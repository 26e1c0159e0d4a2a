//! Handing bytes from one linear memory to another by moving their pages
//! instead of copying them (`call_start_owned`, `serve_reply_owned`).
//!
//! A guest that *gives* a buffer up lets the host take its whole pages: the
//! host remaps them (`mremap`) to the receiver's buffer and maps fresh zero
//! pages where they were. The bytes before the giver's first whole page and
//! after its last are copied, as are payloads too small to be worth a
//! remap ([`MOVE_AT_LEAST`]) and buffers whose offsets within a page differ
//! (a page can only land on a page).
//!
//! Why this is safe (the argument the ABI promises):
//! - **Only the two buffers.** The ranges are the giver's and receiver's
//!   buffers, each bounds-checked against its own linear memory before they
//!   get here; only whole pages strictly inside both are remapped, and a
//!   page is never split, so no byte outside either buffer changes owner.
//! - **Never a hole.** Every step replaces a mapping in one system call
//!   (`MREMAP_DONTUNMAP` leaves the old range mapped, `MAP_FIXED` and
//!   `MREMAP_FIXED` replace at once), so no other thread's `mmap` can land
//!   inside a linear memory, and host code never touches an unmapped page.
//!   The giver's pages first go to a mapping of their own (one mapping,
//!   ours, whatever the giver's range spanned), which then lands on the
//!   receiver's range; should a landing fail after the kernel unmapped the
//!   range, it is refilled without replacing anything (`MAP_FIXED_NOREPLACE`;
//!   if another thread got there first, the guest's process stops).
//! - **No sharing afterwards.** The giver's pages are moved, then its range
//!   gets fresh private zero pages: nothing is mapped twice, so neither side
//!   can see a later write of the other. Pages the giver never wrote that
//!   come from a module's data image (a private file mapping) move as that
//!   mapping: a write to them copies on write, as it did before.
//! - **The memory limit holds.** Both memories keep their sizes: the
//!   receiver's buffer was grown (and charged) by the receiver, and the
//!   giver's range is as large as before, only not resident until touched.
//!   The pages stay in the same process and cgroup; the receiver's old
//!   pages wait for the reaper thread (at most [`reaper::MAX_WAITING`]).
//! - **Nobody runs on them meanwhile.** The caller of [`hand_over`] makes
//!   sure that neither guest runs while their pages move (the giver waits
//!   in its call, the receiver is in the host call that receives).
//! - **Failures lose nothing.** When the kernel refuses to take the giver's
//!   pages nothing changed, and they are copied; when it refuses to land
//!   them, they are copied from the mapping they wait in.
//!
//! Each move may split the receiver's mappings in two more places; a guest
//! that receives into ever-new places raises its own process's map count,
//! by at most two per 2 MiB of its memory, bounded by `vm.max_map_count`.

use std::io;
use std::sync::OnceLock;

mod reaper;
mod shared;

pub use shared::{SealedPages, SharedPages, SharedTable, check_received, map_received};

/// Payloads with fewer bytes of whole pages than this are copied: below it
/// the system calls and TLB flushes of a move cost more than the copy
/// (`cwasi-bench matrix` measures both by size; see the README).
pub const MOVE_AT_LEAST: usize = 2 << 20;

/// What [`hand_over`] did with the bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// Bytes whose pages moved.
    pub moved: usize,
    /// Bytes copied.
    pub copied: usize,
}

/// The size of a page of this host.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf reads a constant of the system.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096))
}

/// The whole pages of `len` bytes at `src` that can land on pages at `dst`:
/// (bytes before them, their length), or `None` when there are none.
fn whole_pages(src: usize, dst: usize, len: usize, page: usize) -> Option<(usize, usize)> {
    if src % page != dst % page {
        return None;
    }
    let head = (page - src % page) % page;
    let body = len.checked_sub(head)? / page * page;
    (body > 0).then_some((head, body))
}

/// Gives the `len` bytes at `src` to `dst`: their whole pages move when
/// there are at least [`MOVE_AT_LEAST`] bytes of them, and the rest is
/// copied. Moved pages read as zeros at `src` afterwards; copied bytes stay.
/// An error means the pages could not move: `dst`'s pages then read zero
/// and the payload may be gone.
///
/// # Safety
/// - `src` and `dst` are valid for `len` bytes each and do not overlap;
/// - the pages of both ranges belong to mappings of this process (linear
///   memories: private anonymous, private file or shared memfd mappings)
///   that may be remapped: nothing holds on to their identity;
/// - nothing else reads or writes either range while this runs.
pub unsafe fn hand_over(src: *mut u8, dst: *mut u8, len: usize) -> io::Result<HandedOver> {
    // SAFETY: the caller's promise, passed on.
    unsafe { hand_over_from(src, dst, len, MOVE_AT_LEAST) }
}

/// [`hand_over`] with the least bytes of whole pages worth moving given:
/// for measuring where moving starts to pay.
///
/// # Safety
/// As [`hand_over`].
pub unsafe fn hand_over_from(src: *mut u8, dst: *mut u8, len: usize, move_at_least: usize) -> io::Result<HandedOver> {
    let copy = |from: usize, to: usize| {
        // SAFETY: a part of the ranges the caller vouches for.
        unsafe { std::ptr::copy_nonoverlapping(src.add(from), dst.add(from), to - from) }
    };
    let whole = whole_pages(src as usize, dst as usize, len, page_size());
    let Some((head, body)) = whole.filter(|&(_, body)| body >= move_at_least && moves_supported()) else {
        copy(0, len);
        return Ok(HandedOver { moved: 0, copied: len });
    };
    copy(0, head);
    copy(head + body, len);
    // SAFETY: page-aligned whole pages inside both ranges (`whole_pages`).
    match unsafe { move_pages(src.add(head), dst.add(head), body) } {
        Ok(()) => Ok(HandedOver { moved: body, copied: len - body }),
        Err(refused) => {
            tracing::debug!(error = %refused, bytes = body, "pages not moved, copied instead");
            copy(head, head + body);
            Ok(HandedOver { moved: 0, copied: len })
        }
    }
}

/// Whether this kernel moves pages of every kind of mapping and leaves the
/// old range mapped (`MREMAP_DONTUNMAP` beyond private anonymous memory,
/// Linux 5.13); elsewhere everything is copied.
fn moves_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let len = page_size();
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        // SAFETY: a new one-page mapping of our own, placed by the kernel.
        let probe = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if probe == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: moves our probe to a place the kernel picks, leaving it mapped.
        let moved = unsafe { remap_anywhere(probe, len) };
        for at in [probe, moved].into_iter().filter(|&at| at != libc::MAP_FAILED) {
            // SAFETY: mappings this probe made and nothing else knows.
            unsafe { libc::munmap(at, len) };
        }
        moved != libc::MAP_FAILED
    })
}

/// Moves `len` bytes of whole pages from `src` to `dst` and maps zero pages
/// at `src`; an error means the kernel refused and nothing changed. The
/// pages `dst` held are set aside first and freed on the reaper thread:
/// freeing 100 MiB of them takes milliseconds, the move tens of
/// microseconds.
///
/// # Safety
/// As [`hand_over`]; both addresses are page-aligned and `len` is a whole
/// number of pages.
unsafe fn move_pages(src: *mut u8, dst: *mut u8, len: usize) -> io::Result<()> {
    let (src, dst) = (src.cast::<libc::c_void>(), dst.cast::<libc::c_void>());
    // The giver's pages go to a place of their own: then they are one
    // mapping, ours, whatever `src` spanned. Refused: nothing changed.
    // SAFETY: the giver's whole pages, which it gave up; `src` stays mapped.
    let taken = unsafe { remap_anywhere(src, len) };
    if taken == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: exactly the giver's range, replaced at once: after the move it
    // may still map its file, or a shared memfd the receiver gets next.
    let zeroed = unsafe { map_zero_pages(src, len) };
    // SAFETY: `dst`'s pages go aside; the range itself stays mapped.
    let aside = unsafe { Aside::take(dst, len) };
    match zeroed {
        // SAFETY: `taken` is ours; `dst` is the receiver's buffer.
        Ok(()) => unsafe { land(taken, dst, len) },
        Err(e) => {
            // The giver still maps what it gave: the receiver gets a copy.
            tracing::error!(error = %e, bytes = len, "a giver's range could not be mapped again; copying");
            // SAFETY: `taken` is ours, `len` long; `dst` is mapped.
            unsafe { std::ptr::copy_nonoverlapping(taken.cast::<u8>(), dst.cast::<u8>(), len) };
            // SAFETY: our mapping, which nothing else knows.
            unsafe { libc::munmap(taken, len) };
        }
    }
    if let Some(aside) = aside {
        reaper::free(aside);
    }
    Ok(())
}

/// Moves our own mapping `place` onto `dst` at once. When the kernel
/// refuses (rare: memory accounting), `dst` gets back whatever it lost, the
/// bytes are copied from `place`, and `place` is unmapped.
///
/// # Safety
/// `place` is a mapping of this module's, `len` long; `dst` is a
/// page-aligned range the caller may replace.
unsafe fn land(place: *mut libc::c_void, dst: *mut libc::c_void, len: usize) {
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: as promised by the caller; replaces `dst` at once.
    if unsafe { libc::mremap(place, len, len, flags, dst) } != libc::MAP_FAILED {
        return;
    }
    tracing::debug!(error = %io::Error::last_os_error(), bytes = len, "pages not landed, copied instead");
    // SAFETY: the caller's range.
    unsafe { refill(dst, len) };
    // SAFETY: `place` is ours and `dst` is mapped again.
    unsafe { std::ptr::copy_nonoverlapping(place.cast::<u8>(), dst.cast::<u8>(), len) };
    // SAFETY: our mapping, which nothing else knows.
    unsafe { libc::munmap(place, len) };
}

/// After a fixed move failed: the kernel may have unmapped all of `at`
/// first. Maps zero pages there again, without replacing anything another
/// thread mapped meanwhile; if one did, the linear memory is no longer
/// whole, and the guest's process stops rather than let its guest reach
/// that mapping.
///
/// # Safety
/// `at` is a page-aligned range the caller may replace.
unsafe fn refill(at: *mut libc::c_void, len: usize) {
    let mut resident = 0u8;
    // SAFETY: mincore only reports on the first page of our range.
    if unsafe { libc::mincore(at, page_size(), &mut resident) } == 0 {
        return;
    }
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    // SAFETY: fills only a hole; never replaces a mapping.
    let filled = unsafe { libc::mmap(at, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if filled != at {
        tracing::error!(bytes = len, "a linear memory lost pages to another mapping during a page move; stopping");
        std::process::abort();
    }
}

/// Maps fresh private zero pages over `len` bytes at `at`.
///
/// # Safety
/// `at` is a page-aligned range this process may replace.
unsafe fn map_zero_pages(at: *mut libc::c_void, len: usize) -> io::Result<()> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
    // SAFETY: as promised by the caller.
    let mapped = unsafe { libc::mmap(at, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if mapped == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the pages of `len` bytes at `at` to a place the kernel picks and
/// leaves `at` mapped (`MREMAP_DONTUNMAP`); the new place, or `MAP_FAILED`.
///
/// # Safety
/// `at` is a page-aligned range of this process that may be remapped.
unsafe fn remap_anywhere(at: *mut libc::c_void, len: usize) -> *mut libc::c_void {
    // The fifth argument is read by the kernel with DONTUNMAP even without
    // MREMAP_FIXED (a hint, which must be page-aligned): null, no hint.
    // SAFETY: as promised by the caller.
    unsafe {
        libc::mremap(at, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP, std::ptr::null_mut::<libc::c_void>())
    }
}

/// The pages a receiver's buffer held, moved out of its way to be freed.
struct Aside {
    at: usize,
    len: usize,
}

impl Aside {
    /// Moves the pages at `dst` to a place the kernel picks, leaving `dst`
    /// mapped (to fresh zero pages, or its file); `None` when the kernel
    /// refuses (its pages are then freed when `dst` is replaced).
    ///
    /// # Safety
    /// As `move_pages`'s `dst`.
    unsafe fn take(dst: *mut libc::c_void, len: usize) -> Option<Aside> {
        // SAFETY: the kernel picks the new place; `dst` stays mapped.
        let moved = unsafe { remap_anywhere(dst, len) };
        (moved != libc::MAP_FAILED).then_some(Aside { at: moved as usize, len })
    }

    fn free(self) {
        // SAFETY: a mapping this module made and nothing else knows.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use memmap2::{MmapMut, MmapOptions};

    use super::*;

    const MIB: usize = 1 << 20;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn whole_pages_are_those_inside_both_ranges() {
        assert_eq!(whole_pages(4096, 8192, 3 * 4096, 4096), Some((0, 3 * 4096)));
        assert_eq!(whole_pages(4196, 8292, 3 * 4096, 4096), Some((3996, 2 * 4096)));
        assert_eq!(whole_pages(4196, 8192, 3 * 4096, 4096), None, "offsets within a page differ");
        assert_eq!(whole_pages(4196, 8292, 4000, 4096), None, "no whole page");
        assert_eq!(whole_pages(4196, 8292, 3996, 4096), None, "the head only");
    }

    #[test]
    fn whole_pages_move_the_rest_is_copied_and_neither_side_sees_the_other_afterwards() {
        let len = 4 * MIB + 300;
        let mut giver = MmapMut::map_anon(8 * MIB).unwrap();
        let mut receiver = MmapMut::map_anon(8 * MIB).unwrap();
        receiver.fill(0xee);
        let bytes = pattern(len, 7);
        let at = 100;
        giver[at..at + len].copy_from_slice(&bytes);
        // SAFETY: both ranges lie in private anonymous maps owned here.
        let done = unsafe { hand_over(giver.as_mut_ptr().add(at), receiver.as_mut_ptr().add(at), len) }.unwrap();
        assert_eq!(done, HandedOver { moved: 4 * MIB - 4096, copied: 4096 + 300 });
        assert_eq!(&receiver[at..at + len], &bytes[..]);
        assert!(receiver[..at].iter().chain(&receiver[at + len..]).all(|&b| b == 0xee), "no byte outside moved");
        let first_page = 4096 - at;
        assert!(giver[at + first_page..at + first_page + done.moved].iter().all(|&b| b == 0), "moved pages read zero");
        assert_eq!(&giver[at..at + first_page], &bytes[..first_page], "copied bytes stay");
        giver[at..at + len].fill(1);
        assert_eq!(&receiver[at..at + len], &bytes[..], "the giver's later writes are not seen");
        receiver[at..at + len].fill(2);
        assert!(giver[at..at + len].iter().all(|&b| b == 1), "the receiver's writes are not seen");
    }

    #[test]
    fn small_or_misaligned_payloads_are_copied() {
        let mut giver = MmapMut::map_anon(4 * MIB).unwrap();
        let mut receiver = MmapMut::map_anon(4 * MIB).unwrap();
        let bytes = pattern(3 * MIB, 3);
        giver[..3 * MIB].copy_from_slice(&bytes);
        for (to, len) in [(0, MOVE_AT_LEAST - 1), (8, 3 * MIB)] {
            // SAFETY: both ranges lie in private anonymous maps owned here.
            let done = unsafe { hand_over(giver.as_mut_ptr(), receiver.as_mut_ptr().add(to), len) }.unwrap();
            assert_eq!(done, HandedOver { moved: 0, copied: len });
            assert_eq!(&receiver[to..to + len], &bytes[..len]);
            assert_eq!(&giver[..3 * MIB], &bytes[..], "a copy leaves the giver's bytes");
        }
    }

    /// A module's data image is a private file mapping: its pages move with
    /// what the giver wrote and what it did not.
    #[test]
    fn pages_of_a_private_file_mapping_move_as_the_giver_saw_them() {
        let len = 2 * MIB;
        let image = pattern(len, 9);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&image).unwrap();
        // SAFETY: a private mapping of a file only this test has.
        let mut giver = unsafe { MmapOptions::new().len(len).map_copy(file.as_raw_fd()) }.unwrap();
        giver[..MIB].fill(5);
        let mut receiver = MmapMut::map_anon(len).unwrap();
        // SAFETY: both ranges lie in private maps owned here.
        let done = unsafe { hand_over(giver.as_mut_ptr(), receiver.as_mut_ptr(), len) }.unwrap();
        assert_eq!(done.moved, len);
        assert!(receiver[..MIB].iter().all(|&b| b == 5));
        assert_eq!(&receiver[MIB..], &image[MIB..]);
        assert!(giver.iter().all(|&b| b == 0), "the giver's range is fresh zero pages");
        receiver.fill(6);
        let mut reread = vec![0; len];
        file.read_exact_at(&mut reread, 0).unwrap();
        assert_eq!(reread, image, "the file behind the image is never written");
    }
}
