//! Pages handed to a function in another process (local mode).
//!
//! Anonymous pages cannot leave their process, so a buffer a guest means to
//! give is backed, before it is written, by a memfd of its own, mapped
//! shared over its whole pages (`pages_share`, [`SharedPages::share`]).
//! Giving it ([`SharedPages::seal_given`]) maps fresh zero pages over the
//! giver's range and seals the memfd against writes, shrinking and growing;
//! the memfd then travels over the connection's socket and the receiver
//! maps it privately over its buffer ([`map_received`]).
//!
//! Why this is safe, across processes:
//! - **Nobody can change the pages any more.** The kernel grants
//!   `F_SEAL_WRITE` only when no writable shared mapping of the file is
//!   left, so the seal proves the giver's own mapping is gone; from then on
//!   neither `write` nor any mapping can change the file, and it can never
//!   shrink under a mapping (which would fault the receiver). This is what
//!   a local move costs: unmapping the giver's 100 MiB of file pages takes
//!   milliseconds, and the seal cannot come before it.
//! - **The receiver's writes stay its own.** It maps the file
//!   `MAP_PRIVATE`: a write copies the page first, privately.
//! - **The receiver trusts nothing it is sent.** It checks the seals and
//!   the exact size before mapping, maps only whole pages inside its own
//!   buffer, and a file that fails the checks ends the connection.
//! - **The giver's memory stays its own.** A share covers only whole pages
//!   inside the buffer the guest named, bounds-checked in its memory; the
//!   host forgets a share once it maps anything else over those pages.
//! - **Never a hole.** As in [`super`]: each step replaces a mapping at
//!   once.
//!
//! The pages stay charged to the giver's cgroup (which first touched them)
//! until the receiver drops its mapping. A connection carries at most one
//! set of pages not yet taken off its socket (`local/given.rs`), so a peer
//! that never takes them holds at most one payload.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};

use super::{Aside, MOVE_AT_LEAST, land, map_zero_pages, page_size, whole_pages};

/// Seals a given memfd carries: nothing can write, shrink or grow it.
fn given_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// The whole pages of a guest buffer, backed by a memfd of their own.
#[derive(Debug)]
pub struct SharedPages {
    /// Address of the first page.
    at: usize,
    len: usize,
    fd: OwnedFd,
}

/// Given pages, sealed, ready to send: `head` bytes of the buffer come
/// before them.
#[derive(Debug)]
pub struct SealedPages {
    pub head: usize,
    pub len: usize,
    pub fd: OwnedFd,
}

