//! Hosts for embedded peers, which are functions of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::in_process::InProcessSource;
use crate::stats::FunctionStats;
use crate::{GuestHost, Router};

/// Makes the [`GuestHost`] of each embedded peer instance: its own calls go
/// through a router of its own (one per peer, made at its first instance),
/// counted in its container's stats.
///
/// The peers' routers reach the engine's embedded peers, which hold this:
/// a cycle that lives as long as the guest process, as the peers do.
pub struct PeerHosts {
    router: Arc<Router>,
    stats: Option<Arc<FunctionStats>>,
    routers: Mutex<HashMap<String, Arc<Router>>>,
}

impl PeerHosts {
    pub(crate) fn new(router: Arc<Router>, stats: Option<Arc<FunctionStats>>) -> Self {
        Self { router, stats, routers: Mutex::default() }
    }

    /// The host of a new instance of `peer`, which serves what its callers
    /// offer through `requests`.
    pub fn host(&self, peer: &str, requests: Arc<InProcessSource>) -> GuestHost {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        let router = routers.entry(peer.to_owned()).or_insert_with(|| Arc::new(self.router.for_embedded_peer(peer)));
        GuestHost::embedded_peer(router.clone(), requests, self.stats.clone())
    }
}
