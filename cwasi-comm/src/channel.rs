use std::time::Instant;

use crate::trace::TraceContext;
use crate::{CallError, Mode};

/// One way of reaching one peer. The router picks a channel per call.
pub trait Channel: Send + Sync {
    fn mode(&self) -> Mode;

    /// Sends `request` (read straight from the caller's memory) with the
    /// call's `trace` context and returns the call in flight, which ends with
    /// [`CallError::Timeout`] at `deadline`.
    fn send(&self, request: &[u8], deadline: Instant, trace: TraceContext) -> Result<Box<dyn PendingReply>, CallError>;
}

/// A call whose request was sent.
pub trait PendingReply: Send {
    /// Waits for the reply and returns its length.
    fn wait(&mut self) -> Result<usize, CallError>;

    /// Copies the reply into `out` (exactly the length `wait` returned) and
    /// ends the call.
    fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError>;
}

/// Peers shipped in the caller's image (`cwasi.io/embed`), run by the
/// caller's engine. The engine implements this; the router only picks it.
pub trait EmbeddedPeers: Send + Sync {
    /// Runs `peer`'s handler on `request` (read straight from the caller's
    /// memory) as the call `trace`, and returns the call, whose reply is read
    /// straight from the peer's memory. It ends with [`CallError::Timeout`]
    /// when the peer still runs at `deadline`; the peer's own calls end by
    /// then too and continue `trace`.
    fn call(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError>;
}