impl SharedPages {
    /// Backs the whole pages of `buf` with a new memfd when there are at
    /// least [`MOVE_AT_LEAST`] bytes of them (`None`: too few). They read
    /// as zeros afterwards.
    pub fn share(buf: &mut [u8]) -> io::Result<Option<SharedPages>> {
        let at = buf.as_mut_ptr() as usize;
        let page = page_size();
        let Some((head, len)) = whole_pages(at, at, buf.len(), page).filter(|&(_, len)| len >= MOVE_AT_LEAST) else {
            return Ok(None);
        };
        let fd = memfd_create(c"cwasi-given", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
        File::from(fd.try_clone()?).set_len(len as u64)?;
        let flags = libc::MAP_SHARED | libc::MAP_FIXED;
        // SAFETY: whole pages inside `buf`, which the caller holds mutably:
        // nothing else uses them; the mapping replaces exactly them.
        let mapped = unsafe {
            libc::mmap(
                (at + head) as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(SharedPages { at: at + head, len, fd }))
    }

    /// Whether these are the whole pages of `bytes`.
    pub fn covers(&self, bytes: &[u8]) -> bool {
        let at = bytes.as_ptr() as usize;
        // Pages before `bytes` wrap around to a head no buffer has.
        whole_pages(at, at, bytes.len(), page_size()) == Some((self.at.wrapping_sub(at), self.len))
    }

    /// Gives the pages of `bytes` (which these cover) up: the giver gets
    /// zero pages in their place and the memfd is sealed.
    ///
    /// # Safety
    /// `bytes` is the giver's memory, which nothing else touches meanwhile.
    pub unsafe fn seal_given(self, bytes: &mut [u8]) -> io::Result<SealedPages> {
        debug_assert!(self.covers(bytes));
        // SAFETY: our shared mapping, inside `bytes`, which no one touches;
        // replaced at once by zero pages.
        unsafe { map_zero_pages(self.at as *mut libc::c_void, self.len) }?;
        fcntl(self.fd.as_fd().as_raw_fd(), FcntlArg::F_ADD_SEALS(given_seals())).map_err(io::Error::from)?;
        Ok(SealedPages { head: self.at - bytes.as_ptr() as usize, len: self.len, fd: self.fd })
    }
}

impl SealedPages {
    /// Its bytes, read through a mapping of their own (when they cannot be
    /// mapped where they go).
    pub fn bytes(&self) -> io::Result<memmap2::Mmap> {
        // SAFETY: sealed: nobody can change or shrink the file under us.
        unsafe { memmap2::MmapOptions::new().len(self.len).map(&self.fd) }
    }
}

/// Checks that `fd`, received from a peer, is a sealed memfd of exactly
/// `len` bytes of whole pages, safe to map.
pub fn check_received(fd: &OwnedFd, len: usize) -> io::Result<()> {
    let seals = SealFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(io::Error::from)?);
    let size = File::from(fd.try_clone()?).metadata()?.len();
    let sealed = seals.contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW);
    // A memfd of huge pages would leave a mapping no later move can split.
    let plain = fstatfs(fd).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC);
    if !sealed || !plain || size != len as u64 || !len.is_multiple_of(page_size()) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "given pages are not a sealed file of their length"));
    }
    Ok(())
}

/// Maps the received pages `fd` ([`check_received`]) privately over `out`
/// (as long); copies them when `out` does not start on a page.
///
/// # Safety
/// `out` is the receiver's memory, a private mapping nothing else touches
/// meanwhile.
pub unsafe fn map_received(fd: &OwnedFd, out: &mut [u8]) -> io::Result<()> {
    let (at, len) = (out.as_mut_ptr(), out.len());
    if !(at as usize).is_multiple_of(page_size()) {
        // SAFETY: checked sealed: nobody can change or shrink the file.
        let bytes = unsafe { memmap2::MmapOptions::new().len(len).map(fd) }?;
        out.copy_from_slice(&bytes);
        return Ok(());
    }
    // Mapped at a place of its own first: refused, nothing changed.
    // SAFETY: a new private mapping of a sealed file, placed by the kernel.
    let place = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE, fd.as_raw_fd(), 0)
    };
    if place == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // The old pages of `out` go aside, to be freed off the call's path.
    // SAFETY: whole pages of the receiver's buffer, which stays mapped.
    let aside = unsafe { Aside::take(at.cast(), len) };
    // SAFETY: `place` is ours; `out` is the receiver's buffer.
    unsafe { land(place, at.cast(), len) };
    if let Some(aside) = aside {
        super::reaper::free(aside);
    }
    Ok(())
}

/// A guest's shared buffers, by address, until given (at most
/// [`SharedTable::MAX`]: the oldest is forgotten, its pages stay mapped).
#[derive(Debug, Default)]
pub struct SharedTable {
    shared: VecDeque<SharedPages>,
}

impl SharedTable {
    /// Each holds a file descriptor until given; a guest rarely has more
    /// than a few large buffers in the making.
    pub const MAX: usize = 64;

    /// Shares `buf`'s pages ([`SharedPages::share`]); false when there are
    /// too few. A buffer shared before over the same pages is forgotten.
    pub fn share(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let Some(shared) = SharedPages::share(buf)? else { return Ok(false) };
        self.forget_range(shared.at, shared.at + shared.len);
        if self.shared.len() == Self::MAX {
            self.shared.pop_front();
        }
        self.shared.push_back(shared);
        Ok(true)
    }

