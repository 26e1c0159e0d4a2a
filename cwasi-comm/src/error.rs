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
    #[error("redis: {0}")]
    Redis(String),
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
            CallError::Protocol(_) | CallError::Io(_) | CallError::Redis(_) => Status::Transport,
        }
    }
}

impl From<nix::errno::Errno> for CallError {
    fn from(errno: nix::errno::Errno) -> Self {
        CallError::Io(errno.into())
    }
}
