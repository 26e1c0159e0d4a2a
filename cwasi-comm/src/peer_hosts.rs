//! Hosts for embedded peers, which are functions of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::in_process::InProcessSource;
use crate::remote::RedisLinks;
use crate::stats::FunctionStats;
use crate::trace::TraceContext;
use crate::{CallError, FunctionConfig, GuestHost, Mode, NodeRegistry, Payload, PendingReply, Router, Transport};

/// Makes the [`GuestHost`] of each embedded peer instance: its own calls go
/// through a router of its own (one per peer, made at its first instance),
/// over its container's Redis links, counted in its container's stats.
pub struct PeerHosts {
    container: FunctionConfig,
    registry: NodeRegistry,
    stats: Option<Arc<FunctionStats>>,
    links: Arc<RedisLinks>,
    /// The engine's embedded peers, which hold this: weak, so that the
    /// peers' routers do not keep them alive.
    embedded: Weak<dyn Transport>,
    routers: Mutex<HashMap<String, Arc<Router>>>,
}

impl PeerHosts {
    pub(crate) fn new(
        container: FunctionConfig,
        registry: NodeRegistry,
        stats: Option<Arc<FunctionStats>>,
        links: Arc<RedisLinks>,
        embedded: Weak<dyn Transport>,
    ) -> Self {
        Self { container, registry, stats, links, embedded, routers: Mutex::default() }
    }

    /// The host of a new instance of `peer`, which serves what its callers
    /// offer through `requests`.
    pub fn host(&self, peer: &str, requests: Arc<InProcessSource>) -> GuestHost {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        let router = routers.entry(peer.to_owned()).or_insert_with(|| {
            let embedded: Arc<dyn Transport> = Arc::new(WeakEmbedded(self.embedded.clone()));
            let config = self.container.for_embedded_peer(peer);
            Arc::new(Router::new(config, self.registry.clone(), Some(embedded), self.links.clone()))
        });
        GuestHost::embedded_peer(router.clone(), requests, self.stats.clone())
    }
}

/// The engine's embedded peers as a peer's router reaches them.
struct WeakEmbedded(Weak<dyn Transport>);

impl Transport for WeakEmbedded {
    fn mode(&self) -> Mode {
        Mode::Embedded
    }

    fn send(
        &self,
        peer: &str,
        request: Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Option<Box<dyn PendingReply>>, CallError> {
        // Gone only as the container ends; an embedded peer must not turn
        // into a local or remote call meanwhile.
        match self.0.upgrade() {
            Some(embedded) => embedded.send(peer, request, deadline, trace),
            None => Err(CallError::PeerGone(format!("{peer} (its container's embedded peers have ended)"))),
        }
    }

    fn target(&self, peer: &str) -> String {
        self.0.upgrade().map(|embedded| embedded.target(peer)).unwrap_or_default()
    }
}
