//! Remote mode as the router sees it: one channel per peer, over the Redis
//! links of the container, opened at the first remote call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::{LinkPool, RemoteChannel};
use crate::trace::TraceContext;
use crate::{CallError, Mode, Payload, PendingReply, Transport};

/// A container's connections to its Redis, opened at the first remote call
/// and shared by the guest's calls and its embedded peers'.
pub struct RedisLinks {
    url: Option<String>,
    pool: OnceLock<Arc<LinkPool>>,
}

impl RedisLinks {
    /// Links to `url`; `None`: remote mode is off.
    pub fn new(url: Option<&str>) -> Arc<Self> {
        Arc::new(Self { url: url.map(str::to_owned), pool: OnceLock::new() })
    }

    /// The pool, or `None` when remote mode is off.
    fn pool(&self) -> Result<Option<Arc<LinkPool>>, CallError> {
        let Some(url) = self.url.as_deref() else { return Ok(None) };
        if let Some(pool) = self.pool.get() {
            return Ok(Some(pool.clone()));
        }
        // A URL that cannot be used fails every call alike, with its cause
        // (reading it again costs nothing next to the call it fails).
        let pool = LinkPool::new(url)?;
        Ok(Some(self.pool.get_or_init(|| pool).clone()))
    }
}

/// Calls from one function to peers on other nodes.
pub struct RemoteTransport {
    caller: String,
    namespace: String,
    links: Arc<RedisLinks>,
    channels: Mutex<HashMap<String, Arc<RemoteChannel>>>,
}

impl RemoteTransport {
    pub fn new(caller: &str, namespace: &str, links: Arc<RedisLinks>) -> Self {
        Self { caller: caller.to_owned(), namespace: namespace.to_owned(), links, channels: Mutex::default() }
    }

    fn channel(&self, peer: &str, pool: Arc<LinkPool>) -> Result<Arc<RemoteChannel>, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(peer) {
            return Ok(channel.clone());
        }
        let channel = Arc::new(RemoteChannel::open(peer, &self.caller, &self.namespace, pool)?);
        channels.insert(peer.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl Transport for RemoteTransport {
    fn mode(&self) -> Mode {
        Mode::Remote
    }

    fn send(
        &self,
        peer: &str,
        request: Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        let Some(pool) = self.links.pool()? else { return Ok(None) };
        self.channel(peer, pool)?.send(request.bytes(), deadline, trace).map(Some)
    }

    fn target(&self, _peer: &str) -> String {
        self.links.pool.get().map(|pool| pool.url()).unwrap_or_default()
    }
}
