//! A message given as pages in local mode (`STATUS_PAGES`), a request or a
//! reply: the ring carries a small header and the bytes around the pages,
//! the connection's socket the pages themselves, sealed
//! (`crate::pages::SealedPages`), sent before the ring part.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::ring::Ring;
use crate::pages::SealedPages;
use crate::{CallError, MAX_PAYLOAD};

/// Status of a request given as pages.
pub(crate) const STATUS_PAGES: u32 = 2;

/// The ring part's header: `seq`, `head` and `pages`, little-endian u64s.
pub(crate) const GIVEN_HEADER: usize = 24;

/// How long a handler waits for given pages the server's poll loop has not
/// taken off the socket yet (the caller sent them before the request).
pub(crate) const GIVEN_PAGES_WAIT: Duration = Duration::from_secs(2);

/// How long a handler waits for the rest of a given request's ring part,
/// which a caller publishes whole (it fits in one slot).
pub(crate) const GIVEN_HEADER_WAIT: Duration = Duration::from_millis(100);

/// The ring part of a request given as pages: its number on the connection
/// (the pages carry it too), and less than a page on either side of them.
pub(crate) struct GivenRequest {
    pub(crate) seq: u64,
    /// Bytes before the pages.
    pub(crate) head: usize,
    pub(crate) pages: usize,
    /// The bytes before the pages, then those after them.
    pub(crate) around: Vec<u8>,
}

impl GivenRequest {
    /// The ring part of `bytes`, whose pages went as `sealed`.
    pub(crate) fn encode(seq: u64, bytes: &[u8], sealed: &SealedPages) -> Vec<u8> {
        let (before, rest) = bytes.split_at(sealed.head);
        let after = &rest[sealed.len..];
        let mut message = Vec::with_capacity(GIVEN_HEADER + before.len() + after.len());
        for word in [seq, sealed.head as u64, sealed.len as u64] {
            message.extend_from_slice(&word.to_le_bytes());
        }
        message.extend_from_slice(before);
        message.extend_from_slice(after);
        message
    }

    /// Parses a ring part; anything a well-behaved caller cannot send is
    /// refused.
    pub(crate) fn parse(message: &[u8]) -> Result<Self, CallError> {
        let bad = || CallError::Protocol("given request with a bad layout".into());
        let page = crate::pages::page_size();
        let (header, around) = message.split_at_checked(GIVEN_HEADER).ok_or_else(bad)?;
        let word = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (seq, head, pages) = (word(0), word(1), word(2));
        let head = usize::try_from(head).ok().filter(|&h| h < page && h <= around.len()).ok_or_else(bad)?;
        let pages = usize::try_from(pages).ok().filter(|&p| p > 0 && p.is_multiple_of(page)).ok_or_else(bad)?;
        let total = (around.len() as u64).checked_add(pages as u64);
        if around.len() - head >= page || total.is_none_or(|total| total > MAX_PAYLOAD) {
            return Err(bad());
        }
        Ok(Self { seq, head, pages, around: around.to_vec() })
    }

    /// Reads the ring part of the current message of `ring`, `len` bytes as
    /// its header says, and parses it.
    pub(crate) fn receive(
        ring: &Ring<'_>,
        len: u64,
        check: &mut dyn FnMut() -> Result<(), CallError>,
    ) -> Result<Self, CallError> {
        if len > Self::max_ring_part() as u64 {
            return Err(CallError::Protocol("given message with an oversized ring part".into()));
        }
        let mut message = vec![0u8; len as usize];
        ring.recv_into(&mut message, check)?;
        Self::parse(&message)
    }

    /// The whole message's length.
    pub(crate) fn len(&self) -> u64 {
        (self.around.len() + self.pages) as u64
    }

    /// The longest ring part: the header and less than a page on either
    /// side of the pages.
    pub(crate) fn max_ring_part() -> usize {
        GIVEN_HEADER + 2 * crate::pages::page_size()
    }

    /// Puts the whole message into `out` (as long): the bytes around the
    /// pages copied, the pages `fd` (checked by `check_received`) mapped.
    pub(crate) fn put_into(&self, fd: &OwnedFd, out: &mut [u8]) -> Result<(), CallError> {
        if out.len() as u64 != self.len() {
            return Err(CallError::Protocol("message length mismatch".into()));
        }
        let (before, after) = self.around.split_at(self.head);
        out[..self.head].copy_from_slice(before);
        out[self.head + self.pages..].copy_from_slice(after);
        // SAFETY: `out` is a guest's buffer in its memory, the guest waiting
        // in the host call that receives; the file was checked sealed and
        // as long as the pages.
        unsafe { crate::pages::map_received(fd, &mut out[self.head..self.head + self.pages]) }.map_err(CallError::Io)
    }

    /// The whole request, its pages read from `sealed` (to send it again,
    /// elsewhere, as bytes).
    pub(crate) fn rebuild(&self, sealed: &SealedPages) -> std::io::Result<Vec<u8>> {
        let pages = sealed.bytes()?;
        let (before, after) = self.around.split_at(self.head);
        Ok([before, &pages[..], after].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layouts_a_caller_can_send_are_accepted() {
        let header = |seq: u64, head: u64, pages: u64| {
            [seq, head, pages].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()
        };
        let page = crate::pages::page_size() as u64;
        let ok = [header(7, 3, 2 * page), vec![1, 2, 3, 4, 5]].concat();
        let given = GivenRequest::parse(&ok).unwrap();
        assert_eq!((given.seq, given.head, given.pages, given.len()), (7, 3, 2 * page as usize, 2 * page + 5));
        for bad in [
            header(7, 3, 2 * page)[..20].to_vec(),                 // short header
            [header(7, 9, 2 * page), vec![0; 5]].concat(),         // head past the bytes
            [header(7, 0, page + 1), vec![]].concat(),             // not whole pages
            [header(7, 0, 0), vec![]].concat(),                    // no pages
            [header(7, 0, page), vec![0; page as usize]].concat(), // a page after them
            [header(7, 0, u64::MAX - page + 1), vec![]].concat(),  // too large
        ] {
            assert!(GivenRequest::parse(&bad).is_err(), "{:?}", &bad[..24.min(bad.len())]);
        }
    }
}
