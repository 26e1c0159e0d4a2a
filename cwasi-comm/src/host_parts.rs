//! What a guest's host is made of, before its engine adds the embedded
//! peers it runs: the router of the guest's calls is then built once, with
//! every transport it routes to.

use std::sync::{Arc, Weak};

use crate::remote::RedisLinks;
use crate::stats::FunctionStats;
use crate::{FunctionConfig, FunctionServer, GuestHost, NodeRegistry, PeerHosts, Router, Transport};

/// The parts of one handler instance's [`GuestHost`].
pub struct HostParts {
    function: FunctionConfig,
    registry: NodeRegistry,
    server: Option<Arc<FunctionServer>>,
    stats: Option<Arc<FunctionStats>>,
}

impl HostParts {
    /// `function` calls its peers through `registry` (and Redis), serves
    /// through `server` when it serves, and counts into `stats`.
    pub fn new(
        function: FunctionConfig,
        registry: NodeRegistry,
        server: Option<Arc<FunctionServer>>,
        stats: Option<Arc<FunctionStats>>,
    ) -> Self {
        Self { function, registry, server, stats }
    }

    /// The host of a guest that runs no embedded peers.
    pub fn into_host(self) -> GuestHost {
        let links = RedisLinks::new(self.function.redis_url.as_deref());
        self.assemble(None, links)
    }

    /// The host of a guest whose engine runs embedded peers: `make` builds
    /// them, given what makes each peer instance's own host.
    pub fn into_host_with_embedded<P: Transport + 'static>(self, make: impl FnOnce(PeerHosts) -> P) -> GuestHost {
        let links = RedisLinks::new(self.function.redis_url.as_deref());
        let embedded = Arc::new_cyclic(|me: &Weak<P>| {
            let me: Weak<dyn Transport> = me.clone();
            let (function, registry) = (self.function.clone(), self.registry.clone());
            make(PeerHosts::new(function, registry, self.stats.clone(), links.clone(), me))
        });
        self.assemble(Some(embedded), links)
    }

    fn assemble(self, embedded: Option<Arc<dyn Transport>>, links: Arc<RedisLinks>) -> GuestHost {
        let router = Arc::new(Router::new(self.function, self.registry, embedded, links));
        GuestHost::new(router, self.server, self.stats)
    }
}
