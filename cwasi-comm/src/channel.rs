use std::time::Instant;

use crate::trace::TraceContext;
use crate::{CallError, Mode, Payload};

/// One way of reaching peers: embedded (the caller's engine runs the peer),
/// local (an instance on this node) or remote (through Redis). The router
/// holds the ones a function may use and asks them in that order.
pub trait Transport: Send + Sync {
    fn mode(&self) -> Mode;

    /// Sends `request` (read straight from the caller's memory, or its pages
    /// taken when given and the peer runs in this process) to `peer`
    /// with the call's `trace` context and returns the call in flight, which
    /// ends with [`CallError::Timeout`] at `deadline` at the latest; `None`
    /// when `peer` cannot be reached this way (not shipped in the image, no
    /// instance on this node, remote mode off).
    fn send(
        &self,
        peer: &str,
        request: Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError>;

    /// Where calls to `peer` go (a module, sockets, a Redis URL without its
    /// password), for the log line of the first call.
    fn target(&self, peer: &str) -> String;
}

/// A call whose request was sent.
pub trait PendingReply: Send {
    /// Waits for the reply and returns its length.
    fn wait(&mut self) -> Result<usize, CallError>;

    /// Copies the reply into `out` (exactly the length `wait` returned) and
    /// ends the call.
    fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError>;
}