    /// The shared pages of `bytes`, if it was shared whole. Any other share
    /// over its pages is forgotten: they are given up with it.
    pub fn take(&mut self, bytes: &[u8]) -> Option<SharedPages> {
        let index = self.shared.iter().position(|shared| shared.covers(bytes));
        let taken = index.and_then(|index| self.shared.remove(index));
        self.forget(bytes);
        taken
    }

    /// Forgets every share over `bytes`' pages, which the host is about to
    /// map something else over (a payload received into them): giving them
    /// later must not send the memfd they no longer show.
    pub fn forget(&mut self, bytes: &[u8]) {
        let at = bytes.as_ptr() as usize;
        self.forget_range(at, at + bytes.len());
    }

    /// Forgets every share with a page in `at..end`.
    fn forget_range(&mut self, at: usize, end: usize) {
        self.shared.retain(|shared| shared.at + shared.len <= at || end <= shared.at);
    }
}

#[cfg(test)]
mod tests {
    use memmap2::MmapMut;

    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn given_pages_are_sealed_and_the_receiver_sees_them_privately() {
        let mut giver = MmapMut::map_anon(4 * MIB).unwrap();
        let mut table = SharedTable::default();
        let buf = &mut giver[100..100 + 3 * MIB];
        assert!(table.share(buf).unwrap());
        buf.fill(7);
        let shared = table.take(buf).expect("shared whole");
        assert!(table.take(buf).is_none(), "taken once");
        // SAFETY: our own anonymous map.
        let sealed = unsafe { shared.seal_given(buf) }.unwrap();
        assert_eq!((sealed.head, sealed.len), (4096 - 100, 3 * MIB - 4096));
        assert!(giver[4096..4096 + sealed.len].iter().all(|&b| b == 0), "the giver keeps zero pages");
        check_received(&sealed.fd, sealed.len).unwrap();
        assert!(check_received(&sealed.fd, sealed.len + 4096).is_err(), "the length must match");

        let mut receiver = MmapMut::map_anon(4 * MIB).unwrap();
        receiver.fill(1);
        let out = &mut receiver[4096..4096 + sealed.len];
        // SAFETY: our own anonymous map.
        unsafe { map_received(&sealed.fd, out) }.unwrap();
        assert!(out.iter().all(|&b| b == 7));
        out.fill(9);
        assert!(sealed.bytes().unwrap().iter().all(|&b| b == 7), "the receiver's writes stay private");
        assert!(receiver[..4096].iter().all(|&b| b == 1), "nothing outside the buffer changed");
    }

    #[test]
    fn an_unsealed_or_shrinkable_file_is_refused() {
        let fd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        File::from(fd.try_clone().unwrap()).set_len(2 * MIB as u64).unwrap();
        assert!(check_received(&fd, 2 * MIB).is_err());
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        assert!(check_received(&fd, 2 * MIB).is_err(), "still writable");
    }

    #[test]
    fn small_buffers_are_not_shared_and_a_new_share_replaces_an_overlapping_one() {
        let mut memory = MmapMut::map_anon(8 * MIB).unwrap();
        let mut table = SharedTable::default();
        assert!(!table.share(&mut memory[..MIB]).unwrap(), "below the move threshold");
        assert!(table.take(&memory[..MIB]).is_none());
        table.share(&mut memory[..4 * MIB]).unwrap();
        table.share(&mut memory[2 * MIB..6 * MIB]).unwrap();
        assert!(table.take(&memory[2 * MIB..6 * MIB]).is_some());
        assert!(table.take(&memory[..4 * MIB]).is_none(), "forgotten when overlapped");
        // A payload received over shared pages makes the host forget them.
        assert!(table.share(&mut memory[4 * MIB..8 * MIB]).unwrap());
        table.forget(&memory[5 * MIB..5 * MIB + 1]);
        assert!(table.take(&memory[4 * MIB..8 * MIB]).is_none());
    }
}
