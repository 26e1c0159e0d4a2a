//! The serving side of a function: its registration and request sources.

use std::io;
use std::time::Duration;

use crate::local::{LocalListener, LocalRequest};
use crate::{CallError, FunctionConfig, NodeRegistry, Registration};

/// A function that serves calls (`cwasi.io/serve: "true"`).
pub struct FunctionServer {
    // Field order matters: stop listening before the registration disappears.
    local: LocalListener,
    _registration: Registration,
}

/// A request being served.
pub struct IncomingRequest {
    local: LocalRequest,
}

impl IncomingRequest {
    pub fn len(&self) -> u64 {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    pub fn caller(&self) -> &str {
        self.local.caller()
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        self.local.read_into(out)
    }

    pub fn reply(self, reply: &[u8]) -> Result<(), CallError> {
        self.local.reply(reply)
    }

    pub fn fail(self, message: &str) -> Result<(), CallError> {
        self.local.fail(message)
    }
}

impl FunctionServer {
    /// Registers `config.name` on this node and starts listening.
    pub fn start(config: &FunctionConfig, registry: &NodeRegistry) -> io::Result<Self> {
        let registration = registry.register(&config.name)?;
        let local = LocalListener::bind(registration.socket_path(), &config.name)?;
        tracing::info!(
            function = %config.name,
            socket = %registration.socket_path().display(),
            "serving"
        );
        Ok(Self { local, _registration: registration })
    }

    /// Blocks until the next request arrives.
    pub fn next_request(&self) -> IncomingRequest {
        loop {
            if let Some(local) = self.local.next_request(Duration::from_secs(1)) {
                return IncomingRequest { local };
            }
        }
    }
}
