//! A request or reply as a guest hands it to the host.

use crate::pages::SharedPages;

/// Bytes in a guest's memory, and whether the guest keeps them.
pub enum Payload<'a> {
    /// The guest keeps its bytes: they are copied.
    Lent(&'a [u8]),
    /// The guest gave its bytes up (`call_start_owned`, `serve_reply_owned`):
    /// a receiver in the same process may take their whole pages
    /// ([`crate::pages`]), which then read as zeros here; one in another
    /// process may take `pages`, when the guest shared them beforehand.
    Given { bytes: &'a mut [u8], pages: &'a mut Option<SharedPages> },
}

impl Payload<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Lent(bytes) => bytes,
            Payload::Given { bytes, .. } => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The same payload, borrowed again (for one of several tries).
    pub fn reborrow(&mut self) -> Payload<'_> {
        match self {
            Payload::Lent(bytes) => Payload::Lent(bytes),
            Payload::Given { bytes, pages } => Payload::Given { bytes, pages },
        }
    }
}
