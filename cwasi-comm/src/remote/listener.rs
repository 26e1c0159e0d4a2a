//! The serving side of remote mode: a thread that takes requests from the
//! function's stream, one at a time, and hands them to the guest thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};

use super::keys::{
    self, DEAD_LETTERS_KEPT, FORGET_SECONDS, GROUP, KEEP_SECONDS, MAX_DELIVERIES, REPLY_FAILED, REPLY_OK,
};
use super::link::RedisLink;
use crate::CallError;

/// A request delivered to a server that stopped is claimed by another after
/// this long without a heartbeat.
const CLAIM_IDLE: Duration = Duration::from_secs(5);
/// How often a server looks for such requests (and its own, after a reconnect).
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How often a server refreshes its liveness record and, while its handler
/// runs, the idle time of the request it handles (well under `CLAIM_IDLE`).
const BEAT: Duration = Duration::from_millis(CLAIM_IDLE.as_millis() as u64 / 3);
/// How often a server removes consumers of instances gone for `CONSUMER_FORGET`.
const CONSUMER_SWEEP: Duration = Duration::from_secs(60);
/// A consumer with nothing pending and idle this long belonged to an
/// instance that stopped (a live one reads every second).
const CONSUMER_FORGET: Duration = Duration::from_secs(600);

/// Answers, marks done and acknowledges atomically (and drops a body kept
/// beside the entry); a request already done (delivered twice) is only
/// acknowledged. With a reason (ARGV[6]) the entry is copied to the
/// dead-letter stream first; with an empty answer (ARGV[3]) no reply is
/// written (the entry named a reply list that is not its own).
const ANSWER_SCRIPT: &str = r"
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'reason', ARGV[6], 'entry', ARGV[2], unpack(ARGV, 9))
  redis.call('EXPIRE', KEYS[5], ARGV[8])
end
if ARGV[3] ~= '' and redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[4])
end
return 1
";

/// A server's heartbeat: its liveness record (scored with the Redis clock,
/// so nodes' clocks do not matter), the expiry of the function's keys, and,
/// while a handler runs (ARGV[4]), the request's idle time, which
/// `XCLAIM … JUSTID` resets without counting a delivery.
const BEAT_SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[1], 0, ARGV[4], 'JUSTID')
end
return now
";

/// Removes consumers with nothing pending, idle longer than ARGV[3] ms,
/// other than ourselves; atomic, so a consumer cannot take an entry
/// between the check and its removal.
const SWEEP_SCRIPT: &str = r"
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
";

/// Takes one function's remote requests.
pub struct RemoteListener {
    slot: Arc<Mutex<Option<RemoteRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A remote request being served.
pub struct RemoteRequest {
    stream_entry: String,
    id: String,
    reply_key: String,
    body: Vec<u8>,
    /// The key a large body was kept in, dropped with the answer.
    body_key: Option<String>,
    function: String,
    namespace: String,
    stream: String,
    answer_link: Arc<Mutex<RedisLink>>,
    /// Tells the listener the request is finished, whatever the outcome.
    _finished: mpsc::Sender<()>,
}

impl RemoteRequest {
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        if out.len() != self.body.len() {
            return Err(CallError::Protocol("request length mismatch".into()));
        }
        out.copy_from_slice(&self.body);
        Ok(())
    }

    pub fn reply(self, reply: &[u8]) -> Result<(), CallError> {
        self.answer(REPLY_OK, reply)
    }

    pub fn fail(self, message: &str) -> Result<(), CallError> {
        self.answer(REPLY_FAILED, message.as_bytes())
    }

    fn answer(self, status: u8, body: &[u8]) -> Result<(), CallError> {
        let mut link = self.answer_link.lock().unwrap_or_else(|e| e.into_inner());
        let answer = Answer {
            namespace: &self.namespace,
            function: &self.function,
            stream: &self.stream,
            stream_entry: &self.stream_entry,
            id: &self.id,
            reply_key: Some(&self.reply_key),
            body_key: self.body_key.as_deref(),
            dead: None,
        };
        answer.send(&mut link, status, body)
    }
}

