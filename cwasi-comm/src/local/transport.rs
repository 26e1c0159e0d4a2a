//! Local mode as the router sees it: the live instances of each peer on
//! this node, taken in turn, and a request that an instance never took sent
//! on to another.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::LocalChannel;
use crate::trace::TraceContext;
use crate::{CallError, Mode, NodeRegistry, Payload, PendingReply, Transport};

/// How long a resolution of a peer's local instances is trusted: replicas
/// that start are used within this time, without a directory scan per call.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// How many times one call is sent to a fresh local instance after the
/// chosen one vanished without taking it (a rolling restart).
const LOCAL_ATTEMPTS: usize = 4;

/// Calls to the instances of peers that serve on this node.
pub struct LocalTransport {
    /// Itself, for the calls in flight that may need another instance.
    me: Weak<LocalTransport>,
    caller: String,
    registry: NodeRegistry,
    peers: Mutex<HashMap<String, LocalPeer>>,
}

/// The live local instances of one peer, taken in turn.
struct LocalPeer {
    instances: Vec<Arc<LocalChannel>>,
    next: usize,
    resolved: Instant,
}

impl LocalTransport {
    /// Calls from function `caller` to the functions `registry` lists.
    pub fn new(caller: &str, registry: NodeRegistry) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            caller: caller.to_owned(),
            registry,
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalPeer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends to a local instance; `None` when none serves `peer` on this node.
    fn send_to_one(
        &self,
        peer: &str,
        request: &mut Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        // A request given as pages that an instance never took comes back
        // as bytes: those go to the next one (the caller's are zeros now).
        let mut returned: Option<Vec<u8>> = None;
        for _ in 0..LOCAL_ATTEMPTS {
            let Some(channel) = self.next_instance(peer) else {
                return match returned {
                    Some(_) => Err(CallError::PeerGone(format!("{peer} (no other instance serves it)"))),
                    None => Ok(None),
                };
            };
            let sent = match &returned {
                Some(bytes) => channel.send(&mut Payload::Lent(bytes), deadline, trace),
                None => channel.send(request, deadline, trace),
            };
            match sent {
                Ok(pending) => return Ok(Some(pending)),
                Err(CallError::Unreachable(reason)) => {
                    tracing::info!(peer = %peer, %reason, "local instance unreachable; trying another");
                    self.forget(peer, channel.socket_path());
                }
                Err(CallError::NotDelivered { request, .. }) => {
                    tracing::info!(peer = %peer, "instance went away before taking the request; sending it to another");
                    self.forget(peer, channel.socket_path());
                    returned = Some(request);
                }
                Err(e) => return Err(e),
            }
        }
        Err(CallError::PeerGone(format!("{peer} (every local instance went away before taking the request)")))
    }

    /// The next local instance of `peer`, in turn.
    fn next_instance(&self, peer: &str) -> Option<Arc<LocalChannel>> {
        let mut peers = self.lock();
        let fresh = peers.get(peer).is_some_and(|p| p.resolved.elapsed() < RESOLVE_EVERY && !p.instances.is_empty());
        if !fresh {
            let sockets = self.registry.lookup(peer);
            if sockets.is_empty() {
                peers.remove(peer);
                return None;
            }
            let (known, next) = peers.remove(peer).map_or((Vec::new(), 0), |p| (p.instances, p.next));
            // Keep the channels (and their pooled connections) of instances still there.
            let instances = sockets
                .into_iter()
                .map(|socket| match known.iter().find(|c| c.socket_path() == socket) {
                    Some(channel) => channel.clone(),
                    None => Arc::new(LocalChannel::new(peer, &self.caller, socket)),
                })
                .collect();
            peers.insert(peer.to_owned(), LocalPeer { instances, next, resolved: Instant::now() });
        }
        let entry = peers.get_mut(peer)?;
        let channel = entry.instances[entry.next % entry.instances.len()].clone();
        entry.next = entry.next.wrapping_add(1);
        Some(channel)
    }

    /// Drops an instance that went away; the next call looks again.
    fn forget(&self, peer: &str, socket: &Path) {
        if let Some(entry) = self.lock().get_mut(peer) {
            entry.instances.retain(|c| c.socket_path() != socket);
        }
    }

    /// Forces a fresh resolution of `peer` at its next call.
    fn forget_stale(&self, peer: &str) {
        self.lock().remove(peer);
    }
}

impl Transport for LocalTransport {
    fn mode(&self) -> Mode {
        Mode::Local
    }

    fn send(
        &self,
        peer: &str,
        mut request: Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        let Some(pending) = self.send_to_one(peer, &mut request, deadline, trace)? else { return Ok(None) };
        // Made only by `new`, inside an `Arc` that lives while its router can send.
        let transport = self.me.upgrade().expect("a LocalTransport lives in an Arc");
        let routed = RoutedCall { transport, peer: peer.to_owned(), deadline, trace, inner: pending };
        Ok(Some(Box::new(routed)))
    }

    fn target(&self, peer: &str) -> String {
        let peers = self.lock();
        let sockets = peers.get(peer).map(|p| p.instances.iter().map(|c| c.socket_path().display().to_string()));
        sockets.map(|s| s.collect::<Vec<_>>().join(",")).unwrap_or_default()
    }
}

/// A local call that follows its request to another instance when the one
/// it went to vanished without taking it.
struct RoutedCall {
    transport: Arc<LocalTransport>,
    peer: String,
    deadline: Instant,
    trace: TraceContext,
    inner: Box<dyn PendingReply>,
}

impl PendingReply for RoutedCall {
    fn wait(&mut self) -> Result<usize, CallError> {
        for _ in 0..LOCAL_ATTEMPTS {
            match self.inner.wait() {
                Err(CallError::NotDelivered { peer, request }) => {
                    tracing::info!(peer = %peer, "instance went away before taking the request; sending it to another");
                    self.transport.forget_stale(&self.peer);
                    self.inner = self
                        .transport
                        .send_to_one(&self.peer, &mut Payload::Lent(&request), self.deadline, self.trace)?
                        .ok_or_else(|| CallError::PeerGone(format!("{peer} (no other instance serves it)")))?;
                }
                other => return other,
            }
        }
        Err(CallError::PeerGone(format!("{} (instances kept going away)", self.peer)))
    }

    fn read_into(mut self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        self.wait()?;
        self.inner.read_into(out)
    }
}
