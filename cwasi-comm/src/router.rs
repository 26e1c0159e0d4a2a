//! The router: resolves where a peer runs and picks the channel for a call.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::local::LocalChannel;
use crate::remote::{LinkPool, RemoteChannel};
use crate::trace::TraceContext;
use crate::{CallError, Channel, EmbeddedPeers, FunctionConfig, MAX_PAYLOAD, Mode, NodeRegistry, PendingReply};

/// Deadline of a call when neither the call nor `cwasi.io/timeout` nor the
/// node (`CWASI_CALL_TIMEOUT_MS`) gives one.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a resolution of a peer's local instances is trusted: replicas
/// that start are used within this time, without a directory scan per call.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// How many times one call is sent to a fresh local instance after the
/// chosen one vanished without taking it (a rolling restart).
const LOCAL_ATTEMPTS: usize = 4;

/// Routes one function's calls to its peers.
///
/// Mode choice: embedded if the peer ships in this image; else local if a
/// live instance is registered on this node in the same namespace; else
/// remote. `cwasi.io/mode` can force a mode per peer. Local replicas take
/// calls in turn. A request that an instance never took (it was replaced,
/// or died first) goes to another instance; only one it may have started
/// ends in `PeerGone`.
pub struct Router {
    me: FunctionConfig,
    registry: NodeRegistry,
    local: Mutex<HashMap<String, LocalPeer>>,
    embedded: OnceLock<Arc<dyn EmbeddedPeers>>,
    remote: Mutex<HashMap<String, Arc<RemoteChannel>>>,
    redis: OnceLock<Arc<LinkPool>>,
    /// Per peer, the modes already logged at info (bit per mode).
    announced: Mutex<HashMap<String, u8>>,
}

/// The live local instances of one peer, taken in turn.
struct LocalPeer {
    instances: Vec<Arc<LocalChannel>>,
    next: usize,
    resolved: Instant,
}

impl Router {
    pub fn new(me: FunctionConfig, registry: NodeRegistry) -> Self {
        Self {
            me,
            registry,
            local: Mutex::new(HashMap::new()),
            embedded: OnceLock::new(),
            remote: Mutex::new(HashMap::new()),
            redis: OnceLock::new(),
            announced: Mutex::new(HashMap::new()),
        }
    }

    /// The engine hands over the peers it runs in-process (once, at start).
    pub fn attach_embedded(&self, peers: Arc<dyn EmbeddedPeers>) {
        if self.embedded.set(peers).is_err() {
            tracing::warn!("embedded peers attached twice; keeping the first");
        }
    }

    /// The router of embedded `peer`'s own calls: its name and allow-list
    /// (`cwasi.io/embed.<peer>.peers`), this function's node, registry,
    /// embedded peers and Redis links.
    pub fn for_embedded_peer(&self, peer: &str) -> Router {
        let router = Router::new(self.me.for_embedded_peer(peer), self.registry.clone());
        if let Some(embedded) = self.embedded.get() {
            let _ = router.embedded.set(embedded.clone());
        }
        if let Some(redis) = self.redis.get() {
            let _ = router.redis.set(redis.clone());
        }
        router
    }

    /// The deadline of a call made now with `timeout` (else the function's).
    pub fn deadline(&self, timeout: Option<Duration>) -> Instant {
        Instant::now() + timeout.or(self.me.call_timeout).unwrap_or(DEFAULT_CALL_TIMEOUT)
    }

