//! The router: resolves where a peer runs and picks the transport for a call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::local::LocalTransport;
use crate::remote::{RedisLinks, RemoteTransport};
use crate::trace::TraceContext;
use crate::{CallError, FunctionConfig, MAX_PAYLOAD, Mode, NodeRegistry, Payload, PendingReply, Transport};

/// Deadline of a call when neither the call nor `cwasi.io/timeout` nor the
/// node (`CWASI_CALL_TIMEOUT_MS`) gives one.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Routes one function's calls to its peers.
///
/// Mode choice: embedded if the peer ships in this image (its engine runs
/// it); else local if a live instance is registered on this node in the
/// same namespace; else remote. `cwasi.io/mode` can force a mode per peer.
/// Local replicas take calls in turn. A request that an instance never took
/// (it was replaced, or died first) goes to another instance; only one it
/// may have started ends in `PeerGone`.
pub struct Router {
    me: FunctionConfig,
    /// In the order they are tried: embedded (when the engine runs peers),
    /// local, remote.
    transports: Vec<Arc<dyn Transport>>,
    /// Per peer, the modes already logged at info (bit per mode).
    announced: Mutex<HashMap<String, u8>>,
}

impl Router {
    /// The router of `me`'s calls: to the peers `embedded` runs in this
    /// process, to instances on this node (`registry`), and through `links`.
    pub(crate) fn new(
        me: FunctionConfig,
        registry: NodeRegistry,
        embedded: Option<Arc<dyn Transport>>,
        links: Arc<RedisLinks>,
    ) -> Self {
        let local: Arc<dyn Transport> = LocalTransport::new(&me.name, registry);
        let remote: Arc<dyn Transport> = Arc::new(RemoteTransport::new(&me.name, &me.namespace, links));
        let transports = embedded.into_iter().chain([local, remote]).collect();
        Self { me, transports, announced: Mutex::new(HashMap::new()) }
    }

    /// The deadline of a call made now with `timeout` (else the function's).
    pub fn deadline(&self, timeout: Option<Duration>) -> Instant {
        Instant::now() + timeout.or(self.me.call_timeout).unwrap_or(DEFAULT_CALL_TIMEOUT)
    }

    /// Sends `request` to `peer` as the call `trace` and returns the mode
    /// chosen and the call in flight; it ends at `deadline` at the latest.
    pub fn call(
        &self,
        peer: &str,
        mut request: Payload<'_>,
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
        for transport in &self.transports {
            let mode = transport.mode();
            if forced.is_some_and(|forced| forced != mode) {
                continue;
            }
            if let Some(pending) = transport.send(peer, request.reborrow(), deadline, trace)? {
                self.announce(peer, mode, || transport.target(peer));
                return Ok((mode, pending));
            }
        }
        Err(CallError::UnknownPeer(format!(
            "{peer} (no instance serves it on node {} in namespace {}; mode forced to {})",
            self.me.node,
            self.me.namespace,
            forced.map(|m| m.to_string()).unwrap_or_default()
        )))
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

    impl Transport for FakeEmbedded {
        fn mode(&self) -> Mode {
            Mode::Embedded
        }

        fn send(
            &self,
            peer: &str,
            request: Payload<'_>,
            _: Instant,
            _: TraceContext,
        ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
            if peer != "sha" {
                return Ok(None);
            }
            self.calls.lock().unwrap().push((peer.to_owned(), request.bytes().to_vec()));
            Ok(Some(Box::new(Echo(request.bytes().to_vec()))))
        }

        fn target(&self, _: &str) -> String {
            "/sha.wasm".into()
        }
    }

    fn router_with(annotations: &[(&str, &str)]) -> (Router, tempfile::TempDir) {
        router_embedding(annotations, None)
    }

    fn router_embedding(
        annotations: &[(&str, &str)],
        embedded: Option<Arc<dyn Transport>>,
    ) -> (Router, tempfile::TempDir) {
        let run = tempfile::tempdir().unwrap();
        let map: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let me = FunctionConfig::from_annotations(&map, "caller", "node").unwrap();
        let registry = NodeRegistry::new(run.path(), "node", "ns");
        let links = RedisLinks::new(me.redis_url.as_deref());
        (Router::new(me, registry, embedded, links), run)
    }

    #[test]
    fn peers_outside_the_allow_list_are_forbidden() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "a,b")]);
        assert!(matches!(
            router.call("c", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::Forbidden { .. })
        ));
        let (router, _run) = router_with(&[]);
        assert!(matches!(
            router.call("a", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::Forbidden { .. })
        ));
    }

    #[test]
    fn embedded_peers_go_to_the_engine_and_a_forced_mode_bypasses_it() {
        let fake = Arc::new(FakeEmbedded::default());
        let annotations = [("cwasi.io/peers", "*"), ("cwasi.io/embed", "sha=/sha.wasm")];
        let (router, _run) = router_embedding(&annotations, Some(fake.clone()));
        let (mode, mut pending) =
            router.call("sha", Payload::Lent(b"bytes"), router.deadline(None), TraceContext::new_span(None)).unwrap();
        assert_eq!(mode, Mode::Embedded);
        assert_eq!(pending.wait().unwrap(), 5);
        let mut out = [0u8; 5];
        pending.read_into(&mut out).unwrap();
        assert_eq!(&out, b"bytes");
        assert_eq!(fake.calls.lock().unwrap().as_slice(), &[("sha".to_owned(), b"bytes".to_vec())]);

        // Forced to local: nothing serves `sha` on this node and remote mode is off.
        let annotations =
            [("cwasi.io/peers", "*"), ("cwasi.io/embed", "sha=/sha.wasm"), ("cwasi.io/mode", "sha=local")];
        let (router, _run) = router_embedding(&annotations, Some(fake.clone()));
        assert!(matches!(
            router.call("sha", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::UnknownPeer(_))
        ));
        assert_eq!(fake.calls.lock().unwrap().len(), 1, "the forced mode must not reach the engine");
    }

    #[test]
    fn a_peer_the_engine_does_not_ship_goes_on_to_the_other_transports() {
        let fake = Arc::new(FakeEmbedded::default());
        let (router, _run) = router_embedding(&[("cwasi.io/peers", "*")], Some(fake.clone()));
        // Nothing serves `other` on this node and remote mode is off.
        assert!(matches!(
            router.call("other", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::UnknownPeer(_))
        ));
        assert!(fake.calls.lock().unwrap().is_empty());
        let (mode, _) =
            router.call("sha", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)).unwrap();
        assert_eq!(mode, Mode::Embedded);
    }

    #[test]
    fn a_serving_function_calling_itself_is_refused_at_once() {
        let (router, _run) = router_with(&[("cwasi.io/peers", "*"), ("cwasi.io/serve", "true")]);
        assert!(matches!(
            router.call("caller", Payload::Lent(b"x"), router.deadline(None), TraceContext::new_span(None)),
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
            router.call("nobody", Payload::Lent(b""), router.deadline(None), TraceContext::new_span(None)),
            Err(CallError::UnknownPeer(_))
        ));
    }
}
