//! The calling side of remote mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::keys::{self, KEEP_SECONDS, MAX_QUEUED, REPLY_FAILED, REPLY_OK, SERVER_GONE};
use super::link::RedisLink;
use crate::{CallError, Channel, Mode, PendingReply};

/// How long one blocking read of the reply list lasts, so that a dead
/// connection is noticed.
const REPLY_POLL: Duration = Duration::from_secs(1);
/// A caller waiting this long checks that a server of the function is
/// still alive, then again as often.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// Sends a request in one round trip: refused when no server of the
/// function was seen within ARGV[1] seconds (or ever), or when ARGV[2]
/// requests already wait; else `XADD` of the fields ARGV[3..] (a large body
/// is SET beside the script, in the same round trip, never through Lua).
/// Returns `{status, detail}`: `{'ok', entry id}`, `{'never', ''}`,
/// `{'gone', seconds since a server was seen}`, `{'full', queued}`.
const SEND_SCRIPT: &str = r"
local newest = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
if #newest == 0 then return {'never', ''} end
local age = tonumber(redis.call('TIME')[1]) - tonumber(newest[2])
if age > tonumber(ARGV[1]) then return {'gone', tostring(age)} end
local queued = redis.call('XLEN', KEYS[1])
if queued >= tonumber(ARGV[2]) then return {'full', tostring(queued)} end
return {'ok', redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))}
";

/// Run by a caller that waited a while: when no server was seen within
/// ARGV[1] seconds, withdraws the request (so no server handles it after
/// its caller gave up) and returns the age; else -1.
const CHECK_SCRIPT: &str = r"
local newest = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
local age = 1e12
if #newest > 0 then age = tonumber(redis.call('TIME')[1]) - tonumber(newest[2]) end
if age <= tonumber(ARGV[1]) then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
return math.min(age, 1e9)
";

/// Calls one function through Redis.
pub struct RemoteChannel {
    peer: String,
    caller: String,
    namespace: String,
    stream: String,
    servers: String,
    link: Arc<Mutex<RedisLink>>,
    send_script: redis::Script,
}

impl RemoteChannel {
    /// A channel to `peer`; whether a server of it lives is checked by each
    /// send, in the same round trip as the request: requests are queued
    /// while a server was seen within `SERVER_GONE`, else refused with
    /// `UnknownPeer`.
    pub fn open(peer: &str, caller: &str, namespace: &str, link: Arc<Mutex<RedisLink>>) -> Result<Self, CallError> {
        Ok(Self {
            peer: peer.to_owned(),
            caller: caller.to_owned(),
            namespace: namespace.to_owned(),
            stream: keys::request_stream(namespace, peer),
            servers: keys::servers(namespace, peer),
            link,
            send_script: redis::Script::new(SEND_SCRIPT),
        })
    }

    fn refusal(&self, status: &str, detail: &str) -> CallError {
        let (peer, namespace) = (&self.peer, &self.namespace);
        match status {
            "never" => CallError::UnknownPeer(format!(
                "{peer} (no server of it ever started in namespace {namespace}, on this node or through Redis)"
            )),
            "gone" => CallError::UnknownPeer(format!(
                "{peer} (no server of it seen in namespace {namespace} for {detail} s, over the {} s limit)",
                SERVER_GONE.as_secs()
            )),
            // Not `UnknownPeer`: the function lives, it does not keep up.
            "full" => CallError::Redis(format!("{detail} requests already wait for {peer}, the most cwasi queues")),
            _ => CallError::Protocol(format!("unexpected answer {status:?} from Redis sending to {peer}")),
        }
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
        let inline = request.len() <= keys::INLINE_BODY_MAX;
        // Only a large body travels under a key of its own.
        let body_key = if inline { String::new() } else { keys::request_body(&self.namespace, &id) };
        let mut send = redis::cmd("EVALSHA");
        send.arg(self.send_script.get_hash()).arg(2).arg(&self.stream).arg(&self.servers);
        send.arg(SERVER_GONE.as_secs()).arg(MAX_QUEUED);
        send.arg("id").arg(&id).arg("reply").arg(&reply_key).arg("caller").arg(&self.caller);
        // Retried over reconnects; a request added twice has one id and is handled once.
        let (status, detail): (String, String) = lock(&self.link).run("XADD", |c| {
            let mut pipe = redis::pipe();
            if inline {
                let mut entry = send.clone();
                entry.arg("body").arg(request);
                pipe.add_command(entry);
            } else {
                // The body goes first as a plain SET, in the same round trip,
                // never through Lua (a copy of up to 100 MiB per call).
                pipe.cmd("SET").arg(&body_key).arg(request).arg("EX").arg(KEEP_SECONDS).ignore();
                let mut entry = send.clone();
                entry.arg("bodykey").arg(&body_key);
                pipe.add_command(entry);
            }
            let sent = match pipe.query::<Vec<(String, String)>>(c) {
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    self.send_script.load(c)?;
                    pipe.query::<Vec<(String, String)>>(c)
                }
                other => other,
            }?;
            sent.into_iter()
                .next()
                .ok_or_else(|| (redis::ErrorKind::UnexpectedReturnType, "empty pipeline reply").into())
        })?;
        if status != "ok" && !inline {
            // Best effort: it expires anyway.
            let _ = lock(&self.link).run("DEL", |c| redis::cmd("DEL").arg(&body_key).query::<i64>(c));
        }
        if status != "ok" {
            return Err(self.refusal(&status, &detail));
        }
        Ok(Box::new(RemotePending {
            link: self.link.clone(),
            peer: self.peer.clone(),
            namespace: self.namespace.clone(),
            stream: self.stream.clone(),
            servers: self.servers.clone(),
            entry: detail,
            reply_key,
            reply: None,
            deadline,
        }))
    }
}

struct RemotePending {
    link: Arc<Mutex<RedisLink>>,
    peer: String,
    namespace: String,
    stream: String,
    servers: String,
    /// The request's stream entry, withdrawn if every server is gone.
    entry: String,
    reply_key: String,
    reply: Option<Vec<u8>>,
    deadline: Instant,
}

impl RemotePending {
    /// `UnknownPeer` when no server was seen within `SERVER_GONE`; the
    /// request is withdrawn from the stream then.
    fn check_servers(&self) -> Result<(), CallError> {
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CHECK_SCRIPT));
        let age: i64 = lock(&self.link).run("checking servers", |c| {
            SCRIPT.key(&self.stream).key(&self.servers).arg(SERVER_GONE.as_secs()).arg(&self.entry).invoke(c)
        })?;
        if age < 0 {
            return Ok(());
        }
        Err(CallError::UnknownPeer(format!(
            "{} (no server of it seen in namespace {} for over {} s while the call waited; the request was withdrawn)",
            self.peer,
            self.namespace,
            SERVER_GONE.as_secs()
        )))
    }
}

impl PendingReply for RemotePending {
    fn wait(&mut self) -> Result<usize, CallError> {
        if let Some(reply) = &self.reply {
            return Ok(reply.len());
        }
        let mut next_check = Instant::now() + LIVENESS_CHECK;
        let element = loop {
            if Instant::now() >= next_check {
                self.check_servers()?;
                next_check = Instant::now() + LIVENESS_CHECK;
            }
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
