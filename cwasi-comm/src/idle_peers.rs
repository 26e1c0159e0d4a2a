//! The instances of embedded peers between calls: parked, by peer name, and
//! held by a call's reply until the caller has read it; and how many of
//! each peer live at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::in_process::{Answer, InProcessSource};
use crate::{CallError, PendingReply};

/// An engine's running instance of an embedded peer.
pub trait PeerInstance: Send + 'static {
    /// What its callers offer it.
    fn requests(&self) -> &InProcessSource;
}

/// The most instances of one embedded peer that live at once, parked or
/// serving. A call to an embedded peer runs inside its caller's call, so
/// this many are only reached by peers calling each other ever deeper (a
/// cycle in their allow-lists): the call past it fails with `PeerFailed`
/// instead of making instances until the deadline.
pub const MAX_INSTANCES: usize = 64;

/// Parked instances, ready for the next call to their peer.
pub struct IdlePeers<I> {
    parked: Arc<Mutex<HashMap<String, Vec<I>>>>,
    live: LiveCounts,
}

type LiveCounts = Arc<Mutex<HashMap<String, usize>>>;

impl<I> Default for IdlePeers<I> {
    fn default() -> Self {
        Self { parked: Arc::default(), live: Arc::default() }
    }
}

impl<I> Clone for IdlePeers<I> {
    fn clone(&self) -> Self {
        Self { parked: self.parked.clone(), live: self.live.clone() }
    }
}

/// A live instance's place among its peer's [`MAX_INSTANCES`]: the engine
/// keeps it with the instance, and dropping it frees the place.
pub struct InstanceSlot {
    peer: String,
    live: LiveCounts,
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        if let Some(count) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.peer) {
            *count = count.saturating_sub(1);
        }
    }
}

impl<I> IdlePeers<I> {
    /// A place for a new instance of `peer`, if it has fewer than
    /// [`MAX_INSTANCES`].
    pub fn reserve(&self, peer: &str) -> Result<InstanceSlot, CallError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let count = live.entry(peer.to_owned()).or_default();
        if *count >= MAX_INSTANCES {
            return Err(CallError::PeerFailed(format!(
                "embedded peer {peer} already has {MAX_INSTANCES} instances (peers calling each other in a cycle?)"
            )));
        }
        *count += 1;
        Ok(InstanceSlot { peer: peer.to_owned(), live: self.live.clone() })
    }
}

impl<I: PeerInstance> IdlePeers<I> {
    pub fn take(&self, peer: &str) -> Option<I> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).get_mut(peer)?.pop()
    }

    pub fn park(&self, peer: &str, instance: I) {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).entry(peer.to_owned()).or_default().push(instance);
    }

    /// Ends a call to `peer` once `instance` parked again: its reply, read
    /// from its memory while the reply holds it, or its failure (it goes
    /// back to the pool either way).
    pub fn answer(&self, peer: &str, instance: I) -> Result<Box<dyn PendingReply>, CallError> {
        match instance.requests().withdraw() {
            Answer::Reply(len) => {
                Ok(Box::new(HeldReply { instance: Some(instance), len, peer: peer.to_owned(), idle: self.clone() }))
            }
            Answer::Failure(message) => {
                self.park(peer, instance);
                Err(CallError::PeerFailed(message))
            }
            Answer::None => {
                Err(CallError::PeerFailed(format!("embedded peer {peer} asked for the next request without answering")))
            }
        }
    }
}

/// A reply waiting in a parked instance's memory.
struct HeldReply<I: PeerInstance> {
    instance: Option<I>,
    len: usize,
    peer: String,
    idle: IdlePeers<I>,
}

impl<I: PeerInstance> PendingReply for HeldReply<I> {
    fn wait(&mut self) -> Result<usize, CallError> {
        Ok(self.len)
    }

    fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        let instance = self.instance.as_ref().ok_or_else(|| CallError::Protocol("reply already read".into()))?;
        instance.requests().read_reply(out)
    }
}

impl<I: PeerInstance> Drop for HeldReply<I> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.idle.park(&self.peer, instance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_has_at_most_max_instances_and_a_dropped_one_frees_its_place() {
        let idle: IdlePeers<()> = IdlePeers::default();
        let mut slots: Vec<InstanceSlot> = (0..MAX_INSTANCES).map(|_| idle.reserve("a").unwrap()).collect();
        assert!(matches!(idle.reserve("a"), Err(CallError::PeerFailed(_))));
        // Another peer counts on its own.
        let _b = idle.reserve("b").unwrap();
        slots.pop();
        slots.push(idle.reserve("a").unwrap());
        assert!(idle.reserve("a").is_err());
    }
}
