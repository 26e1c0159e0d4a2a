use cwasi_abi::Status;

/// Why a call (or serving a request) failed; each maps to a guest [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("function {caller:?} may not call {peer:?} (not in cwasi.io/peers)")]
    Forbidden { caller: String, peer: String },
    #[error("no function {0:?} is reachable")]
    UnknownPeer(String),
    /// A registered peer could not be connected to (it may have just died).
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("peer {0:?} went away before replying")]
    PeerGone(String),
    #[error("payload of {0} bytes is larger than cwasi carries")]
    TooLarge(u64),
    #[error("the peer's handler failed: {0}")]
    PeerFailed(String),
    /// Redis refused or failed an operation, or stayed unreachable past
    /// the retry window; `context` says what was being done.
    #[error("redis: {context}: {source}")]
    Redis {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    /// The Redis settings cannot be used: a URL, a CA file.
    #[error("Redis settings: {context}{}", cause(source.as_deref()))]
    RedisSettings {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The peer's queue holds the most requests cwasi lets wait.
    #[error("{queued} requests already wait for {peer}, the most cwasi queues")]
    QueueFull { peer: String, queued: String },
    /// A failover lost the request and its body was too large to keep for
    /// sending again.
    #[error("Redis lost request {request} to {peer} (a failover?) and its body was too large to keep for a retry")]
    RequestLost { peer: String, request: String },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("function {0:?} called itself: an instance serves one request at a time, so it would wait for its own end")]
    SelfCall(String),
    /// The serving instance went away before it took the request, which
    /// comes back intact: the router sends it to another instance.
    #[error("{peer} went away before taking the request")]
    NotDelivered { peer: String, request: Vec<u8> },
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

impl CallError {
    pub fn status(&self) -> Status {
        match self {
            CallError::Forbidden { .. } => Status::Forbidden,
            CallError::UnknownPeer(_) | CallError::Unreachable(_) => Status::UnknownPeer,
            CallError::PeerGone(_) | CallError::NotDelivered { .. } => Status::PeerGone,
            CallError::SelfCall(_) => Status::SelfCall,
            CallError::TooLarge(_) => Status::TooLarge,
            CallError::PeerFailed(_) => Status::PeerFailed,
            CallError::Timeout(_) => Status::Timeout,
            CallError::Protocol(_)
            | CallError::Io(_)
            | CallError::Redis { .. }
            | CallError::RedisSettings { .. }
            | CallError::QueueFull { .. }
            | CallError::RequestLost { .. } => Status::Transport,
        }
    }
}

/// `: <cause>` when there is one, for messages that name their cause.
fn cause(source: Option<&(dyn std::error::Error + Send + Sync)>) -> String {
    source.map(|e| format!(": {e}")).unwrap_or_default()
}

impl CallError {
    /// Redis failed while doing `context`.
    pub(crate) fn redis(context: impl Into<String>, source: redis::RedisError) -> Self {
        CallError::Redis { context: context.into(), source }
    }

    /// The Redis settings are unusable: `context` says which, `source` why.
    pub(crate) fn redis_settings(
        context: impl Into<String>,
        source: impl Into<Option<Box<dyn std::error::Error + Send + Sync>>>,
    ) -> Self {
        CallError::RedisSettings { context: context.into(), source: source.into() }
    }
}

impl From<nix::errno::Errno> for CallError {
    fn from(errno: nix::errno::Errno) -> Self {
        CallError::Io(errno.into())
    }
}