/// What the answer script needs about one entry.
struct Answer<'a> {
    namespace: &'a str,
    function: &'a str,
    stream: &'a str,
    stream_entry: &'a str,
    id: &'a str,
    /// `None`: write no reply (the entry named a list not its own).
    reply_key: Option<&'a str>,
    /// A body kept beside the entry, dropped with it.
    body_key: Option<&'a str>,
    /// Copy the entry to the dead-letter stream: the reason, and the entry's fields.
    dead: Option<(&'a str, &'a HashMap<String, Vec<u8>>)>,
}

impl Answer<'_> {
    fn send(&self, link: &mut RedisLink, status: u8, body: &[u8]) -> Result<(), CallError> {
        let mut element = Vec::new();
        if self.reply_key.is_some() {
            element.reserve(body.len() + 1);
            element.push(status);
            element.extend_from_slice(body);
        }
        // Scripts are hashed once per process, not per answer.
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ANSWER_SCRIPT));
        let done = keys::done_marker(self.namespace, self.function, self.id);
        // Only a dead letter names the dead-letter stream; otherwise any key of the slot does.
        let dead_stream = self.dead.map(|_| keys::dead_letters(self.namespace, self.function));
        link.run("answering", |c| {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation
                .key(&done)
                .key(self.reply_key.unwrap_or(self.stream))
                .key(self.stream)
                .key(self.body_key.unwrap_or(self.stream))
                .key(dead_stream.as_deref().unwrap_or(self.stream))
                .arg(GROUP)
                .arg(self.stream_entry)
                .arg(&element)
                .arg(KEEP_SECONDS)
                .arg(if self.body_key.is_some() { "1" } else { "0" })
                .arg(self.dead.map_or("", |(reason, _)| reason))
                .arg(DEAD_LETTERS_KEPT)
                .arg(FORGET_SECONDS);
            if let Some((_, fields)) = self.dead {
                for (name, value) in fields {
                    invocation.arg(name).arg(value);
                }
            }
            invocation.invoke::<i64>(c)
        })?;
        Ok(())
    }
}

/// What the listener thread needs.
struct Source {
    link: RedisLink,
    answer_link: Arc<Mutex<RedisLink>>,
    function: String,
    namespace: String,
    stream: String,
    servers: String,
    dead_stream: String,
    consumer: String,
    slot: Arc<Mutex<Option<RemoteRequest>>>,
    notify: Arc<dyn Fn() + Send + Sync>,
    stop: Arc<AtomicBool>,
    beat_script: redis::Script,
    last_beat: Option<Instant>,
    last_sweep: Option<Instant>,
}

