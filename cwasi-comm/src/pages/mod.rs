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
//! - **No sharing afterwards.** `mremap` *moves* a mapping: after it the
//!   pages are mapped once, in the receiver's memory, and the giver's range
//!   is a new private anonymous mapping. Nothing is mapped twice, so neither
//!   side can see a later write of the other. Pages the giver never wrote
//!   that come from a module's data image (a private file mapping) move as
//!   that mapping: a write to them copies on write, as it did before.
//! - **The memory limit holds.** Both memories keep their sizes: the
//!   receiver's buffer was grown (and charged) by the receiver, and the
//!   giver's range is as large as before, only not resident until touched.
//!   The pages stay in the same process and cgroup.
//! - **Nobody runs on them meanwhile.** The caller of [`hand_over`] makes
//!   sure that neither guest runs while their pages move (the giver waits
//!   in its call, the receiver is in the host call that receives).
//! - **Failures lose nothing.** The kernel refuses a remap before it
//!   changes anything (it checks the map count first); the bytes are then
//!   copied. The one failure after a move, no fresh pages for the giver's
//!   range, is logged and leaves that range unmapped: its guest traps when
//!   it touches it, which is its own memory only.
//!
//! Each move may split the receiver's mappings in two more places; a guest
//! that receives into ever-new places raises its own process's map count,
//! bounded by `vm.max_map_count`, past which moves fall back to copying.

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
///
/// # Safety
/// - `src` and `dst` are valid for `len` bytes each and do not overlap;
/// - the pages of both ranges belong to private mappings of this process
///   (anonymous or private file mappings, as linear memories are) that may
///   be remapped: nothing holds on to their identity;
/// - nothing else reads or writes either range while this runs.
pub unsafe fn hand_over(src: *mut u8, dst: *mut u8, len: usize) -> HandedOver {
    // SAFETY: the caller's promise, passed on.
    unsafe { hand_over_from(src, dst, len, MOVE_AT_LEAST) }
}

/// [`hand_over`] with the least bytes of whole pages worth moving given:
/// for measuring where moving starts to pay.
///
/// # Safety
/// As [`hand_over`].
pub unsafe fn hand_over_from(src: *mut u8, dst: *mut u8, len: usize, move_at_least: usize) -> HandedOver {
    let copy = |from: usize, to: usize| {
        // SAFETY: a part of the ranges the caller vouches for.
        unsafe { std::ptr::copy_nonoverlapping(src.add(from), dst.add(from), to - from) }
    };
    let Some((head, body)) =
        whole_pages(src as usize, dst as usize, len, page_size()).filter(|&(_, body)| body >= move_at_least)
    else {
        copy(0, len);
        return HandedOver { moved: 0, copied: len };
    };
    copy(0, head);
    copy(head + body, len);
    // SAFETY: page-aligned whole pages inside both ranges (`whole_pages`).
    match unsafe { move_pages(src.add(head), dst.add(head), body) } {
        Ok(()) => HandedOver { moved: body, copied: len - body },
        Err(Unmoved(e)) => {
            tracing::debug!(error = %e, bytes = body, "pages not moved, copied instead");
            copy(head, head + body);
            HandedOver { moved: 0, copied: len }
        }
    }
}

/// The kernel refused to move the pages; nothing changed.
struct Unmoved(io::Error);

/// Moves `len` bytes of whole pages from `src` to `dst` and maps zero pages
/// at `src`. The pages `dst` held are set aside first and freed on the
/// reaper thread: freeing 100 MiB of them takes milliseconds, the move
/// itself tens of microseconds.
///
/// # Safety
/// As [`hand_over`]; both addresses are page-aligned and `len` is a whole
/// number of pages.
unsafe fn move_pages(src: *mut u8, dst: *mut u8, len: usize) -> Result<(), Unmoved> {
    let (src, dst) = (src.cast::<libc::c_void>(), dst.cast::<libc::c_void>());
    // SAFETY: `dst` is page-aligned whole pages of a private mapping that
    // nothing touches now; it is a hole from here until it is filled below.
    let aside = unsafe { Aside::take(dst, len) };
    // SAFETY: page-aligned ranges of private mappings no one else touches
    // now (the caller's promise); MREMAP_FIXED replaces what is at `dst`.
    let moved = unsafe { libc::mremap(src, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dst) };
    if moved == libc::MAP_FAILED {
        let refused = io::Error::last_os_error();
        if let Some(aside) = aside {
            // SAFETY: `dst` is the hole `take` left; the old pages go back.
            unsafe { aside.put_back(dst) };
        }
        return Err(Unmoved(refused));
    }
    // SAFETY: `src` is a hole now (its pages moved); this fills exactly it.
    if unsafe { map_zero_pages(src, len) }.is_err() {
        tracing::error!(
            error = %io::Error::last_os_error(),
            bytes = len,
            "pages moved, but the giver's range could not be mapped again: its guest traps when it touches it"
        );
    }
    if let Some(aside) = aside {
        reaper::free(aside);
    }
    Ok(())
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

/// The pages a receiver's buffer held, moved out of its way to be freed.
struct Aside {
    at: usize,
    len: usize,
}

impl Aside {
    /// Moves the pages at `dst` to a new place of their own; `None` (and
    /// `dst` as it was) when the kernel refuses.
    ///
    /// # Safety
    /// As `move_pages`'s `dst`.
    unsafe fn take(dst: *mut libc::c_void, len: usize) -> Option<Aside> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new inaccessible mapping, placed by the kernel.
        let place = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if place == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: `place` is ours and empty; `dst` is the caller's to move.
        let moved = unsafe { libc::mremap(dst, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, place) };
        let aside = Aside { at: place as usize, len };
        if moved == libc::MAP_FAILED {
            aside.free();
            return None;
        }
        Some(aside)
    }

    /// Moves the pages back to `dst` (a move that failed), or else maps
    /// zero pages there: the caller copies over them next.
    ///
    /// # Safety
    /// `dst` is the hole `take` left.
    unsafe fn put_back(self, dst: *mut libc::c_void) {
        let from = self.at as *mut libc::c_void;
        // SAFETY: our pages back to the hole they came from.
        let back = unsafe { libc::mremap(from, self.len, self.len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dst) };
        if back != libc::MAP_FAILED {
            return;
        }
        // SAFETY: the hole `take` left.
        if let Err(e) = unsafe { map_zero_pages(dst, self.len) } {
            tracing::error!(error = %e, bytes = self.len, "a receiver's buffer could not be mapped again: its guest traps when it touches it");
        }
        self.free();
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
        let done = unsafe { hand_over(giver.as_mut_ptr().add(at), receiver.as_mut_ptr().add(at), len) };
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
            let done = unsafe { hand_over(giver.as_mut_ptr(), receiver.as_mut_ptr().add(to), len) };
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
        let done = unsafe { hand_over(giver.as_mut_ptr(), receiver.as_mut_ptr(), len) };
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
