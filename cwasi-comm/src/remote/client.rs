//! The calling side of remote mode.
//!
//! A small request to a single Redis costs the caller one round trip: the
//! send script and the blocking read of the reply list go out in one write,
//! and the clean-up (`DEL` of the reply list) goes out without waiting, its
//! answer read at the link's next use. Large requests, and calls through a
//! Redis Cluster (whose client only does whole round trips), send first and
//! wait second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::keys::{FunctionKeys, INLINE_BODY_MAX, KEEP_SECONDS, MAX_QUEUED, REPLY_FAILED, REPLY_OK, SERVER_GONE};
use super::link::{LinkPool, PooledLink};
use crate::trace::TraceContext;
use crate::{CallError, PendingReply};

/// How long one blocking read of the reply list lasts, so that a dead
/// connection is noticed.
const REPLY_POLL: Duration = Duration::from_secs(1);
/// A caller waiting this long checks that a server of the function is
/// still alive, then again as often.
const LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// Sends a request in one round trip. KEYS: the function's stream, its
/// servers, the request's state and reply list. ARGV: the liveness limit
/// (seconds), the queue limit, how long keys are kept, then the entry's
/// fields. A state already written means this send was retried over a
/// reconnect: nothing is added twice. A refusal (no server seen within the
/// limit, or ever; the queue full) is also pushed onto the reply list, so
/// that a read of it sent in the same write returns at once.
/// Returns `{status, detail}`: `{'ok', entry id}`, `{'never', ''}`,
/// `{'gone', seconds since a server was seen}`, `{'full', queued}`.
const SEND_SCRIPT: &str = r"
local sent = redis.call('GET', KEYS[3])
if sent then return {'ok', sent} end
local function refuse(status, detail)
  redis.call('RPUSH', KEYS[4], string.char(2) .. status)
  redis.call('EXPIRE', KEYS[4], ARGV[3])
  return {status, detail}
end
local newest = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
if #newest == 0 then return refuse('never', '') end
local age = tonumber(redis.call('TIME')[1]) - tonumber(newest[2])
if age > tonumber(ARGV[1]) then return refuse('gone', tostring(age)) end
local queued = redis.call('XLEN', KEYS[1])
if queued >= tonumber(ARGV[2]) then return refuse('full', tostring(queued)) end
local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[3], entry, 'EX', ARGV[3])
return {'ok', entry}
";

/// Run by a caller that waited a while or reconnected. KEYS: stream,
/// servers, state, reply list; ARGV: the liveness limit, the request's
/// entry id ('' if unknown). Returns -1 when all is well (a reply waits, or
/// a server lives); -2 when the request is gone (a failover lost it: it
/// must be sent again); else, no server was seen within ARGV[1] seconds:
/// the request is withdrawn (so no server handles it after its caller gave
/// up) and the age is returned.
const CHECK_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -2 end
local newest = redis.call('ZRANGE', KEYS[2], 0, 0, 'REV', 'WITHSCORES')
local age = 1e12
if #newest > 0 then age = tonumber(redis.call('TIME')[1]) - tonumber(newest[2]) end
if age <= tonumber(ARGV[1]) then return -1 end
if ARGV[2] ~= '' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return math.min(age, 1e9)
";

/// After a send script found a server alive and the queue open, sends for
/// this long skip those checks (a transaction instead of a script: a
/// fraction of the cost in Redis). A server that dies meanwhile is noticed
/// by its waiting callers (`LIVENESS_CHECK`).
const CHECKED_FOR: Duration = Duration::from_secs(1);

/// First byte of a reply list element that the send script wrote itself.
const REPLY_REFUSED: u8 = 2;

/// What every call to one peer shares.
struct Peer {
    /// Until when the last send script's checks count.
    checked_until: Mutex<Option<Instant>>,
    name: String,
    caller: String,
    namespace: String,
    keys: FunctionKeys,
    stream: String,
    servers: String,
}

