//! The serving side of local mode: accepts callers, watches their sockets,
//! and hands their requests to the guest's handler threads.
//!
//! A handler never waits on a caller that does not read its reply: when a
//! reply does not fit the ring and the caller takes no slot for
//! [`REPLY_PATIENCE`], the rest is copied aside and a pump thread delivers
//! it while the handler serves the next request. That is what lets a caller
//! keep several large calls in flight to one function (it may still be
//! sending request 2 while reply 1 waits), and what keeps a caller that never
//! reads from stalling everyone else.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind, listen, recv, socket,
};

use super::given::{GIVEN_HEADER_WAIT, GIVEN_PAGES_WAIT, GivenRequest, STATUS_PAGES};
use super::handshake;
use super::ring::{MessageHeader, Sent};
use super::segment::{Doorbell, Segment};
use crate::pages::SharedPages;
use crate::trace::TraceContext;
use crate::{CallError, MAX_PAYLOAD, Payload};

/// Status a reply carries when the handler failed; its payload is the message.
pub(crate) const STATUS_HANDLER_FAILED: u32 = 1;

/// Longest failure message carried back to a caller.
pub(crate) const MAX_FAILURE_MESSAGE: usize = 4096;
/// How long a handler waits for a caller to take reply slots before it
/// leaves the rest of the reply to a pump thread. A reading caller frees a
/// 256 KiB slot in tens of microseconds.
const REPLY_PATIENCE: Duration = Duration::from_millis(2);
/// Most replies one function delivers from pump threads at once; past it, a
/// caller that does not read its reply loses its call (`PeerGone`) rather
/// than costing the function another thread and copy.
const MAX_PUMPS: usize = 64;

/// Listens on a Unix socket for callers on this node.
pub struct LocalListener {
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
}

struct Shared {
    function: String,
    doorbell: Doorbell,
    doorbell_fd: OwnedFd,
    connections: Mutex<Vec<Arc<Connection>>>,
    next_scan: AtomicUsize,
    stop: AtomicBool,
    /// Replies being delivered by pump threads.
    pumps: AtomicUsize,
    /// Told when a caller connects (a remote reader blocked in Redis must
    /// come back to the doorbell).
    on_connect: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// A pipe that wakes the poll loop when a connection is added, so that
    /// it watches the new socket at once (given pages may wait on it).
    wake: (OwnedFd, OwnedFd),
}

/// A non-blocking pipe: (read end, write end).
fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just made these descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) })
}

struct Connection {
    caller: String,
    socket: OwnedFd,
    segment: Segment,
    /// Set when the caller hung up or broke the protocol.
    gone: AtomicBool,
    /// Set while the guest works on this connection's request.
    busy: AtomicBool,
    /// The sealed pages of the request given as pages, with its number, as
    /// the poll loop took them off the socket.
    given_pages: Mutex<Option<(u64, OwnedFd)>>,
}

impl Connection {
    /// Ends the call this connection carries; a broken one takes no more.
    fn finish_call(&self, broken: bool) {
        if broken {
            // Ordering: `gone` is a flag (no data rides on it): Release here and
            // Acquire where it is read, more than it needs.
            self.gone.store(true, Ordering::Release);
        }
        // Ordering: Release, paired with the Acquire load of `busy` in
        // `take_request`: the thread that takes the next request (another
        // handler thread) then sees this thread's positions in the rings
        // (reply `head`, request `tail`), which each side reads Relaxed.
        self.busy.store(false, Ordering::Release);
    }

    /// Takes the given pages waiting on the socket; anything else there, or
    /// pages numbered no later than those kept, is an error (the caller
    /// broke the protocol). Later pages replace earlier ones, whose request
    /// ended without reading them.
    fn take_given_pages(&self) -> io::Result<()> {
        let (seq, fd) = handshake::recv_pages(&self.socket).inspect_err(|e| {
            tracing::warn!(caller = %self.caller, error = %e, "dropping a caller that wrote to its socket what is not given pages");
        })?;
        let mut slot = self.given_pages.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|(kept, _)| *kept >= seq) {
            tracing::warn!(caller = %self.caller, "dropping a caller that sent given pages out of order");
            return Err(io::Error::new(io::ErrorKind::InvalidData, "given pages out of order"));
        }
        *slot = Some((seq, fd));
        Ok(())
    }

    fn check_alive(&self) -> Result<(), CallError> {
        // Ordering: `gone` is a flag (see `finish_call`).
        if self.gone.load(Ordering::Acquire) || hung_up(&self.socket) {
            self.gone.store(true, Ordering::Release);
            return Err(CallError::PeerGone(self.caller.clone()));
        }
        Ok(())
    }
}

