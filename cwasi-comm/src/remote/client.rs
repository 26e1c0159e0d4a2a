//! The calling side of remote mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::keys::{self, REPLY_FAILED, REPLY_OK};
use super::link::RedisLink;
use crate::{CallError, Channel, Mode, PendingReply};

/// How long one blocking read of the reply list lasts, so that a dead
/// connection is noticed.
const REPLY_POLL: Duration = Duration::from_secs(1);

/// Calls one function through Redis.
pub struct RemoteChannel {
    peer: String,
    caller: String,
    namespace: String,
    stream: String,
    link: Arc<Mutex<RedisLink>>,
}

impl RemoteChannel {
    /// Fails with `UnknownPeer` unless a server of `peer` ever started in
    /// this namespace (its request stream exists): requests to a known
    /// function are queued even while none of its servers runs.
    pub fn open(peer: &str, caller: &str, namespace: &str, link: Arc<Mutex<RedisLink>>) -> Result<Self, CallError> {
        let stream = keys::request_stream(namespace, peer);
        let exists: bool = lock(&link).run("EXISTS", |c| redis::cmd("EXISTS").arg(&stream).query(c))?;
        if !exists {
            return Err(CallError::UnknownPeer(format!(
                "{peer} (no server of it ever started in namespace {namespace}, on this node or through Redis)"
            )));
        }
        Ok(Self { peer: peer.to_owned(), caller: caller.to_owned(), namespace: namespace.to_owned(), stream, link })
    }
}

fn lock(link: &Mutex<RedisLink>) -> std::sync::MutexGuard<'_, RedisLink> {
    link.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request id unique across nodes and restarts.
fn new_request_id(caller: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{caller}-{}-{started:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Channel for RemoteChannel {
    fn mode(&self) -> Mode {
        Mode::Remote
    }

    fn send(&self, request: &[u8], deadline: Instant) -> Result<Box<dyn PendingReply>, CallError> {
        let id = new_request_id(&self.caller);
        let reply_key = keys::reply_list(&self.namespace, &id);
        // Retried over reconnects; a request added twice has one id and is handled once.
        lock(&self.link).run("XADD", |c| {
            let mut entry = redis::cmd("XADD");
            entry
                .arg(&self.stream)
                .arg("*")
                .arg("id")
                .arg(&id)
                .arg("reply")
                .arg(&reply_key)
                .arg("caller")
                .arg(&self.caller);
            if request.len() <= keys::INLINE_BODY_MAX {
                entry.arg("body").arg(request);
                return entry.query::<Value>(c);
            }
            // Body first, then the entry that names it, in one transaction.
            let body_key = keys::request_body(&self.namespace, &id);
            entry.arg("bodykey").arg(&body_key);
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&body_key)
                .arg(request)
                .arg("EX")
                .arg(keys::KEEP_SECONDS)
                .ignore()
                .add_command(entry)
                .query::<Value>(c)
        })?;
        Ok(Box::new(RemotePending {
            link: self.link.clone(),
            peer: self.peer.clone(),
            reply_key,
            reply: None,
            deadline,
        }))
    }
}

struct RemotePending {
    link: Arc<Mutex<RedisLink>>,
    peer: String,
    reply_key: String,
    reply: Option<Vec<u8>>,
    deadline: Instant,
}

impl PendingReply for RemotePending {
    fn wait(&mut self) -> Result<usize, CallError> {
        if let Some(reply) = &self.reply {
            return Ok(reply.len());
        }
        let element = loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A late reply lands in a list nobody reads; it expires.
                return Err(CallError::Timeout(format!("{} did not answer by the call's deadline", self.peer)));
            }
            // BLMOVE onto the same list hands us the reply and keeps it there:
            // if the connection drops before we read the answer (a Redis
            // restart), the retry finds it again. BLPOP would have lost it.
            // It blocks at most REPLY_POLL at a time so a dead connection is noticed.
            let block = left.min(REPLY_POLL).as_secs_f64().max(0.001);
            let moved: Option<Vec<u8>> = lock(&self.link).run("BLMOVE", |c| {
                redis::cmd("BLMOVE")
                    .arg(&self.reply_key)
                    .arg(&self.reply_key)
                    .arg("LEFT")
                    .arg("LEFT")
                    .arg(block)
                    .query(c)
            })?;
            if let Some(element) = moved {
                // Best effort: the list also expires on its own.
                let _ = lock(&self.link).run("DEL", |c| redis::cmd("DEL").arg(&self.reply_key).query::<i64>(c));
                break element;
            }
        };
        match element.split_first() {
            Some((&REPLY_OK, _)) => {
                let mut body = element;
                body.remove(0);
                let len = body.len();
                self.reply = Some(body);
                Ok(len)
            }
            Some((&REPLY_FAILED, message)) => Err(CallError::PeerFailed(String::from_utf8_lossy(message).into_owned())),
            _ => Err(CallError::Protocol(format!("malformed reply from {}", self.peer))),
        }
    }

    fn read_into(mut self: Box<Self>, out: &mut [u8]) -> Result<(), CallError> {
        let len = self.wait()?;
        if out.len() != len {
            return Err(CallError::Protocol(format!("reply is {len} bytes, buffer {}", out.len())));
        }
        out.copy_from_slice(self.reply.as_deref().unwrap_or_default());
        Ok(())
    }
}
