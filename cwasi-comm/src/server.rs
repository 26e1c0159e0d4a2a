//! The serving side of a function: its registration and request sources.

use std::io;
use std::time::Duration;

use crate::local::{LocalListener, LocalRequest};
use crate::remote::{RemoteListener, RemoteRequest};
use crate::{CallError, FunctionConfig, NodeRegistry, Registration};

/// A function that serves calls (`cwasi.io/serve: "true"`): from this node
/// through shared memory and from other nodes through Redis, both fed to the
/// one guest handler.
pub struct FunctionServer {
    // Field order matters: stop listening before the registration disappears.
    remote: Option<RemoteListener>,
    local: LocalListener,
    _registration: Registration,
}

/// A request being served.
pub enum IncomingRequest {
    Local(LocalRequest),
    Remote(RemoteRequest),
}

impl IncomingRequest {
    pub fn len(&self) -> u64 {
        match self {
            IncomingRequest::Local(r) => r.len(),
            IncomingRequest::Remote(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        match self {
            IncomingRequest::Local(r) => r.read_into(out),
            IncomingRequest::Remote(r) => r.read_into(out),
        }
    }

    pub fn reply(self, reply: &[u8]) -> Result<(), CallError> {
        match self {
            IncomingRequest::Local(r) => r.reply(reply),
            IncomingRequest::Remote(r) => r.reply(reply),
        }
    }

    pub fn fail(self, message: &str) -> Result<(), CallError> {
        match self {
            IncomingRequest::Local(r) => r.fail(message),
            IncomingRequest::Remote(r) => r.fail(message),
        }
    }
}

impl FunctionServer {
    /// Registers `config.name` on this node, listens for local callers and,
    /// when `redis_url` is set, for remote ones (Redis may come up later).
    pub fn start(config: &FunctionConfig, registry: &NodeRegistry, redis_url: Option<&str>) -> io::Result<Self> {
        let registration = registry.register(&config.name)?;
        let local = LocalListener::bind(registration.socket_path(), &config.name)?;
        let remote = match redis_url {
            Some(url) => {
                let consumer = format!("{}-{}", config.node, std::process::id());
                Some(
                    RemoteListener::start(url, &config.namespace, &config.name, &consumer, local.notifier())
                        .map_err(|e| io::Error::other(e.to_string()))?,
                )
            }
            None => None,
        };
        tracing::info!(
            function = %config.name,
            socket = %registration.socket_path().display(),
            "serving"
        );
        Ok(Self { remote, local, _registration: registration })
    }

    /// Blocks until the next request arrives, from either source.
    pub fn next_request(&self) -> IncomingRequest {
        loop {
            let seen = self.local.activity();
            if let Some(remote) = self.remote.as_ref().and_then(RemoteListener::take) {
                return IncomingRequest::Remote(remote);
            }
            if let Some(local) = self.local.take_request() {
                return IncomingRequest::Local(local);
            }
            self.local.wait_for_activity(seen, Duration::from_secs(1));
        }
    }
}
