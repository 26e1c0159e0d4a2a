//! The calling side of local mode: a pool of connections to one serving
//! function instance on this node.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::given::{GivenRequest, STATUS_PAGES};
use super::handshake;
use super::listener::{MAX_FAILURE_MESSAGE, STATUS_HANDLER_FAILED, hung_up};
use super::ring::MessageHeader;
use super::segment::{Doorbell, Segment};
use crate::pages::{SealedPages, SharedPages};
use crate::trace::TraceContext;
use crate::{CallError, MAX_PAYLOAD, Payload, PendingReply};

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
    /// Requests given as pages on this connection so far (their numbers).
    given: u64,
}

impl Connection {
    fn open(path: &Path, caller: &str) -> std::io::Result<Self> {
        let socket = handshake::connect_to(path)?;
        let (segment, segment_fd) = Segment::create(SLOT_BYTES, SLOT_COUNT)?;
        handshake::send_hello(&socket, caller, &segment_fd)?;
        let doorbell = Doorbell::open(handshake::recv_welcome(&socket)?)?;
        handshake::set_timeouts(&socket, None)?;
        Ok(Self { socket, segment, doorbell, given: 0 })
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
    /// [`CallError::Timeout`] at `deadline` at the latest. A request given
    /// with shared pages goes as pages to a server that takes them.
    pub fn send(
        &self,
        request: &mut Payload<'_>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        let connection = self.connection()?;
        // Pages go only on a live connection whose server took all sent
        // before: a stale pooled connection then fails before anything is
        // given up, and the request goes elsewhere as it is.
        // The payload is looked at first: a lent one costs no system call.
        if let Payload::Given { bytes, pages } = request
            && pages.is_some()
            && connection.segment.server_takes_pages()
            && !hung_up(&connection.socket)
            && handshake::nothing_unread(&connection.socket)
            && let Some(shared) = pages.take()
        {
            return self.send_given(connection, bytes, shared, deadline, trace);
        }
        let request = request.bytes();
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
        Ok(self.pending(connection, start, deadline, None))
    }

    /// The call whose request `connection` carries from `start` on.
    fn pending(
        &self,
        connection: Connection,
        start: u32,
        deadline: Instant,
        given: Option<(GivenRequest, SealedPages)>,
    ) -> Box<dyn PendingReply> {
        let idle = self.idle.clone();
        let peer = self.peer.clone();
        let connection = Some(connection);
        Box::new(LocalPending { connection, idle, peer, header: None, start, deadline, given, given_reply: None })
    }

    /// Sends a request given as pages: the caller's pages are replaced with
    /// zeros, sealed, sent over the socket, and the bytes around them
    /// through the ring. From here on the request exists only as sent: one
    /// no server took comes back rebuilt from its pages (`NotDelivered`,
    /// here or from the pending call), to go elsewhere as bytes.
    fn send_given(
        &self,
        mut connection: Connection,
        bytes: &mut [u8],
        shared: SharedPages,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        // SAFETY: `bytes` is the caller's memory, its guest waiting in this
        // call; its host took `shared` for exactly these bytes.
        let sealed = unsafe { shared.seal_given(bytes) }?;
        connection.given += 1;
        let seq = connection.given;
        let message = GivenRequest::encode(seq, bytes, &sealed);
        let given = GivenRequest::parse(&message)?;
        let ring = connection.segment.request();
        let start = ring.head();
        // Ordering: as in `send`. Before the pages go, so that a failure
        // from here on tells whether a server took this request.
        ring.clear_taken();
        let sent = handshake::send_pages(&connection.socket, seq, &sealed.fd).map_err(CallError::from).and_then(|()| {
            ring.set_trace(Some(trace));
            ring.send(&message, STATUS_PAGES, &mut || connection.check(&self.peer, deadline), || {
                connection.doorbell.counter().bump()
            })
        });
        match sent {
            Ok(()) => Ok(self.pending(connection, start, deadline, Some((given, sealed)))),
            Err(e) if !ring.was_taken() => match given.rebuild(&sealed) {
                Ok(request) => Err(CallError::NotDelivered { peer: self.peer.to_string(), request }),
                Err(_) => Err(e),
            },
            Err(e) => Err(e),
        }
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
    /// A request given as pages, kept to send it elsewhere as bytes should
    /// its server vanish before taking it.
    given: Option<(GivenRequest, SealedPages)>,
    /// A reply given as pages, checked, until it is read.
    given_reply: Option<(GivenRequest, OwnedFd)>,
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
        let undelivered = |connection: Connection| match &self.given {
            None => connection.undelivered(self.start),
            Some((given, sealed)) => {
                (!connection.segment.request().was_taken()).then(|| given.rebuild(sealed).ok()).flatten()
            }
        };
        match (error, connection) {
            (CallError::PeerGone(peer), Some(connection)) => match undelivered(connection) {
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
        if header.status == STATUS_PAGES {
            let given = match self.receive_given_reply(header) {
                Ok(given) => given,
                Err(e) => return Err(self.fail(e)),
            };
            let len = given.0.len();
            self.given_reply = Some(given);
            self.header = Some(MessageHeader { len, ..header });
            return Ok(len as usize);
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
        let given_reply = self.given_reply.take();
        let connection = self.connection()?;
        let (peer, deadline) = (&*self.peer, self.deadline);
        let read = match given_reply {
            Some((given, fd)) => given.put_into(&fd, out),
            None => connection.segment.reply().recv_into(out, &mut || connection.check(peer, deadline)),
        };
        if let Err(e) = read {
            return Err(self.fail(e));
        }
        self.release();
        Ok(())
    }
}

impl LocalPending {
    /// The ring part of a reply given as pages, and its pages, which the
    /// server sent on the socket before it; both checked.
    fn receive_given_reply(&self, header: MessageHeader) -> Result<(GivenRequest, OwnedFd), CallError> {
        let connection = self.connection()?;
        let (peer, deadline) = (&*self.peer, self.deadline);
        let check = &mut || connection.check(peer, deadline);
        let given = GivenRequest::receive(&connection.segment.reply(), header.len, check)?;
        // Sent before the ring part, so it waits on the socket even when the
        // server closed right after.
        let fd = loop {
            let mut fds = [PollFd::new(connection.socket.as_fd(), PollFlags::POLLIN)];
            let polled = poll(&mut fds, PollTimeout::from(20u16));
            if matches!(polled, Ok(n) if n > 0) && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                match handshake::recv_pages(&connection.socket) {
                    Ok((_, fd)) => break fd,
                    Err(_) if hung_up(&connection.socket) => return Err(CallError::PeerGone(peer.to_owned())),
                    Err(e) => return Err(e.into()),
                }
            }
            connection.check(peer, deadline)?;
        };
        crate::pages::check_received(&fd, given.pages)
            .map_err(|e| CallError::Protocol(format!("given reply refused: {e}")))?;
        Ok((given, fd))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::Duration;

    use memmap2::MmapMut;
    use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

    use super::*;
    use crate::local::{LocalListener, LocalRequest};
    use crate::pages::SharedTable;

    const MIB: usize = 1 << 20;

    fn listening() -> (tempfile::TempDir, LocalListener, LocalChannel) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.sock");
        let listener = LocalListener::bind(&path, "server").unwrap();
        let channel = LocalChannel::new("server", "caller", path);
        (dir, listener, channel)
    }

    /// The next request the listener takes, waiting for it a while.
    fn next_request(listener: &LocalListener) -> LocalRequest {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(request) = listener.take_request() {
                return request;
            }
            assert!(Instant::now() < until, "no request came");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn a_request_given_as_pages_reaches_the_server_and_leaves_the_caller_zeros() {
        let (_dir, listener, channel) = listening();
        let mut caller = MmapMut::map_anon(8 * MIB).unwrap();
        let bytes = &mut caller[100..100 + 5 * MIB];
        let mut table = SharedTable::default();
        assert!(table.share(bytes).unwrap());
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mut pages = table.take(bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut request = Payload::Given { bytes, pages: &mut pages };
        let _pending = channel.send(&mut request, deadline, TraceContext::new_span(None)).unwrap();
        assert!(pages.is_none(), "the pages went");
        let request = next_request(&listener);
        assert_eq!(request.len(), 5 * MIB as u64);
        let mut server = MmapMut::map_anon(8 * MIB).unwrap();
        request.read_into(&mut server[100..100 + 5 * MIB]).unwrap();
        assert!(server[100..100 + 5 * MIB].iter().enumerate().all(|(i, &b)| b == i as u8));
        let whole_pages = &caller[4096..4096 + 5 * MIB - 4096];
        assert!(whole_pages.iter().all(|&b| b == 0), "the caller's pages are zeros");
    }

    /// A caller that sends pages anyone can still write is refused: its
    /// connection ends and nothing is mapped.
    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn given_pages_that_are_not_sealed_end_the_connection() {
        let (_dir, listener, channel) = listening();
        let connection = channel.connection().unwrap();
        let fd = memfd_create(c"unsealed", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        File::from(fd.try_clone().unwrap()).set_len(2 * MIB as u64).unwrap();
        handshake::send_pages(&connection.socket, 1, &fd).unwrap();
        let message = [1u64, 0, 2 * MIB as u64].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let ring = connection.segment.request();
        ring.send(&message, STATUS_PAGES, &mut || Ok(()), || connection.doorbell.counter().bump()).unwrap();
        let request = next_request(&listener);
        let mut server = vec![0u8; 2 * MIB];
        let refused = request.read_into(&mut server);
        assert!(matches!(refused, Err(CallError::Protocol(ref e)) if e.contains("refused")), "{refused:?}");
        assert!(server.iter().all(|&b| b == 0));
        // The listener goes on serving others.
        let mut lent = Payload::Lent(b"after");
        let _pending = channel.send(&mut lent, Instant::now() + Duration::from_secs(5), TraceContext::new_span(None));
        let mut after = [0u8; 5];
        next_request(&listener).read_into(&mut after).unwrap();
        assert_eq!(&after, b"after");
    }

    /// A server gone before it took a given request: the call hands the
    /// request back whole (rebuilt from its pages), to be sent elsewhere.
    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn a_given_request_no_server_took_comes_back_whole() {
        let (_dir, listener, channel) = listening();
        let mut caller = MmapMut::map_anon(4 * MIB).unwrap();
        let bytes = &mut caller[..3 * MIB + 10];
        let mut table = SharedTable::default();
        assert!(table.share(bytes).unwrap());
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        let mut pages = table.take(bytes);
        let mut request = Payload::Given { bytes, pages: &mut pages };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pending = channel.send(&mut request, deadline, TraceContext::new_span(None)).unwrap();
        drop(listener);
        match pending.wait() {
            Err(CallError::NotDelivered { request, .. }) => {
                assert_eq!(request.len(), 3 * MIB + 10);
                assert!(request.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn a_reply_given_as_pages_reaches_the_caller_and_leaves_the_server_zeros() {
        let (_dir, listener, channel) = listening();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pending = channel.send(&mut Payload::Lent(b"ask"), deadline, TraceContext::new_span(None)).unwrap();
        let request = next_request(&listener);
        request.read_into(&mut [0u8; 3]).unwrap();
        let mut server = MmapMut::map_anon(4 * MIB).unwrap();
        let reply = &mut server[..3 * MIB + 7];
        let mut table = SharedTable::default();
        assert!(table.share(reply).unwrap());
        reply.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 253) as u8);
        let mut pages = table.take(reply);
        request.reply(Payload::Given { bytes: reply, pages: &mut pages }).unwrap();
        assert!(server[..3 * MIB].iter().all(|&b| b == 0), "the server's pages are zeros");
        assert_eq!(pending.wait().unwrap(), 3 * MIB + 7);
        let mut caller = MmapMut::map_anon(4 * MIB).unwrap();
        pending.read_into(&mut caller[..3 * MIB + 7]).unwrap();
        assert!(caller[..3 * MIB + 7].iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    }

    /// A given request whose ring part no caller could send is dropped
    /// with its connection, and the next caller's request is taken at once.
    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn a_given_request_with_a_bad_layout_is_skipped_for_the_next_caller() {
        let (_dir, listener, channel) = listening();
        let evil = channel.connection().unwrap();
        // Pages of 5 bytes: not whole pages.
        let message = [1u64, 0, 5].iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let ring = evil.segment.request();
        ring.send(&message, STATUS_PAGES, &mut || Ok(()), || evil.doorbell.counter().bump()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let _pending = channel.send(&mut Payload::Lent(b"honest"), deadline, TraceContext::new_span(None)).unwrap();
        let mut honest = [0u8; 6];
        next_request(&listener).read_into(&mut honest).unwrap();
        assert_eq!(&honest, b"honest");
    }

    /// A given request its handler answered without reading leaves its
    /// pages behind; the next given request on the connection still gets
    /// its own.
    #[test]
    #[cfg_attr(
        target_arch = "aarch64",
        ignore = "under qemu-user, which runs the arm64 unit tests here, a listener crashes after its handshake (SIGSEGV, not yet investigated)"
    )]
    fn pages_left_unread_do_not_stand_in_for_the_next_requests() {
        let (_dir, listener, channel) = listening();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut table = SharedTable::default();
        let mut caller = MmapMut::map_anon(4 * MIB).unwrap();
        for (round, fill) in [(0, 1u8), (1, 2u8)] {
            let bytes = &mut caller[..3 * MIB];
            assert!(table.share(bytes).unwrap());
            bytes.fill(fill);
            let mut pages = table.take(bytes);
            let mut request = Payload::Given { bytes, pages: &mut pages };
            let mut pending = channel.send(&mut request, deadline, TraceContext::new_span(None)).unwrap();
            let taken = next_request(&listener);
            if round == 0 {
                taken.fail("not reading this one").unwrap();
                assert!(matches!(pending.wait(), Err(CallError::PeerFailed(_))));
                // The server's poll loop takes the unread pages off the socket
                // (the next given request goes by pages only then).
                let until = Instant::now() + Duration::from_secs(5);
                while !handshake::nothing_unread(&channel.idle.lock().unwrap()[0].socket) {
                    assert!(Instant::now() < until, "the unread pages stayed on the socket");
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            let mut server = MmapMut::map_anon(4 * MIB).unwrap();
            taken.read_into(&mut server[..3 * MIB]).unwrap();
            assert!(server[..3 * MIB].iter().all(|&b| b == 2), "the second request's own pages");
            taken.reply(Payload::Lent(b"ok")).unwrap();
            assert_eq!(pending.wait().unwrap(), 2);
        }
    }
}
