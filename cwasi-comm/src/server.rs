//! The serving side of a function: its registration and request sources.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::in_process::InProcessRequest;
use crate::local::{LocalListener, LocalRequest};
use crate::remote::{RemoteListener, RemoteRequest};
use crate::trace::TraceContext;
use crate::{CallError, FunctionConfig, NodeRegistry, Payload, Registration};

/// A function that serves calls (`cwasi.io/serve: "true"`): from this node
/// through shared memory and from other nodes through Redis, both fed to the
/// guest's handler instances (`cwasi.io/concurrency`), which share it.
///
/// On [`FunctionServer::drain`] (the container is asked to stop) it leaves
/// the node registry, takes no new request and waits for the ones being
/// handled: requests still queued are never taken, so their callers send
/// them to another instance.
pub struct FunctionServer {
    // Field order matters: stop listening before the registration disappears.
    remote: Option<Arc<RemoteListener>>,
    local: LocalListener,
    registration: Mutex<Option<Registration>>,
    /// `true` once draining; taking a request holds this lock, so no request
    /// is taken after `drain` set it.
    draining: Mutex<bool>,
    /// Requests taken and not yet answered.
    active: Arc<AtomicUsize>,
}

/// A request being served: from this node, another node, or (for an
/// embedded peer) its caller in this process.
pub struct IncomingRequest {
    source: Source,
    /// Counted while it lives, for the server's drain (not for a request an
    /// embedded peer serves: no server waits for it).
    _active: Option<ActiveRequest>,
}

enum Source {
    Local(LocalRequest),
    Remote(RemoteRequest),
    InProcess(InProcessRequest),
}

/// Counts a request as being handled for as long as it lives.
struct ActiveRequest(Arc<AtomicUsize>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl IncomingRequest {
    pub(crate) fn in_process(request: InProcessRequest) -> Self {
        Self { source: Source::InProcess(request), _active: None }
    }

    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Local(r) => r.len(),
            Source::Remote(r) => r.len(),
            Source::InProcess(r) => r.len(),
        }
    }

    /// When the caller gives up, if it said (an embedded peer's caller
    /// does): calls made while serving it end by then.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.source {
            Source::InProcess(r) => Some(r.deadline()),
            Source::Local(_) | Source::Remote(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller's trace context, which the handler's own calls continue.
    pub fn trace(&self) -> Option<TraceContext> {
        match &self.source {
            Source::Local(r) => r.trace(),
            Source::Remote(r) => r.trace(),
            Source::InProcess(r) => Some(r.trace()),
        }
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        match &self.source {
            Source::Local(r) => r.read_into(out),
            Source::Remote(r) => r.read_into(out),
            Source::InProcess(r) => r.read_into(out),
        }
    }

    pub fn reply(self, reply: Payload<'_>) -> Result<(), CallError> {
        match self.source {
            Source::Local(r) => r.reply(reply),
            Source::Remote(r) => r.reply(reply.bytes()),
            Source::InProcess(r) => r.reply(reply),
        }
    }

    pub fn fail(self, message: &str) -> Result<(), CallError> {
        match self.source {
            Source::Local(r) => r.fail(message),
            Source::Remote(r) => r.fail(message),
            Source::InProcess(r) => r.fail(message),
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
                let remote = Arc::new(
                    RemoteListener::start(
                        url,
                        &config.namespace,
                        &config.name,
                        &consumer,
                        local.notifier(),
                        local.callers(),
                    )
                    .map_err(|e| io::Error::other(e.to_string()))?,
                );
                // Handler threads blocked in Redis come back to the doorbell.
                let interrupt = Arc::downgrade(&remote);
                local.on_caller_connected(Box::new(move || {
                    if let Some(remote) = interrupt.upgrade() {
                        remote.interrupt_readers();
                    }
                }));
                Some(remote)
            }
            None => None,
        };
        tracing::info!(
            function = %config.name,
            socket = %registration.socket_path().display(),
            "serving"
        );
        Ok(Self {
            remote,
            local,
            registration: Mutex::new(Some(registration)),
            draining: Mutex::new(false),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Blocks until the next request arrives, from either source (forever
    /// once draining). With no caller on this node connected, the thread
    /// waits in Redis itself (one wake-up per remote request); else on the
    /// local doorbell, which the remote listener also rings.
    pub fn next_request(&self) -> IncomingRequest {
        loop {
            let seen = self.local.activity();
            if let Some(request) = self.take() {
                return request;
            }
            if let Some(remote) = &self.remote
                && remote.handlers_read()
                && !self.is_draining()
            {
                // A request read after draining began is dropped unanswered:
                // it stays pending in Redis and another server claims it.
                if let Some(request) = remote.read()
                    && let Some(request) = self.admit(Source::Remote(request))
                {
                    return request;
                }
                continue;
            }
            self.local.wait_for_activity(seen, Duration::from_secs(1));
        }
    }

    fn is_draining(&self) -> bool {
        *self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<IncomingRequest> {
        let draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        if *draining {
            return None;
        }
        let source = match self.remote.as_ref().and_then(|remote| remote.take()) {
            Some(remote) => Source::Remote(remote),
            None => Source::Local(self.local.take_request()?),
        };
        Some(self.count_active(source))
    }

    /// `source` as a request being handled, unless draining began.
    fn admit(&self, source: Source) -> Option<IncomingRequest> {
        let draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        if *draining {
            return None;
        }
        Some(self.count_active(source))
    }

    fn count_active(&self, source: Source) -> IncomingRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        IncomingRequest { source, _active: Some(ActiveRequest(self.active.clone())) }
    }

    /// Stops serving gracefully: leaves the registry, takes no new request,
    /// and waits up to `patience` for the requests being handled and the
    /// replies being delivered. True when nothing was left unfinished.
    pub fn drain(&self, patience: Duration) -> bool {
        *self.draining.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(remote) = &self.remote {
            remote.interrupt_readers();
        }
        // New callers stop finding this instance.
        drop(self.registration.lock().unwrap_or_else(|e| e.into_inner()).take());
        let give_up = Instant::now() + patience;
        loop {
            let busy = self.active.load(Ordering::Acquire) + self.local.replies_in_delivery();
            if busy == 0 {
                return true;
            }
            if Instant::now() >= give_up {
                tracing::warn!(busy, "stopping with requests unfinished");
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