/// True when the peer closed its end (or the socket failed). A message
/// waiting (given pages) is not a hang-up: the poll loop reads it, and ends
/// the connection if it is anything else.
pub(crate) fn hung_up(socket: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let Ok(n) = poll(&mut fds, PollTimeout::ZERO) else { return false };
    let events = fds[0].revents().unwrap_or(PollFlags::empty());
    if n == 0 || events.is_empty() {
        return false;
    }
    // Closed, even with pages still unread; else data waiting is no hang-up.
    if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
        return true;
    }
    let mut byte = [0u8; 1];
    match recv(socket.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        // Data, or nothing any more (the poll loop took a message meanwhile).
        Ok(_) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// A request taken by the guest; reply (or fail) to finish it.
pub struct LocalRequest {
    connection: Arc<Connection>,
    shared: Arc<Shared>,
    header: MessageHeader,
    /// Set when its caller gave it as pages.
    given: Option<GivenRequest>,
    /// Its call was finished, or handed to a reply pump that finishes it.
    finished: bool,
    /// Its given pages were taken (they are read once).
    given_read: AtomicBool,
}

impl Drop for LocalRequest {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped unanswered (its read failed): the connection takes no
            // more requests and goes once nothing uses it.
            self.connection.finish_call(true);
        }
    }
}