/// Calls one function through Redis.
pub struct RemoteChannel {
    peer: Arc<Peer>,
    pool: Arc<LinkPool>,
}

impl RemoteChannel {
    /// A channel to `peer`; whether a server of it lives is checked by each
    /// send, in the same round trip as the request: requests are queued
    /// while a server was seen within `SERVER_GONE`, else refused with
    /// `UnknownPeer`.
    pub fn open(peer: &str, caller: &str, namespace: &str, pool: Arc<LinkPool>) -> Result<Self, CallError> {
        let keys = FunctionKeys::new(namespace, peer);
        let peer = Peer {
            checked_until: Mutex::new(None),
            name: peer.to_owned(),
            caller: caller.to_owned(),
            namespace: namespace.to_owned(),
            stream: keys.requests(),
            servers: keys.servers(),
            keys,
        };
        Ok(Self { peer: Arc::new(peer), pool })
    }
}

impl Peer {
    fn lock_checked(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.checked_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recently_checked(&self) -> bool {
        self.lock_checked().is_some_and(|until| Instant::now() < until)
    }

    fn checked_now(&self) {
        *self.lock_checked() = Some(Instant::now() + CHECKED_FOR);
    }

    fn refusal(&self, status: &str, detail: &str) -> CallError {
        let (peer, namespace) = (&self.name, &self.namespace);
        match status {
            "never" => CallError::UnknownPeer(format!(
                "{peer} (no server of it ever started in namespace {namespace}, on this node or through Redis)"
            )),
            "gone" => CallError::UnknownPeer(format!(
                "{peer} (no server of it seen in namespace {namespace} for {detail} s, over the {} s limit)",
                SERVER_GONE.as_secs()
            )),
            // Not `UnknownPeer`: the function lives, it does not keep up.
            "full" => CallError::QueueFull { peer: peer.to_owned(), queued: detail.to_owned() },
            _ => CallError::Protocol(format!("unexpected answer {status:?} from Redis sending to {peer}")),
        }
    }
}

/// A request id unique across nodes and restarts.
fn new_request_id(caller: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{caller}-{}-{started:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// One request's keys and how to (re)send it.
struct Request {
    id: String,
    /// The call's `traceparent`, an entry field like the others.
    traceparent: String,
    reply_key: String,
    state_key: String,
    body_key: Option<String>,
}

impl Request {
    /// What the send script does once its checks passed, as a `MULTI`/`EXEC`
    /// transaction (a new id: no state can exist yet).
    fn send_transaction(&self, peer: &Peer, body: &[u8]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET").arg(&self.state_key).arg("q").arg("EX").arg(KEEP_SECONDS);
        pipe.cmd("XADD").arg(&peer.stream).arg("*");
        pipe.arg("id").arg(&self.id).arg("reply").arg(&self.reply_key).arg("caller").arg(&peer.caller);
        pipe.arg("tp").arg(&self.traceparent).arg("body").arg(body);
        pipe
    }

    /// The send script with the entry's fields (`body` inline, or the key
    /// of a body SET beside it).
    fn send_command(&self, peer: &Peer, body: Option<&[u8]>) -> redis::Cmd {
        let mut eval = redis::cmd("EVAL");
        // EVAL, not EVALSHA: a pipelined read must never wait behind a
        // NOSCRIPT (a restarted Redis, a promoted replica); Redis caches
        // the compiled script by its hash either way.
        eval.arg(SEND_SCRIPT).arg(4).arg(&peer.stream).arg(&peer.servers).arg(&self.state_key).arg(&self.reply_key);
        eval.arg(SERVER_GONE.as_secs()).arg(MAX_QUEUED).arg(KEEP_SECONDS);
        eval.arg("id").arg(&self.id).arg("reply").arg(&self.reply_key).arg("caller").arg(&peer.caller);
        eval.arg("tp").arg(&self.traceparent);
        match (&self.body_key, body) {
            (Some(key), _) => eval.arg("bodykey").arg(key),
            (None, body) => eval.arg("body").arg(body.unwrap_or_default()),
        };
        eval
    }
}

impl RemoteChannel {
    /// Sends `request` with the call's `trace` context; the call ends with
    /// [`CallError::Timeout`] at `deadline` at the latest.
    pub fn send(
        &self,
        request: &[u8],
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<Box<dyn PendingReply>, CallError> {
        let peer = &self.peer;
        let id = new_request_id(&peer.caller);
        let inline = request.len() <= INLINE_BODY_MAX;
        let keys = Request {
            traceparent: trace.to_string(),
            reply_key: peer.keys.reply_list(&id),
            state_key: peer.keys.request_state(&id),
            body_key: (!inline).then(|| peer.keys.request_body(&id)),
            id,
        };
        let mut link = self.pool.take()?;
        link.set_deadline(Some(deadline));
        let mut pending = RemotePending {
            peer: peer.clone(),
            link,
            request: keys,
            entry: None,
            resend: None,
            pipelined: None,
            reply: None,
            deadline,
        };
        if inline && pending.send_pipelined(request) {
            // Kept to send again if a failover loses the request (small: ≤ 64 KiB).
            pending.resend = Some(request.to_vec());
            return Ok(Box::new(pending));
        }
        pending.send(request)?;
        if inline {
            pending.resend = Some(request.to_vec());
        }
        Ok(Box::new(pending))
    }
}

/// A remote call in flight, holding its own connection.
struct RemotePending {
    peer: Arc<Peer>,
    link: PooledLink,
    request: Request,
    /// The request's stream entry, once known (to withdraw it).
    entry: Option<String>,
    /// A small request's bytes, to send again if Redis lost it.
    resend: Option<Vec<u8>>,
    /// The send and a first read of the reply list went out in one write;
    /// their answers are not read yet.
    pipelined: Option<Pipelined>,
    reply: Option<Vec<u8>>,
    deadline: Instant,
}

/// How a pipelined send went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipelined {
    /// The send script (with its checks).
    Script,
    /// The transaction (checks passed within `CHECKED_FOR`).
    Transaction,
}

/// How the first, pipelined read ended.
enum FirstRead {
    Reply(Vec<u8>),
    /// Sent; no reply within the first read.
    Waiting,
    /// The connection broke: whether the request got in is unknown.
    Broken,
}

impl RemotePending {
    fn first_block(&self) -> f64 {
        self.deadline.saturating_duration_since(Instant::now()).min(REPLY_POLL).as_secs_f64().max(0.001)
    }

    /// Writes the send (the script, or the transaction while its checks
    /// count) and a blocking read of the reply list at once (single server
    /// only). False when it could not: send the slow way.
    fn send_pipelined(&mut self, request: &[u8]) -> bool {
        let (kind, mut packed) = if self.peer.recently_checked() {
            (Pipelined::Transaction, self.request.send_transaction(&self.peer, request).get_packed_pipeline())
        } else {
            (Pipelined::Script, self.request.send_command(&self.peer, Some(request)).get_packed_command())
        };
        packed.extend_from_slice(&blmove(&self.request.reply_key, self.first_block()).get_packed_command());
        // Answers of earlier clean-ups are read after this write, not before.
        let written = self.link.write_pipelined(&packed);
        self.pipelined = written.then_some(kind);
        written
    }

    /// Sends the request in one round trip, retried over reconnects (the
    /// request's state makes a retry add nothing).
    fn send(&mut self, request: &[u8]) -> Result<(), CallError> {
        let (peer, keys) = (&self.peer, &self.request);
        let send = keys.send_command(peer, Some(request));
        let set_body = keys.body_key.as_ref().map(|body_key| {
            // The body goes as a plain SET, never through Lua (a copy of up
            // to 100 MiB per call).
            let mut set = redis::cmd("SET");
            set.arg(body_key).arg(request).arg("EX").arg(KEEP_SECONDS);
            set
        });
        let (status, detail): (String, String) = if self.link.is_cluster() {
            // A cluster client sends no pipelines: the body first, then the entry.
            if let Some(set) = &set_body {
                self.link.run("SET body", |c| set.query::<()>(c))?;
            }
            self.link.run("XADD", |c| send.query(c))?
        } else {
            // Both in one round trip.
            let mut pipe = redis::pipe();
            if let Some(set) = set_body {
                pipe.add_command(set).ignore();
            }
            pipe.add_command(send);
            self.link.run("XADD", |c| {
                pipe.query::<Vec<(String, String)>>(c)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| (redis::ErrorKind::UnexpectedReturnType, "empty pipeline reply").into())
            })?
        };
        if status == "ok" {
            self.entry = Some(detail);
            self.peer.checked_now();
            return Ok(());
        }
        // Best effort: they expire anyway.
        let mut clean_up = redis::cmd("DEL");
        clean_up.arg(&keys.reply_key).arg(keys.body_key.as_deref().unwrap_or(&keys.reply_key));
        let _ = self.link.run("DEL", |c| clean_up.query::<i64>(c));
        Err(peer.refusal(&status, &detail))
    }

    /// Reads the answers of the pipelined send and first read.
    fn read_pipelined(&mut self, kind: Pipelined) -> Result<FirstRead, CallError> {
        if !self.link.read_unread() {
            return Ok(FirstRead::Broken);
        }
        let Some(Ok(connection)) = self.link.server_connection() else {
            return Ok(FirstRead::Broken);
        };
        // MULTI and the two queued commands answer first.
        let preamble = if kind == Pipelined::Transaction { 3 } else { 0 };
        let answers: redis::RedisResult<Vec<Value>> =
            (0..preamble + 2).map(|_| connection.recv_response().and_then(Value::extract_error)).collect();
        let mut answers = match answers {
            Ok(answers) => answers.into_iter().skip(preamble),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                self.link.disconnect();
                return Ok(FirstRead::Broken);
            }
            Err(e) => {
                // Out of step after an error in the middle: start afresh.
                self.link.disconnect();
                return Err(CallError::redis(format!("sending to {}", self.peer.name), e));
            }
        };
        let (sent, first) = (answers.next().unwrap_or(Value::Nil), answers.next().unwrap_or(Value::Nil));
        let unexpected = |e: redis::ParsingError| {
            CallError::Protocol(format!("unexpected answer sending to {}: {e}", self.peer.name))
        };
        match kind {
            Pipelined::Script => {
                let (status, detail): (String, String) = redis::from_redis_value(sent).map_err(unexpected)?;
                if status != "ok" {
                    self.forget_reply_list();
                    return Err(self.peer.refusal(&status, &detail));
                }
                self.entry = Some(detail);
                self.peer.checked_now();
            }
            Pipelined::Transaction => {
                let (_, entry): (Value, String) = redis::from_redis_value(sent).map_err(unexpected)?;
                self.entry = Some(entry);
            }
        }
        match redis::from_redis_value::<Option<Vec<u8>>>(first) {
            Ok(Some(element)) => Ok(FirstRead::Reply(element)),
            Ok(None) => Ok(FirstRead::Waiting),
            Err(e) => Err(CallError::Protocol(format!("unexpected reply from {}: {e}", self.peer.name))),
        }
    }

    /// After a reconnect or a long wait: -1 all is well, else sends again a
    /// request Redis lost, or fails when no server lives.
    fn check(&mut self) -> Result<(), CallError> {
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CHECK_SCRIPT));
        let (peer, keys) = (&self.peer, &self.request);
        let verdict: i64 = self.link.run("checking the request", |c| {
            SCRIPT
                .key(&peer.stream)
                .key(&peer.servers)
                .key(&keys.state_key)
                .key(&keys.reply_key)
                .arg(SERVER_GONE.as_secs())
                .arg(self.entry.as_deref().unwrap_or(""))
                .invoke(c)
        })?;
        match verdict {
            -1 => Ok(()),
            -2 => match self.resend.take() {
                Some(request) => {
                    tracing::info!(peer = %peer.name, request = %keys.id, "Redis lost the request (a failover?); sending it again");
                    let sent = self.send(&request);
                    self.resend = Some(request);
                    sent
                }
                None => Err(CallError::RequestLost { peer: peer.name.clone(), request: keys.id.clone() }),
            },
            _ => Err(CallError::UnknownPeer(format!(
                "{} (no server of it seen in namespace {} for over {} s while the call waited; the request was withdrawn)",
                peer.name,
                peer.namespace,
                SERVER_GONE.as_secs()
            ))),
        }
    }

    /// Drops the reply list once read: without waiting on a single server
    /// (off the call's critical path), else in a round trip.
    fn forget_reply_list(&mut self) {
        let mut del = redis::cmd("DEL");
        del.arg(&self.request.reply_key);
        if !self.link.send_without_waiting(&del.get_packed_command(), 1, None) {
            // Best effort: the list also expires on its own.
            let _ = self.link.run("DEL", |c| del.query::<i64>(c));
        }
    }

    fn finish(&mut self, element: Vec<u8>) -> Result<usize, CallError> {
        self.forget_reply_list();
        match element.split_first() {
            Some((&REPLY_OK, _)) => {
                let mut body = element;
                body.remove(0);
                let len = body.len();
                self.reply = Some(body);
                Ok(len)
            }
            Some((&REPLY_FAILED, message)) => Err(CallError::PeerFailed(String::from_utf8_lossy(message).into_owned())),
            // A send retried after a refusal finds the refusal.
            Some((&REPLY_REFUSED, status)) => Err(self.peer.refusal(&String::from_utf8_lossy(status), "")),
            _ => Err(CallError::Protocol(format!("malformed reply from {}", self.peer.name))),
        }
    }
}

