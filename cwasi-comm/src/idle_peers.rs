//! The instances of embedded peers between calls: parked, by peer name, and
//! held by a call's reply until the caller has read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::in_process::{Answer, InProcessSource};
use crate::{CallError, PendingReply};

/// An engine's running instance of an embedded peer.
pub trait PeerInstance: Send + 'static {
    /// What its callers offer it.
    fn requests(&self) -> &InProcessSource;
}

/// Parked instances, ready for the next call to their peer.
pub struct IdlePeers<I> {
    parked: Arc<Mutex<HashMap<String, Vec<I>>>>,
}

impl<I> Default for IdlePeers<I> {
    fn default() -> Self {
        Self { parked: Arc::default() }
    }
}

impl<I> Clone for IdlePeers<I> {
    fn clone(&self) -> Self {
        Self { parked: self.parked.clone() }
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