    /// Sends `request` to `peer` as the call `trace` and returns the mode
    /// chosen and the call in flight; it ends at `deadline` at the latest.
    pub fn call(
        self: &Arc<Self>,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<(Mode, Box<dyn PendingReply>), CallError> {
        if !self.me.peers.allows(peer) {
            return Err(CallError::Forbidden { caller: self.me.name.clone(), peer: peer.to_owned() });
        }
        if self.me.serve && peer == self.me.name {
            return Err(CallError::SelfCall(peer.to_owned()));
        }
        if request.len() as u64 > MAX_PAYLOAD {
            return Err(CallError::TooLarge(request.len() as u64));
        }
        let forced = self.me.forced_modes.get(peer).copied();
        if matches!(forced, None | Some(Mode::Embedded))
            && let Some(module) = self.me.embed.get(peer)
        {
            let embedded = self
                .embedded
                .get()
                .ok_or_else(|| CallError::UnknownPeer(format!("{peer} (the engine runs no embedded peers)")))?;
            let pending = embedded.call(peer, request, deadline, trace)?;
            self.announce(peer, Mode::Embedded, || module.display().to_string());
            return Ok((Mode::Embedded, pending));
        }
        if matches!(forced, None | Some(Mode::Local))
            && let Some(pending) = self.call_local(peer, request, deadline, trace, LOCAL_ATTEMPTS)?
        {
            let routed = RoutedCall { router: self.clone(), peer: peer.to_owned(), deadline, trace, inner: pending };
            return Ok((Mode::Local, Box::new(routed)));
        }
        if matches!(forced, None | Some(Mode::Remote))
            && let Some(link) = self.redis_link()?
        {
            let channel = self.remote_channel(peer, &link)?;
            let pending = channel.send(request, deadline, trace)?;
            self.announce(peer, Mode::Remote, || link.url().to_owned());
            return Ok((Mode::Remote, pending));
        }
        Err(CallError::UnknownPeer(format!(
            "{peer} (no instance serves it on node {} in namespace {}; mode forced to {})",
            self.me.node,
            self.me.namespace,
            forced.map(|m| m.to_string()).unwrap_or_default()
        )))
    }

    /// Sends to a local instance; `None` when none serves `peer` on this node.
    fn call_local(
        &self,
        peer: &str,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
        attempts: usize,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        for _ in 0..attempts {
            let Some(channel) = self.local_channel(peer) else { return Ok(None) };
            match channel.send(request, deadline, trace) {
                Ok(pending) => {
                    self.announce(peer, Mode::Local, || channel.socket_path().display().to_string());
                    return Ok(Some(pending));
                }
                Err(CallError::Unreachable(reason)) => {
                    tracing::info!(peer = %peer, %reason, "local instance unreachable; trying another");
                    self.forget_local(peer, channel.socket_path());
                }
                Err(e) => return Err(e),
            }
        }
        Err(CallError::PeerGone(format!("{peer} (every local instance went away before taking the request)")))
    }

    /// The shared Redis links, or `None` when remote mode is off (no URL).
    fn redis_link(&self) -> Result<Option<Arc<LinkPool>>, CallError> {
        let Some(url) = self.me.redis_url.as_deref() else {
            return Ok(None);
        };
        if let Some(pool) = self.redis.get() {
            return Ok(Some(pool.clone()));
        }
        // A URL that cannot be used fails every call alike, with its cause
        // (reading it again costs nothing next to the call it fails).
        let pool = LinkPool::new(url)?;
        Ok(Some(self.redis.get_or_init(|| pool).clone()))
    }

    fn remote_channel(&self, peer: &str, link: &Arc<LinkPool>) -> Result<Arc<RemoteChannel>, CallError> {
        let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = remote.get(peer) {
            return Ok(channel.clone());
        }
        let channel = Arc::new(RemoteChannel::open(peer, &self.me.name, &self.me.namespace, link.clone())?);
        remote.insert(peer.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The next local instance of `peer`, in turn.
    fn local_channel(&self, peer: &str) -> Option<Arc<LocalChannel>> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = local.get(peer).is_some_and(|p| p.resolved.elapsed() < RESOLVE_EVERY && !p.instances.is_empty());
        if !fresh {
            let sockets = self.registry.lookup(peer);
            if sockets.is_empty() {
                local.remove(peer);
                return None;
            }
            let (known, next) = local.remove(peer).map_or((Vec::new(), 0), |p| (p.instances, p.next));
            // Keep the channels (and their pooled connections) of instances still there.
            let instances = sockets
                .into_iter()
                .map(|socket| match known.iter().find(|c| c.socket_path() == socket) {
                    Some(channel) => channel.clone(),
                    None => Arc::new(LocalChannel::new(peer, &self.me.name, socket)),
                })
                .collect();
            local.insert(peer.to_owned(), LocalPeer { instances, next, resolved: Instant::now() });
        }
        let entry = local.get_mut(peer)?;
        let channel = entry.instances[entry.next % entry.instances.len()].clone();
        entry.next = entry.next.wrapping_add(1);
        Some(channel)
    }

    /// Drops an instance that went away; the next call looks again.
    fn forget_local(&self, peer: &str, socket: &Path) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = local.get_mut(peer) {
            entry.instances.retain(|c| c.socket_path() != socket);
        }
    }

    /// Logs the first call to each peer in each mode.
    /// `target` says where the call goes (socket, module, Redis URL without password).
    fn announce(&self, peer: &str, mode: Mode, target: impl FnOnce() -> String) {
        let bit = 1u8 << mode as u8;
        let first = {
            let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            // Look up by &str: no allocation once a peer is known.
            match announced.get_mut(peer) {
                Some(modes) if *modes & bit != 0 => false,
                Some(modes) => {
                    *modes |= bit;
                    true
                }
                None => {
                    announced.insert(peer.to_owned(), bit);
                    true
                }
            }
        };
        // Every call is logged at debug, with its outcome, by `GuestHost`.
        if first {
            tracing::info!(peer = %peer, mode = %mode, target = %target(), "calling peer");
        }
    }
}

/// A local call that follows its request to another instance when the one
/// it went to vanished without taking it.
struct RoutedCall {
    router: Arc<Router>,
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
                    self.router.forget_stale(&self.peer);
                    self.inner = self
                        .router
                        .call_local(&self.peer, &request, self.deadline, self.trace, LOCAL_ATTEMPTS)?
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

impl Router {
    /// Forces a fresh resolution of `peer` at its next call.
    fn forget_stale(&self, peer: &str) {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Echoes requests; records what it was asked.
    #[derive(Default)]
    struct FakeEmbedded {
        calls: Mutex<Vec<(String, Vec<u8>)>>,
    }

    struct Echo(Vec<u8>);

    impl PendingReply for Echo {
        fn wait(&mut self) -> Result<usize, CallError> {
            Ok(self.0.len())
        }
        fn read_into(self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
            out.copy_from_slice(&self.0);
            Ok(())
        }
    }

    impl EmbeddedPeers for FakeEmbedded {
        fn call(
            &self,
            peer: &str,
            request: &[u8],
            _: Instant,
            _: TraceContext,
        ) -> Result<Box<dyn PendingReply>, CallError> {
            self.calls.lock().unwrap().push((peer.to_owned(), request.to_vec()));
            Ok(Box::new(Echo(request.to_vec())))
        }
    }

    fn router_with(annotations: &[(&str, &str)]) -> (Arc<Router>, tempfile::TempDir) {
        let run = tempfile::tempdir().unwrap();
        let map: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let me = FunctionConfig::from_annotations(&map, "caller", "node").unwrap();
        let registry = NodeRegistry::new(run.path(), "node", "ns");
        (Arc::new(Router::new(me, registry)), run)
    }

    #[test]
    fn peers_outside_the_allow_list_are_forbidden() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "a,b")]);
        assert!(matches!(
            router.call("c", b"x", router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::Forbidden { .. })
        ));
        let (router, _run) = router_with(&[]);
        assert!(matches!(
            router.call("a", b"x", router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::Forbidden { .. })
        ));
    }

    #[test]
    fn embedded_peers_go_to_the_engine_and_a_forced_mode_bypasses_it() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "*"), ("cwasi.io/embed", "sha=/sha.wasm")]);
        let fake = Arc::new(FakeEmbedded::default());
        router.attach_embedded(fake.clone());
        let (mode, mut pending) =
            router.call("sha", b"bytes", router.deadline(None), TraceContext::new_span(None)).unwrap();
        assert_eq!(mode, Mode::Embedded);
        assert_eq!(pending.wait().unwrap(), 5);
        let mut out = [0u8; 5];
        pending.read_into(&mut out).unwrap();
        assert_eq!(&out, b"bytes");
        assert_eq!(fake.calls.lock().unwrap().as_slice(), &[("sha".to_owned(), b"bytes".to_vec())]);

        // Forced to local: nothing serves `sha` on this node and remote mode is off.
        let (router, _run) = router_with(&[
            ("cwasi.io/peers", "*"),
            ("cwasi.io/embed", "sha=/sha.wasm"),
            ("cwasi.io/mode", "sha=local"),
        ]);
        router.attach_embedded(fake.clone());
        assert!(matches!(
            router.call("sha", b"x", router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::UnknownPeer(_))
        ));
        assert_eq!(fake.calls.lock().unwrap().len(), 1, "the forced mode must not reach the engine");
    }

    #[test]
    fn a_serving_function_calling_itself_is_refused_at_once() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "*"), ("cwasi.io/serve", "true")]);
        assert!(matches!(
            router.call("caller", b"x", router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::SelfCall(_))
        ));
    }

    #[test]
    fn the_deadline_is_the_calls_else_the_functions() {
        let (router, _run) = router_with(&[("cwasi.io/timeout", "2s")]);
        let now = Instant::now();
        let function_default = router.deadline(None) - now;
        assert!(function_default >= Duration::from_secs(2) && function_default < Duration::from_secs(3));
        let per_call = router.deadline(Some(Duration::from_millis(10))) - now;
        assert!(per_call < Duration::from_secs(1));
    }

    #[test]
    fn an_unknown_peer_without_remote_mode_is_unknown() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "*")]);
        assert!(matches!(
            router.call("nobody", b"", router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::UnknownPeer(_))
        ));
    }
}