fn blmove(list: &str, block_seconds: f64) -> redis::Cmd {
    // BLMOVE onto the same list hands us the reply and keeps it there: if
    // the connection drops before we read the answer (a Redis restart), the
    // retry finds it again. BLPOP would have lost it.
    let mut cmd = redis::cmd("BLMOVE");
    cmd.arg(list).arg(list).arg("LEFT").arg("LEFT").arg(block_seconds);
    cmd
}

impl PendingReply for RemotePending {
    fn wait(&mut self) -> Result<usize, CallError> {
        if let Some(reply) = &self.reply {
            return Ok(reply.len());
        }
        if let Some(kind) = self.pipelined.take() {
            match self.read_pipelined(kind)? {
                FirstRead::Reply(element) => return self.finish(element),
                FirstRead::Waiting => {}
                // Whether it got in is unknown: the check finds out, and sends it again if not.
                FirstRead::Broken => self.check()?,
            }
        }
        let mut next_check = Instant::now() + LIVENESS_CHECK;
        loop {
            let reconnects = self.link.reconnects();
            if Instant::now() >= next_check {
                self.check()?;
                next_check = Instant::now() + LIVENESS_CHECK;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A late reply lands in a list nobody reads; it expires.
                return Err(CallError::Timeout(format!("{} did not answer by the call's deadline", self.peer.name)));
            }
            // It blocks at most REPLY_POLL at a time so a dead connection is noticed.
            let read = blmove(&self.request.reply_key, self.first_block());
            let moved: Option<Vec<u8>> = self.link.run("BLMOVE", |c| read.query(c))?;
            if let Some(element) = moved {
                return self.finish(element);
            }
            if self.link.reconnects() != reconnects {
                // Redis (or a cluster node) went away meanwhile: a failover
                // may have lost the request.
                self.check()?;
            }
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

impl Drop for RemotePending {
    fn drop(&mut self) {
        if self.pipelined.is_some() {
            // Its answers were never read: the connection is out of step.
            self.link.disconnect();
        }
    }
}
