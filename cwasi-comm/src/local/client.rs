//! The calling side of local mode: a pool of connections to one serving
//! function instance on this node.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::handshake;
use super::listener::{MAX_FAILURE_MESSAGE, STATUS_HANDLER_FAILED, hung_up};
use super::ring::MessageHeader;
use super::segment::{Doorbell, Segment};
use crate::trace::TraceContext;
use crate::{CallError, MAX_PAYLOAD, PendingReply};

/// Slot geometry of a connection's rings: 4 slots of 1 MiB per direction, so
/// a large payload streams with copies on both sides overlapping.
const SLOT_BYTES: usize = 256 << 10;
const SLOT_COUNT: usize = 8;

/// Calls one serving instance through shared memory.
pub struct LocalChannel {
    // Shared with every call in flight: no allocation per call.
    peer: Arc<str>,
    caller: String,
    socket_path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

struct Connection {
    socket: OwnedFd,
    segment: Segment,
    doorbell: Doorbell,
}

impl Connection {
    fn open(path: &Path, caller: &str) -> std::io::Result<Self> {
        let socket = handshake::connect_to(path)?;
        let (segment, segment_fd) = Segment::create(SLOT_BYTES, SLOT_COUNT)?;
        handshake::send_hello(&socket, caller, &segment_fd)?;
        let doorbell = Doorbell::open(handshake::recv_welcome(&socket)?)?;
        handshake::set_timeouts(&socket, None)?;
        Ok(Self { socket, segment, doorbell })
    }

    /// What every wait of a call checks: the deadline, then the peer.
    fn check(&self, peer: &str, deadline: Instant) -> Result<(), CallError> {
        if Instant::now() >= deadline {
            return Err(CallError::Timeout(format!("{peer} did not answer by the call's deadline")));
        }
        if hung_up(&self.socket) {
            return Err(CallError::PeerGone(peer.to_owned()));
        }
        Ok(())
    }

    /// After the peer vanished: was the request still untouched? Then it never
    /// reached a handler and may go to another instance.
    fn undelivered(&self, start: u32) -> Option<Vec<u8>> {
        let ring = self.segment.request();
        if ring.was_taken() {
            return None;
        }
        ring.unconsumed_message(start)
    }
}

impl LocalChannel {
    pub fn new(peer: &str, caller: &str, socket_path: PathBuf) -> Self {
        Self { peer: Arc::from(peer), caller: caller.to_owned(), socket_path, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    fn connection(&self) -> Result<Connection, CallError> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(connection);
        }
        Connection::open(&self.socket_path, &self.caller)
            .map_err(|e| CallError::Unreachable(format!("{} at {}: {e}", self.peer, self.socket_path.display())))
    }
}

impl LocalChannel {
    /// Sends `request` with the call's `trace` context; the call ends with
    /// [`CallError::Timeout`] at `deadline` at the latest.
    pub fn send(
        &self,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        let connection = self.connection()?;
        let ring = connection.segment.request();
        let start = ring.head();
        ring.set_trace(Some(trace));
        // Ordering: see `Ring::clear_taken`. The doorbell's `bump` (SeqCst)
        // comes after the first slot's release `head.publish`, so a server
        // thread that acquires the bumped value sees the request
        // (listener.rs: `activity`). A connection moves between this
        // caller's threads through the idle pool's mutex, which orders its
        // rings' positions (read Relaxed) between them.
        ring.clear_taken();
        let sent = ring
            .send(request, 0, &mut || connection.check(&self.peer, deadline), || connection.doorbell.counter().bump());
        match sent {
            Ok(()) => {}
            // Nobody took it: the caller still has the bytes; try elsewhere.
            Err(CallError::PeerGone(_)) if !ring.was_taken() => {
                return Err(CallError::Unreachable(format!("{} went away before taking the request", self.peer)));
            }
            Err(e) => return Err(e),
        }
        Ok(Box::new(LocalPending {
            connection: Some(connection),
            idle: self.idle.clone(),
            peer: self.peer.clone(),
            header: None,
            start,
            deadline,
        }))
    }
}

struct LocalPending {
    connection: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    peer: Arc<str>,
    header: Option<MessageHeader>,
    /// Where the request starts in the request ring.
    start: u32,
    deadline: Instant,
}

impl LocalPending {
    fn release(&mut self) {
        // Only a connection whose call completed cleanly is reused; any other
        // is dropped, which closes the socket and tells the server (a late
        // reply then goes nowhere).
        if let Some(connection) = self.connection.take() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(connection);
        }
    }

    fn connection(&self) -> Result<&Connection, CallError> {
        self.connection.as_ref().ok_or_else(|| CallError::Protocol("call already finished".into()))
    }

    /// Ends the call on an error; hands back a request that never reached
    /// the peer so that the router can send it elsewhere.
    fn fail(&mut self, error: CallError) -> CallError {
        let connection = self.connection.take();
        match (error, connection) {
            (CallError::PeerGone(peer), Some(connection)) => match connection.undelivered(self.start) {
                Some(request) => CallError::NotDelivered { peer, request },
                None => CallError::PeerGone(peer),
            },
            (error, _) => error,
        }
    }
}

impl PendingReply for LocalPending {
    fn wait(&mut self) -> Result<usize, CallError> {
        if let Some(header) = self.header {
            return Ok(header.len as usize);
        }
        let connection = self.connection()?;
        let (peer, deadline) = (&*self.peer, self.deadline);
        let ring = connection.segment.reply();
        let header = match ring.wait_message(&mut || connection.check(peer, deadline)) {
            Ok(header) => header,
            Err(e) => return Err(self.fail(e)),
        };
        if header.status == STATUS_HANDLER_FAILED {
            if header.len > MAX_FAILURE_MESSAGE as u64 {
                return Err(self.fail(CallError::Protocol("oversized failure message".into())));
            }
            let mut message = vec![0u8; header.len as usize];
            if let Err(e) = ring.recv_into(&mut message, &mut || connection.check(peer, deadline)) {
                return Err(self.fail(e));
            }
            self.release();
            return Err(CallError::PeerFailed(String::from_utf8_lossy(&message).into_owned()));
        }
        if header.status != 0 || header.len > MAX_PAYLOAD {
            return Err(self.fail(CallError::Protocol(format!("bad reply header {header:?}"))));
        }
        self.header = Some(header);
        Ok(header.len as usize)
    }

    fn read_into(mut self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        let len = self.wait()?;
        if out.len() != len {
            return Err(CallError::Protocol(format!("reply is {len} bytes, buffer {}", out.len())));
        }
        let connection = self.connection()?;
        let (peer, deadline) = (&*self.peer, self.deadline);
        if let Err(e) = connection.segment.reply().recv_into(out, &mut || connection.check(peer, deadline)) {
            return Err(self.fail(e));
        }
        self.release();
        Ok(())
    }
}