impl RemoteListener {
    /// Starts taking requests for `function`; `notify` wakes the guest thread.
    /// Redis being down only delays this: the thread keeps retrying.
    pub fn start(
        redis_url: &str,
        namespace: &str,
        function: &str,
        consumer: &str,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, CallError> {
        let slot = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let source = Source {
            link: RedisLink::new(redis_url)?,
            answer_link: Arc::new(Mutex::new(RedisLink::new(redis_url)?)),
            function: function.to_owned(),
            namespace: namespace.to_owned(),
            stream: keys::request_stream(namespace, function),
            servers: keys::servers(namespace, function),
            dead_stream: keys::dead_letters(namespace, function),
            consumer: consumer.to_owned(),
            slot: slot.clone(),
            notify,
            stop: stop.clone(),
            beat_script: redis::Script::new(BEAT_SCRIPT),
            last_beat: None,
            last_sweep: None,
        };
        let thread = std::thread::Builder::new()
            .name("cwasi-remote-listen".into())
            .spawn(move || source.run())
            .map_err(CallError::Io)?;
        Ok(Self { slot, stop, thread: Some(thread) })
    }

    /// The request waiting for the guest, if any.
    pub fn take(&self) -> Option<RemoteRequest> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for RemoteListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The thread wakes within a second (its blocking read times out).
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One entry of the stream.
struct Entry {
    stream_id: String,
    fields: HashMap<String, Vec<u8>>,
    /// How often it was delivered, counting this delivery.
    deliveries: u64,
}

impl Source {
    fn run(mut self) {
        let mut ready = false;
        let mut last_recovery: Option<Instant> = None;
        let mut warned = false;
        while !self.stop.load(Ordering::Acquire) {
            let recover = last_recovery.is_none_or(|at| at.elapsed() > RECOVERY_INTERVAL) || !ready;
            if recover {
                last_recovery = Some(Instant::now());
            }
            if ready {
                self.housekeeping();
            }
            match self.next_entry(&mut ready, recover) {
                Ok(Some(entry)) => {
                    warned = false;
                    self.hand_over(entry);
                }
                Ok(None) => warned = false,
                Err(e) => {
                    ready = false;
                    if !warned {
                        tracing::warn!(function = %self.function, redis = %self.link.url(), "remote requests paused: {e}");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Refreshes the liveness record, and once a minute removes consumers of
    /// instances that stopped. Failures only wait for the next turn.
    fn housekeeping(&mut self) {
        if self.last_beat.is_none_or(|at| at.elapsed() >= BEAT) {
            let _ = self.beat(None);
        }
        if self.last_sweep.is_none_or(|at| at.elapsed() >= CONSUMER_SWEEP) {
            self.last_sweep = Some(Instant::now());
            static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWEEP_SCRIPT));
            let (script, stream, consumer) = (&*SCRIPT, &self.stream, &self.consumer);
            let idle_ms = CONSUMER_FORGET.as_millis() as u64;
            match self.link.run("removing stopped consumers", |c| {
                script.key(stream).arg(GROUP).arg(consumer).arg(idle_ms).invoke::<i64>(c)
            }) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(function = %self.function, removed, "removed consumers of stopped servers")
                }
                Err(e) => tracing::debug!(function = %self.function, "consumer sweep: {e}"),
            }
        }
    }

    /// One heartbeat; `handling` also resets that entry's idle time so no
    /// other server claims it while our handler runs.
    fn beat(&mut self, handling: Option<&str>) -> Result<(), CallError> {
        self.last_beat = Some(Instant::now());
        let (script, servers, stream, dead) = (&self.beat_script, &self.servers, &self.stream, &self.dead_stream);
        let consumer = &self.consumer;
        self.link.run("heartbeat", |c| {
            script
                .key(servers)
                .key(stream)
                .key(dead)
                .arg(consumer)
                .arg(FORGET_SECONDS)
                .arg(GROUP)
                .arg(handling.unwrap_or(""))
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    /// When `recover`ing (at start, after Redis trouble, and once a second):
    /// our own pending entries, then entries a stopped server left
    /// unacknowledged. Then new ones, blocking up to 1 s.
    fn next_entry(&mut self, ready: &mut bool, recover: bool) -> Result<Option<Entry>, CallError> {
        let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
        if !*ready {
            self.link.run("XGROUP CREATE", |c| create_group(c, &stream))?;
            // Callers find the function alive before they find it ready.
            self.beat(None)?;
            tracing::info!(function = %self.function, redis = %self.link.url(), "remote serving ready");
            *ready = true;
        }
        if recover && let Some(mut entry) = self.recover_entry(&stream, &consumer)? {
            entry.deliveries = self.deliveries(&entry.stream_id)?;
            return Ok(Some(entry));
        }
        // An error here (NOGROUP when Redis lost its data, say) makes `run`
        // create the group again before the next read.
        let new: Value = self.link.run("XREADGROUP >", |c| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query(c)
        })?;
        Ok(first_read_entry(&new))
    }

    fn recover_entry(&mut self, stream: &str, consumer: &str) -> Result<Option<Entry>, CallError> {
        let own: Value = self.link.run("XREADGROUP 0", |c| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(stream)
                .arg("0")
                .query(c)
        })?;
        if let Some(entry) = first_read_entry(&own) {
            return Ok(Some(entry));
        }
        let claimed: Value = self.link.run("XAUTOCLAIM", |c| {
            redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let claimed = first_claimed_entry(&claimed);
        if let Some(entry) = &claimed {
            tracing::info!(function = %self.function, entry = %entry.stream_id, "claimed a request left by a server that stopped");
        }
        Ok(claimed)
    }

    /// The delivery count of a pending entry (`XPENDING`), counting this delivery.
    fn deliveries(&mut self, stream_id: &str) -> Result<u64, CallError> {
        let stream = &self.stream;
        let pending: Value = self.link.run("XPENDING", |c| {
            redis::cmd("XPENDING").arg(stream).arg(GROUP).arg(stream_id).arg(stream_id).arg(1).query(c)
        })?;
        Ok(pending_deliveries(&pending).unwrap_or(1))
    }

    /// Acknowledges `entry` without handling it: copied to the dead-letter
    /// stream with `reason`, its caller answered `PeerFailed` when the entry
    /// names its own reply list. Keys the entry names outside its own are
    /// never touched.
    fn refuse(
        &mut self,
        entry: &Entry,
        reason: &str,
        id: Option<&str>,
        reply_key: Option<&str>,
        body_key: Option<&str>,
    ) {
        tracing::warn!(function = %self.function, entry = %entry.stream_id, "request moved to {}: {reason}", self.dead_stream);
        let answer = Answer {
            namespace: &self.namespace,
            function: &self.function,
            stream: &self.stream,
            stream_entry: &entry.stream_id,
            id: id.unwrap_or(""),
            reply_key,
            body_key,
            dead: Some((reason, &entry.fields)),
        };
        // Redis went away: the entry stays pending and comes back.
        let _ = answer.send(&mut self.link, REPLY_FAILED, reason.as_bytes());
    }

    /// Checks `entry`, gives it to the guest and waits until it is finished.
    fn hand_over(&mut self, mut entry: Entry) {
        let field = |name: &str| entry.fields.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let (Some(id), Some(reply_key)) = (field("id"), field("reply")) else {
            self.refuse(&entry, "malformed request (no id or no reply key)", None, None, None);
            return;
        };
        let body_key = field("bodykey");
        if let Err(reason) = keys::check_entry_keys(&self.namespace, &id, &reply_key, body_key.as_deref()) {
            let reason = format!("refused: {reason}");
            // Answer only through a reply list that is really this request's.
            let own_reply = (reply_key == keys::reply_list(&self.namespace, &id)).then_some(reply_key.as_str());
            self.refuse(&entry, &reason, Some(&id), own_reply, None);
            return;
        }
        let done = keys::done_marker(&self.namespace, &self.function, &id);
        match self.link.run("EXISTS", |c| redis::cmd("EXISTS").arg(&done).query::<bool>(c)) {
            Ok(true) => {
                tracing::info!(function = %self.function, request = %id, "request delivered again after it was answered; not handling it twice");
                let _ = self.link.run("XACK", |c| ack_and_delete(c, &self.stream, &entry.stream_id));
                return;
            }
            Ok(false) => {}
            // Redis went away again: the entry stays pending and comes back.
            Err(_) => return,
        }
        if entry.deliveries > MAX_DELIVERIES {
            let reason = format!(
                "{} did not finish request {id} in {MAX_DELIVERIES} deliveries (its handler trapped or its server stopped each time); the request was moved to {}",
                self.function, self.dead_stream
            );
            self.refuse(&entry, &reason, Some(&id), Some(&reply_key), body_key.as_deref());
            return;
        }
        let body = match &body_key {
            None => entry.fields.remove("body").unwrap_or_default(),
            Some(key) => match self.link.run("GET body", |c| redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(c)) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    // Its caller hears why, instead of waiting for its deadline.
                    let reason = format!("the body of request {id} expired before a server took it");
                    self.refuse(&entry, &reason, Some(&id), Some(&reply_key), None);
                    return;
                }
                Err(_) => return,
            },
        };
        let stream_id = entry.stream_id.clone();
        let (finished, finished_rx) = mpsc::channel();
        let request = RemoteRequest {
            stream_entry: stream_id.clone(),
            id,
            reply_key,
            body,
            body_key,
            function: self.function.clone(),
            namespace: self.namespace.clone(),
            stream: self.stream.clone(),
            answer_link: self.answer_link.clone(),
            _finished: finished,
        };
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
        (self.notify)();
        // One request at a time: others stay in the stream for other servers.
        // While the handler runs (minutes, maybe), the heartbeat keeps the
        // entry ours: it dies with this process, and then another claims it.
        while !self.stop.load(Ordering::Acquire) {
            let next_beat = self.last_beat.map_or(Duration::ZERO, |at| BEAT.saturating_sub(at.elapsed()));
            match finished_rx.recv_timeout(next_beat.min(Duration::from_millis(200))) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.last_beat.is_none_or(|at| at.elapsed() >= BEAT)
                        && let Err(e) = self.beat(Some(&stream_id))
                    {
                        tracing::warn!(function = %self.function, "heartbeat of a running request failed: {e}");
                    }
                }
                _ => break,
            }
        }
    }
}

fn create_group(c: &mut Connection, stream: &str) -> RedisResult<()> {
    // From the start of the stream: requests queued before any server ran count.
    match redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query::<()>(c) {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn ack_and_delete(c: &mut Connection, stream: &str, entry: &str) -> RedisResult<()> {
    redis::pipe().cmd("XACK").arg(stream).arg(GROUP).arg(entry).cmd("XDEL").arg(stream).arg(entry).query(c)
}

/// The first entry of an `XREADGROUP` reply: `[[stream, [[id, [k, v, …]], …]]]`.
fn first_read_entry(reply: &Value) -> Option<Entry> {
    let Value::Array(streams) = reply else { return None };
    let Value::Array(stream) = streams.first()? else { return None };
    parse_entries(stream.get(1)?)
}

/// The first entry of an `XAUTOCLAIM` reply: `[next, [[id, [k, v, …]], …], deleted]`.
fn first_claimed_entry(reply: &Value) -> Option<Entry> {
    let Value::Array(parts) = reply else { return None };
    parse_entries(parts.get(1)?)
}

/// The delivery count in an `XPENDING` range reply: `[[id, consumer, idle, count]]`.
fn pending_deliveries(reply: &Value) -> Option<u64> {
    let Value::Array(entries) = reply else { return None };
    let Value::Array(entry) = entries.first()? else { return None };
    match entry.get(3)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn parse_entries(entries: &Value) -> Option<Entry> {
    let Value::Array(entries) = entries else { return None };
    // Entries deleted while pending come back with nil fields: skip them.
    entries.iter().find_map(|entry| {
        let Value::Array(pair) = entry else { return None };
        let stream_id = match pair.first()? {
            Value::BulkString(id) => String::from_utf8_lossy(id).into_owned(),
            Value::SimpleString(id) => id.clone(),
            _ => return None,
        };
        let Value::Array(kv) = pair.get(1)? else { return None };
        let fields = kv
            .chunks(2)
            .filter_map(|chunk| match chunk {
                [Value::BulkString(k), Value::BulkString(v)] => {
                    Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                }
                _ => None,
            })
            .collect();
        Some(Entry { stream_id, fields, deliveries: 1 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_and_claim_replies_and_skips_deleted_entries() {
        let entry =
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("id"), bulk("r1"), bulk("body"), bulk("xyz")])]);
        let deleted = Value::Array(vec![bulk("0-1"), Value::Nil]);
        let read =
            Value::Array(vec![Value::Array(vec![bulk("stream"), Value::Array(vec![deleted.clone(), entry.clone()])])]);
        let parsed = first_read_entry(&read).unwrap();
        assert_eq!(parsed.stream_id, "1-0");
        assert_eq!(parsed.fields["body"], b"xyz");
        let claimed = Value::Array(vec![bulk("0-0"), Value::Array(vec![entry]), Value::Array(vec![])]);
        assert_eq!(first_claimed_entry(&claimed).unwrap().fields["id"], b"r1");
        assert!(first_read_entry(&Value::Nil).is_none());
        assert!(
            first_claimed_entry(&Value::Array(vec![bulk("0-0"), Value::Array(vec![]), Value::Array(vec![])])).is_none()
        );
    }

    #[test]
    fn reads_the_delivery_count_of_a_pending_entry() {
        let pending =
            Value::Array(vec![Value::Array(vec![bulk("1-0"), bulk("node-1"), Value::Int(5012), Value::Int(3)])]);
        assert_eq!(pending_deliveries(&pending), Some(3));
        assert_eq!(pending_deliveries(&Value::Array(vec![])), None);
    }
}
