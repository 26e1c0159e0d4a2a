//! The serving side of remote mode: a thread that takes requests from the
//! function's stream, one at a time, and hands them to the guest thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use redis::{Connection, RedisResult, Value};

use super::keys::{self, GROUP, KEEP_SECONDS, REPLY_FAILED, REPLY_OK};
use super::link::RedisLink;
use crate::CallError;

/// A request delivered to a dead server is claimed by another after this long.
const CLAIM_IDLE: Duration = Duration::from_secs(5);
/// How often a server looks for such requests (and its own, after a reconnect).
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Answers, marks done and acknowledges atomically (and drops a body kept
/// beside the entry); a request already done (delivered twice) is only
/// acknowledged.
const ANSWER_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then
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
        let mut element = Vec::with_capacity(body.len() + 1);
        element.push(status);
        element.extend_from_slice(body);
        let done = keys::done_marker(&self.namespace, &self.function, &self.id);
        let script = redis::Script::new(ANSWER_SCRIPT);
        let mut link = self.answer_link.lock().unwrap_or_else(|e| e.into_inner());
        link.run("answering", |c| {
            script
                .key(&done)
                .key(&self.reply_key)
                .key(&self.stream)
                .key(self.body_key.as_deref().unwrap_or(&self.stream))
                .arg(GROUP)
                .arg(&self.stream_entry)
                .arg(&element)
                .arg(KEEP_SECONDS)
                .arg(if self.body_key.is_some() { "1" } else { "0" })
                .invoke::<i64>(c)
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
    consumer: String,
    slot: Arc<Mutex<Option<RemoteRequest>>>,
    notify: Arc<dyn Fn() + Send + Sync>,
    stop: Arc<AtomicBool>,
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
            consumer: consumer.to_owned(),
            slot: slot.clone(),
            notify,
            stop: stop.clone(),
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
}

impl Source {
    fn run(mut self) {
        let mut ready = false;
        let mut last_recovery: Option<std::time::Instant> = None;
        let mut warned = false;
        while !self.stop.load(Ordering::Acquire) {
            let recover = last_recovery.is_none_or(|at| at.elapsed() > RECOVERY_INTERVAL) || !ready;
            if recover {
                last_recovery = Some(std::time::Instant::now());
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

    /// When `recover`ing (at start, after Redis trouble, and once a second):
    /// our own pending entries, then entries a dead server left
    /// unacknowledged. Then new ones, blocking up to 1 s.
    fn next_entry(&mut self, ready: &mut bool, recover: bool) -> Result<Option<Entry>, CallError> {
        let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
        if !*ready {
            self.link.run("XGROUP CREATE", |c| create_group(c, &stream))?;
            tracing::info!(function = %self.function, redis = %self.link.url(), "remote serving ready");
            *ready = true;
        }
        if recover && let Some(entry) = self.recover_entry(&stream, &consumer)? {
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

    /// Gives `entry` to the guest and waits until it is finished.
    fn hand_over(&mut self, entry: Entry) {
        let field = |name: &str| entry.fields.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let (Some(id), Some(reply_key)) = (field("id"), field("reply")) else {
            tracing::warn!(function = %self.function, entry = %entry.stream_id, "dropping a malformed request");
            let _ = self.link.run("XACK", |c| ack_and_delete(c, &self.stream, &entry.stream_id));
            return;
        };
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
        let mut fields = entry.fields;
        let body_key = fields.get("bodykey").map(|k| String::from_utf8_lossy(k).into_owned());
        let body = match &body_key {
            None => fields.remove("body").unwrap_or_default(),
            Some(key) => match self.link.run("GET body", |c| redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(c)) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    tracing::warn!(function = %self.function, request = %id, "dropping a request whose body expired");
                    let _ = self.link.run("XACK", |c| ack_and_delete(c, &self.stream, &entry.stream_id));
                    return;
                }
                Err(_) => return,
            },
        };
        let (finished, finished_rx) = mpsc::channel();
        let request = RemoteRequest {
            stream_entry: entry.stream_id,
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
        while !self.stop.load(Ordering::Acquire) {
            match finished_rx.recv_timeout(Duration::from_millis(200)) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
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
        Some(Entry { stream_id, fields })
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
}
