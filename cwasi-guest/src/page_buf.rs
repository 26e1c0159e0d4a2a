//! A buffer that starts on a page boundary when it is large, so that the
//! host can move its pages to another function instead of copying its bytes.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The host's pages are 4 KiB; a buffer of 2 MiB or more starts on a 2 MiB
/// boundary too, so that whole page tables can move at once. Small ones are
/// always copied (the host moves 2 MiB or more), so they are allocated as
/// any other: aligning them would only cost.
const PAGE: usize = 4 << 10;
const LARGE: usize = 2 << 20;
const SMALL: usize = 64 << 10;

/// Bytes on pages of their own (from 64 KiB), for [`crate::call_owned`] and
/// [`crate::serve_pages`]: given to a peer in this process, its whole pages
/// move (the giver's then read as zeros); received into one, they land.
pub struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl PageBuf {
    fn layout(len: usize) -> Layout {
        let align = match len {
            len if len >= LARGE => LARGE,
            len if len >= SMALL => PAGE,
            _ => 16,
        };
        Layout::from_size_align(len, align).expect("a wasm32 length fits an aligned layout")
    }

    /// `len` bytes, not yet written: `fill` must write all of them (or fail).
    pub(crate) fn filled_by<E>(len: usize, fill: impl FnOnce(*mut u8) -> Result<(), E>) -> Result<PageBuf, E> {
        let buf = Self::allocate(len, alloc::alloc);
        fill(buf.ptr.as_ptr())?;
        Ok(buf)
    }

    /// `len` bytes that may be given to a function in another container:
    /// their whole pages are shared with the host before anything is
    /// written (`pages_share`), so that they can move there; true when they
    /// were (they read zero then). Their content is unspecified until written.
    fn to_give(len: usize) -> (PageBuf, bool) {
        let buf = Self::allocate(len, alloc::alloc);
        let shared = len >= LARGE && share(buf.ptr.as_ptr(), len);
        (buf, shared)
    }

    fn allocate(len: usize, allocate: unsafe fn(Layout) -> *mut u8) -> PageBuf {
        if len == 0 {
            return PageBuf { ptr: NonNull::dangling(), len };
        }
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { allocate(layout) };
        let Some(ptr) = NonNull::new(ptr) else { alloc::handle_alloc_error(layout) };
        PageBuf { ptr, len }
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> PageBuf {
        if len < LARGE {
            return Self::allocate(len, alloc::alloc_zeroed);
        }
        let (mut buf, shared) = Self::to_give(len);
        // Shared pages read zero already (and are not touched here, so not
        // made resident). The buffer starts on 2 MiB, so whatever the host's
        // page size (at most 2 MiB), its whole pages cover every whole 2 MiB.
        let zero_from = if shared { len / LARGE * LARGE } else { 0 };
        buf[zero_from..].fill(0);
        buf
    }

    /// A copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> PageBuf {
        let (mut buf, _) = Self::to_give(bytes.len());
        // SAFETY: the buffer has room for `bytes` (its length) and is new.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.ptr.as_mut(), bytes.len()) };
        buf
    }
}

/// Asks the host to share `len` bytes at `at` (`pages_share`).
#[cfg(target_arch = "wasm32")]
fn share(at: *mut u8, len: usize) -> bool {
    // SAFETY: a buffer of ours, `len` bytes, not yet handed out. A refusal
    // only means its pages will be copied.
    unsafe { crate::raw::pages_share(crate::raw::abi(at), crate::raw::abi(len)) == 0 }
}

/// Outside WebAssembly (this crate's own tests) there is no host to ask.
#[cfg(not(target_arch = "wasm32"))]
fn share(_: *mut u8, _: usize) -> bool {
    false
}

impl Deref for PageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes, allocated and written (or dangling and empty).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated with this layout in `allocate`.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_on_their_pages() {
        for len in [SMALL, 100_000, LARGE, 3 * LARGE + 7] {
            let buf = PageBuf::from_slice(&vec![9; len]);
            let align = if len >= LARGE { LARGE } else { PAGE };
            assert_eq!(buf.as_ptr() as usize % align, 0, "{len}");
            assert!(buf.iter().all(|&b| b == 9));
        }
        assert!(PageBuf::zeroed(0).is_empty());
        assert!(PageBuf::zeroed(LARGE).iter().all(|&b| b == 0));
    }
}