impl LocalRequest {
    pub fn len(&self) -> u64 {
        self.given.as_ref().map_or(self.header.len, GivenRequest::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the ring part of a request given as pages.
    fn read_given(&mut self) -> Result<(), CallError> {
        let connection = &self.connection;
        // Sent whole before its first slot was published: a caller that
        // holds the rest back is not waited for.
        let until = std::time::Instant::now() + GIVEN_HEADER_WAIT;
        let given = GivenRequest::receive(&connection.segment.request(), self.header.len, &mut || {
            connection.check_alive()?;
            match std::time::Instant::now() < until {
                true => Ok(()),
                false => Err(CallError::Protocol("a given request's header came in pieces".into())),
            }
        })?;
        self.given = Some(given);
        Ok(())
    }

    /// The sealed pages of `given`, once the poll loop took them off the
    /// socket, checked.
    fn given_pages(&self, given: &GivenRequest) -> Result<OwnedFd, CallError> {
        let (connection, given_read) = (&self.connection, &self.given_read);
        let until = std::time::Instant::now() + GIVEN_PAGES_WAIT;
        if given_read.swap(true, Ordering::AcqRel) {
            return Err(CallError::Protocol("a given request is read once".into()));
        }
        let fd = loop {
            let mut slot = connection.given_pages.lock().unwrap_or_else(|e| e.into_inner());
            // Pages of an earlier request that ended unread are dropped.
            let taken = slot.take_if(|(seq, _)| *seq <= given.seq);
            drop(slot);
            match taken {
                Some((seq, fd)) if seq == given.seq => break fd,
                Some(_) => continue,
                None if std::time::Instant::now() >= until => {
                    return Err(CallError::Protocol("the given pages never came".into()));
                }
                None => {
                    connection.check_alive()?;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        };
        crate::pages::check_received(&fd, given.pages)
            .map_err(|e| CallError::Protocol(format!("given pages refused: {e}")))?;
        Ok(fd)
    }

    /// The caller's trace context (a caller may send none).
    pub fn trace(&self) -> Option<TraceContext> {
        self.header.trace
    }

    /// Copies the request into `out` (exactly `len()` bytes), or maps its
    /// pages there when its caller gave it as pages.
    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        let connection = &self.connection;
        let result = match &self.given {
            Some(given) => self.given_pages(given).and_then(|fd| given.put_into(&fd, out)),
            None => connection.segment.request().recv_into(out, &mut || connection.check_alive()),
        };
        self.mark_broken_on_error(result)
    }

    /// Answers with `reply`: copied, or its pages sent when the handler gave
    /// it up with shared pages and the caller takes pages.
    pub fn reply(self, mut reply: Payload<'_>) -> Result<(), CallError> {
        // The payload is looked at first: a lent reply costs no system call.
        if let Payload::Given { bytes, pages } = &mut reply
            && pages.is_some()
            && self.connection.segment.caller_takes_pages()
            && handshake::nothing_unread(&self.connection.socket)
            && let Some(shared) = pages.take()
        {
            return self.reply_given(bytes, shared);
        }
        self.send(reply.bytes(), 0)
    }

    /// Sends a reply given as pages: sealed pages over the socket, then the
    /// bytes around them through the ring (the caller reads them in order).
    fn reply_given(self, bytes: &mut [u8], shared: SharedPages) -> Result<(), CallError> {
        // SAFETY: `bytes` is the handler's memory; it waits in this host
        // call. Its host took `shared` for exactly these bytes.
        let sealed = unsafe { shared.seal_given(bytes) };
        let sent = sealed.and_then(|sealed| {
            handshake::send_pages(&self.connection.socket, 0, &sealed.fd)?;
            Ok(GivenRequest::encode(0, bytes, &sealed))
        });
        match sent {
            Ok(message) => self.send(&message, STATUS_PAGES),
            Err(e) => {
                self.connection.finish_call(true);
                Err(CallError::PeerGone(format!("{} (given reply not sent: {e})", self.connection.caller)))
            }
        }
    }

    /// Finishes the request with an error the caller receives as `PeerFailed`.
    pub fn fail(self, message: &str) -> Result<(), CallError> {
        let message = &message.as_bytes()[..message.len().min(MAX_FAILURE_MESSAGE)];
        self.send(message, STATUS_HANDLER_FAILED)
    }

    fn send(mut self, data: &[u8], status: u32) -> Result<(), CallError> {
        self.finished = true;
        let connection = &self.connection;
        let sent = connection.segment.reply().send_patiently(
            data,
            status,
            &mut || connection.check_alive(),
            || {},
            Some(REPLY_PATIENCE),
        );
        match sent {
            Ok(Sent::All) => {
                connection.finish_call(false);
                Ok(())
            }
            Ok(Sent::Stalled(done)) => {
                self.pump(data[done..].to_vec());
                Ok(())
            }
            Err(e) => {
                connection.finish_call(true);
                Err(e)
            }
        }
    }

    /// Delivers the rest of a reply from a thread of its own; the connection
    /// stays busy (takes no new request) until the caller has it all.
    fn pump(self, rest: Vec<u8>) {
        let shared = self.shared.clone();
        // Ordering: `pumps` is a count within this process (no data rides on
        // it); AcqRel, and Acquire in `replies_in_delivery`, more than it needs.
        if shared.pumps.fetch_add(1, Ordering::AcqRel) >= MAX_PUMPS {
            shared.pumps.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(caller = %self.connection.caller, "too many unread replies; dropping this caller's call");
            self.connection.finish_call(true);
            return;
        }
        let connection = self.connection.clone();
        let deliver = move || {
            let delivered = connection.segment.reply().send_rest(&rest, &mut || connection.check_alive());
            connection.finish_call(delivered.is_err());
            shared.pumps.fetch_sub(1, Ordering::AcqRel);
            // The connection may carry a request that waited for it.
            // Ordering: `bump` (SeqCst) releases `busy = false` to a guest
            // thread that acquires the new doorbell value (`activity`).
            shared.doorbell.counter().bump();
        };
        if let Err(e) = crate::threads::spawn("cwasi-reply-pump", deliver) {
            // Without a thread the caller cannot get the rest: end its call.
            tracing::warn!(error = %e, "cannot start a reply pump; dropping the caller");
            self.connection.finish_call(true);
            // Ordering: a count (see above).
            self.shared.pumps.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn mark_broken_on_error(&self, result: Result<(), CallError>) -> Result<(), CallError> {
        if result.is_err() {
            // Ordering: a flag (see `Connection::finish_call`).
            self.connection.gone.store(true, Ordering::Release);
        }
        result
    }
}

impl LocalListener {
    /// Binds `path` (replacing a stale socket file) and starts accepting.
    pub fn bind(path: &Path, function: &str) -> io::Result<Self> {
        let socket =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        let _ = std::fs::remove_file(path);
        bind(socket.as_raw_fd(), &UnixAddr::new(path)?)?;
        listen(&socket, Backlog::new(128)?)?;
        let (doorbell, doorbell_fd) = Doorbell::create()?;
        let shared = Arc::new(Shared {
            function: function.to_owned(),
            doorbell,
            doorbell_fd,
            connections: Mutex::new(Vec::new()),
            next_scan: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            pumps: AtomicUsize::new(0),
            on_connect: OnceLock::new(),
            wake: wake_pipe()?,
        });
        let poller = {
            let shared = shared.clone();
            crate::threads::spawn("cwasi-local-accept", move || shared.poll_loop(socket))?
        };
        Ok(Self { shared, poller: Some(poller) })
    }

    /// A request waiting from any caller, without blocking (but for the
    /// header of a request given as pages, which its caller sent whole).
    pub fn take_request(&self) -> Option<LocalRequest> {
        loop {
            let mut request = self.shared.take_request()?;
            match request.header.status {
                STATUS_PAGES => match request.read_given() {
                    Ok(()) => return Some(request),
                    Err(e) => {
                        tracing::warn!(caller = %request.connection.caller, error = %e, "dropping a caller that sent a bad given request");
                        // Its connection takes no more requests; look at the others.
                        request.connection.finish_call(true);
                    }
                },
                _ => return Some(request),
            }
        }
    }

    /// A counter that changes whenever something may be waiting: a new
    /// request, a caller coming or going, or [`LocalListener::notifier`].
    pub fn activity(&self) -> u32 {
        // Ordering: SeqCst (so acquire), paired with the release of each
        // `bump`: a caller publishes its request's first slot (`head`) before
        // it bumps the doorbell, so a guest thread that read the bumped value
        // here finds the request in `take_request`; one that read the value
        // before the bump sees it change in `wait_for_activity`. No wake-up
        // is lost either way.
        self.shared.doorbell.counter().value.load(Ordering::SeqCst)
    }

    /// Waits until the activity counter moves past `seen`, or `timeout`.
    pub fn wait_for_activity(&self, seen: u32, timeout: Duration) {
        let _ = self.shared.doorbell.counter().wait_until(|v| v != seen, timeout, || Err(()));
    }

    /// Wakes a guest thread waiting in [`LocalListener::wait_for_activity`]
    /// (other request sources use it).
    pub fn notifier(&self) -> Arc<dyn Fn() + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.doorbell.counter().bump())
    }

    /// Whether any caller on this node is connected.
    pub fn callers(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || !shared.lock_connections().is_empty())
    }

    /// Runs `hook` (once set, for good) whenever a caller connects.
    pub fn on_caller_connected(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.shared.on_connect.set(hook);
    }

    /// Replies still being delivered by pump threads.
    pub fn replies_in_delivery(&self) -> usize {
        // Ordering: a count (see `pump`).
        self.shared.pumps.load(Ordering::Acquire)
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        // Ordering: a flag, Release paired with the Acquire in `poll_loop`.
        self.shared.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

impl Shared {
    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds a connection with a request waiting, fairly (round robin).
    fn take_request(self: &Arc<Self>) -> Option<LocalRequest> {
        let connections = self.lock_connections();
        let count = connections.len();
        // Ordering: Relaxed, only where a scan starts (fairness).
        let start = self.next_scan.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            let connection = &connections[(start + i) % count];
            // Ordering: `busy` Acquire, paired with the Release in
            // `finish_call` (hands over the rings' positions, see there);
            // `has_message` acquires the caller's `head` (ring.rs).
            if connection.gone.load(Ordering::Acquire)
                || connection.busy.load(Ordering::Acquire)
                || !connection.segment.request().has_message()
            {
                continue;
            }
            let header = match connection.segment.request().wait_message(&mut || Ok(())) {
                Ok(header) if header.len <= MAX_PAYLOAD => header,
                _ => {
                    tracing::warn!(caller = %connection.caller, "dropping a caller that sent an oversized request header");
                    // Ordering: a flag (see `Connection::finish_call`).
                    connection.gone.store(true, Ordering::Release);
                    continue;
                }
            };
            // Ordering: `busy` is set under the connections mutex, which keeps
            // two guest threads from taking one request; `mark_taken` pairs
            // with the caller's `was_taken` (ring.rs).
            connection.busy.store(true, Ordering::Release);
            connection.segment.request().mark_taken();
            let (connection, shared) = (connection.clone(), self.clone());
            let given_read = AtomicBool::new(false);
            return Some(LocalRequest { connection, shared, header, given: None, finished: false, given_read });
        }
        None
    }

    fn poll_loop(self: Arc<Self>, listener: OwnedFd) {
        // Ordering: `stop`, `gone` and `busy` are flags here: this thread
        // hands no data through them, it only decides what to poll and drop.
        while !self.stop.load(Ordering::Acquire) {
            // A connection known to be gone stays listed while a handler or a
            // pump still uses it, but is not polled: its hung-up socket would
            // make every poll return at once.
            let (live, gone): (Vec<Arc<Connection>>, Vec<Arc<Connection>>) =
                self.lock_connections().iter().cloned().partition(|c| !c.gone.load(Ordering::Acquire));
            let mut fds = Vec::with_capacity(live.len() + 2);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.wake.0.as_fd(), PollFlags::POLLIN));
            fds.extend(live.iter().map(|c| PollFd::new(c.socket.as_fd(), PollFlags::POLLIN)));
            if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|fd| fd.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            if ready[0] {
                self.accept_all(&listener);
            }
            if ready[1] {
                // A connection was added: the next round polls it.
                let mut drained = [0u8; 64];
                while matches!(nix::unistd::read(self.wake.0.as_raw_fd(), &mut drained), Ok(n) if n > 0) {}
            }
            let mut changed = false;
            for (connection, _) in live.iter().zip(&ready[2..]).filter(|(_, ready)| **ready) {
                if !hung_up(&connection.socket) && connection.take_given_pages().is_ok() {
                    // Its handler may wait for them.
                    self.doorbell.counter().bump();
                    continue;
                }
                connection.gone.store(true, Ordering::Release);
                changed = true;
            }
            // Gone connections are dropped once nothing uses them any more.
            let released = gone.iter().any(|c| !c.busy.load(Ordering::Acquire));
            if changed || released {
                self.lock_connections().retain(|c| !c.gone.load(Ordering::Acquire) || c.busy.load(Ordering::Acquire));
            }
            if changed {
                self.doorbell.counter().bump();
            }
        }
    }

    fn accept_all(self: &Arc<Self>, listener: &OwnedFd) {
        loop {
            let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!(function = %self.function, error = %e, "accept failed");
                    return;
                }
            };
            // A slow or hostile caller must not hold up the others.
            let shared = self.clone();
            let spawned = crate::threads::spawn("cwasi-local-handshake", move || match shared.handshake(fd) {
                Ok(connection) => {
                    tracing::debug!(function = %shared.function, caller = %connection.caller, "caller connected");
                    shared.lock_connections().push(Arc::new(connection));
                    let _ = nix::unistd::write(&shared.wake.1, &[1]);
                    shared.doorbell.counter().bump();
                    if let Some(hook) = shared.on_connect.get() {
                        hook();
                    }
                }
                Err(e) => {
                    tracing::warn!(function = %shared.function, error = %e, "dropping a connection that failed the handshake")
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a handshake thread");
            }
        }
    }

    fn handshake(&self, socket: OwnedFd) -> io::Result<Connection> {
        handshake::set_timeouts(&socket, Some(handshake::HANDSHAKE_TIMEOUT))?;
        let (caller, segment_fd) = handshake::recv_hello(&socket)?;
        let segment = Segment::open(segment_fd)?;
        segment.set_server_takes_pages();
        handshake::send_welcome(&socket, &self.doorbell_fd)?;
        Ok(Connection {
            caller,
            socket,
            segment,
            gone: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            given_pages: Mutex::new(None),
        })
    }
}
