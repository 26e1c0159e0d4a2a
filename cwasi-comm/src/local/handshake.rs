//! What travels on a local connection's socket: the caller's hello
//! (carrying its segment's fd) and the server's welcome (carrying the
//! doorbell's fd); after them, only the sealed pages of requests given as
//! pages (to a server that takes them), and hang-ups.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg,
    sendmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

const HELLO_MAGIC: &[u8; 8] = b"cwasiHI\0";
const PAGES_MAGIC: &[u8; 8] = b"cwasiPG\0";
const WELCOME_MAGIC: &[u8; 8] = b"cwasiOK\0";
const VERSION: u32 = 1;
const MAX_NAME: usize = 253;
/// A peer that does not complete the handshake in this time is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects a SOCK_SEQPACKET socket (message boundaries kept) to `path`.
pub(crate) fn connect_to(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    set_timeouts(&fd, Some(HANDSHAKE_TIMEOUT))?;
    Ok(fd)
}

pub(crate) fn set_timeouts(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let tv = TimeVal::from(libc::timeval {
        tv_sec: timeout.map_or(0, |t| t.as_secs() as libc::time_t),
        tv_usec: timeout.map_or(0, |t| t.subsec_micros() as libc::suseconds_t),
    });
    setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    setsockopt(fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

/// Caller -> server: who is calling, and the segment.
pub(crate) fn send_hello(socket: &OwnedFd, caller: &str, segment: &OwnedFd) -> io::Result<()> {
    let name = &caller.as_bytes()[..caller.len().min(MAX_NAME)];
    let mut msg = Vec::with_capacity(16 + name.len());
    msg.extend_from_slice(HELLO_MAGIC);
    msg.extend_from_slice(&VERSION.to_le_bytes());
    msg.extend_from_slice(&(name.len() as u32).to_le_bytes());
    msg.extend_from_slice(name);
    send_with_fd(socket, &msg, segment)
}

/// Server side: reads and checks a hello; returns the caller's name and segment fd.
pub(crate) fn recv_hello(socket: &OwnedFd) -> io::Result<(String, OwnedFd)> {
    let mut buf = [0u8; 16 + MAX_NAME + 1];
    let (len, fd) = recv_with_fd(socket, &mut buf)?;
    let msg = &buf[..len];
    if len < 16 || &msg[..8] != HELLO_MAGIC || msg[8..12] != VERSION.to_le_bytes() {
        return Err(bad("not a cwasi hello"));
    }
    let name_len = u32::from_le_bytes(msg[12..16].try_into().expect("4 bytes")) as usize;
    if name_len > MAX_NAME || 16 + name_len != len {
        return Err(bad("hello has a bad name length"));
    }
    let name = std::str::from_utf8(&msg[16..]).map_err(|_| bad("caller name is not UTF-8"))?;
    let fd = fd.ok_or_else(|| bad("hello carries no segment"))?;
    Ok((name.to_owned(), fd))
}

pub(crate) fn send_welcome(socket: &OwnedFd, doorbell: &OwnedFd) -> io::Result<()> {
    let mut msg = Vec::with_capacity(12);
    msg.extend_from_slice(WELCOME_MAGIC);
    msg.extend_from_slice(&VERSION.to_le_bytes());
    send_with_fd(socket, &msg, doorbell)
}

pub(crate) fn recv_welcome(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 16];
    let (len, fd) = recv_with_fd(socket, &mut buf)?;
    if len != 12 || &buf[..8] != WELCOME_MAGIC || buf[8..12] != VERSION.to_le_bytes() {
        return Err(bad("not a cwasi welcome"));
    }
    fd.ok_or_else(|| bad("welcome carries no doorbell"))
}

/// Caller -> server: the sealed pages of the request numbered `seq` on
/// this connection, sent before the request itself.
pub(crate) fn send_pages(socket: &OwnedFd, seq: u64, pages: &OwnedFd) -> io::Result<()> {
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(PAGES_MAGIC);
    msg.extend_from_slice(&VERSION.to_le_bytes());
    msg.extend_from_slice(&seq.to_le_bytes());
    send_with_fd(socket, &msg, pages)
}

/// Server side: the pages message waiting on `socket` (call only when it is
/// readable with data); anything else is an error that ends the connection.
pub(crate) fn recv_pages(socket: &OwnedFd) -> io::Result<(u64, OwnedFd)> {
    let mut buf = [0u8; 24];
    let (len, fd) = recv_with_fd(socket, &mut buf)?;
    if len != 20 || &buf[..8] != PAGES_MAGIC || buf[8..12] != VERSION.to_le_bytes() {
        return Err(bad("not a cwasi pages message"));
    }
    let fd = fd.ok_or_else(|| bad("pages message carries no file"))?;
    Ok((u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")), fd))
}

/// Whether the peer has taken off `socket` everything sent on it: a side
/// sends pages only then, so at most one set per connection waits, however
/// slow or hostile the peer.
pub(crate) fn nothing_unread(socket: &OwnedFd) -> bool {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int to the pointer given.
    let asked = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    asked == 0 && queued == 0
}

fn send_with_fd(socket: &OwnedFd, msg: &[u8], fd: &OwnedFd) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(msg)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

fn recv_with_fd(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed these descriptors in our
            // table for this message; nothing else owns them.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = msg.bytes;
    if truncated || received.len() > 1 {
        return Err(bad("oversized handshake message"));
    }
    Ok((len, received.pop()))
}

fn bad(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}
