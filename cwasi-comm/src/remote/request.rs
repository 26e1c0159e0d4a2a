//! A remote request being served, and its answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::answered::Answered;
use super::keys::{
    DEAD_LETTERS_KEPT, FORGET_SECONDS, FunctionKeys, GROUP, INLINE_BODY_MAX, KEEP_SECONDS, REPLY_FAILED, REPLY_OK,
};
use super::link::{PooledLink, RedisLink};
use crate::CallError;
use crate::trace::TraceContext;

/// Answers, marks the request's state done and acknowledges atomically
/// (and drops a body kept beside the entry); a request already done
/// (delivered twice) is only acknowledged, so the script can run again
/// safely. With a reason (ARGV[6]) the entry is copied to the dead-letter
/// stream first; with an empty answer (ARGV[3]) no reply is written (the
/// entry named a reply list that is not its own).
const ANSWER_SCRIPT: &str = r"
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'reason', ARGV[6], 'entry', ARGV[2], unpack(ARGV, 9))
  redis.call('EXPIRE', KEYS[5], ARGV[8])
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[1]) ~= 'd' then
  redis.call('SET', KEYS[1], 'd', 'EX', ARGV[4])
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

/// The requests being handled in this process, by stream entry (the
/// listener's heartbeat keeps them ours, and recovery never hands them out
/// again) and by request id (a request its caller sent again after a
/// failover, under a new entry, waits for the first handling to end).
#[derive(Default)]
pub(crate) struct InFlight {
    handling: Mutex<Handling>,
    finished: Condvar,
    /// Threads in `wait_finished`: without one, a finish wakes nobody (no
    /// system call per request).
    waiters: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Handling {
    entries: BTreeSet<String>,
    ids: HashSet<String>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handling> {
        self.handling.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `entry` of request `id` for this process; false when either
    /// is being handled here already.
    pub fn insert(&self, entry: &str, id: &str) -> bool {
        let mut handling = self.lock();
        if handling.entries.contains(entry) || handling.ids.contains(id) {
            return false;
        }
        handling.entries.insert(entry.to_owned());
        handling.ids.insert(id.to_owned());
        true
    }

    /// Whether `entry`, or another entry of request `id`, is being handled here.
    pub fn handles(&self, entry: &str, id: Option<&str>) -> bool {
        let handling = self.lock();
        handling.entries.contains(entry) || id.is_some_and(|id| handling.ids.contains(id))
    }

    pub fn all(&self) -> Vec<String> {
        self.lock().entries.iter().cloned().collect()
    }

    fn remove(&self, entry: &str, id: &str) {
        let mut handling = self.lock();
        handling.entries.remove(entry);
        handling.ids.remove(id);
        // Read under the lock that waiters count themselves under.
        if self.waiters.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.finished.notify_all();
        }
    }

    /// Waits up to `timeout` for `entry` to finish; true when it did.
    pub fn wait_finished(&self, entry: &str, timeout: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let guard = self.lock();
        self.waiters.fetch_add(1, Relaxed);
        let (guard, _) = self
            .finished
            .wait_timeout_while(guard, timeout, |handling| handling.entries.contains(entry))
            .unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_sub(1, Relaxed);
        !guard.entries.contains(entry)
    }
}

/// A remote request being served.
pub struct RemoteRequest {
    pub(crate) stream_entry: String,
    pub(crate) id: String,
    pub(crate) reply_key: String,
    pub(crate) body: Vec<u8>,
    /// The key a large body was kept in, dropped with the answer.
    pub(crate) body_key: Option<String>,
    pub(crate) keys: FunctionKeys,
    pub(crate) stream: String,
    /// The link the answer goes out on: sent without waiting, its
    /// acknowledgement read by the link's next use (the next read).
    pub(crate) link: PooledLink,
    pub(crate) in_flight: Arc<InFlight>,
    /// Where the answer is remembered, in case Redis loses it.
    pub(crate) answered: Arc<Answered>,
    /// Read again (claimed), not new: it may have been answered already.
    pub(crate) recovered: bool,
    /// The caller's trace context (a caller may send none).
    pub(crate) trace: Option<TraceContext>,
}

impl RemoteRequest {
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    pub fn read_into(&self, out: &mut [u8]) -> Result<(), CallError> {
        if out.len() != self.body.len() {
            return Err(CallError::Protocol("request length mismatch".into()));
        }
        out.copy_from_slice(&self.body);
        Ok(())
    }

    pub fn reply(mut self, reply: &[u8]) -> Result<(), CallError> {
        self.answer(REPLY_OK, reply)
    }

    pub fn fail(mut self, message: &str) -> Result<(), CallError> {
        self.answer(REPLY_FAILED, message.as_bytes())
    }

    fn answer(&mut self, status: u8, body: &[u8]) -> Result<(), CallError> {
        // Before it is sent: an answer that fails to go out is not handled
        // again either when the request comes back.
        self.answered.remember(&self.id, status, body);
        let answer = Answer {
            keys: &self.keys,
            stream: &self.stream,
            stream_entry: &self.stream_entry,
            id: &self.id,
            reply_key: Some(&self.reply_key),
            body_key: self.body_key.as_deref(),
            dead: None,
        };
        let script = answer.command(status, body);
        // Only a small answer goes out without waiting: its script is kept
        // until acknowledged, and a large one is slow to send anyway (a copy
        // of up to 4 GiB kept for a retry would cost more than the wait).
        if !self.link.is_cluster() && body.len() <= INLINE_BODY_MAX {
            // A new request cannot have been answered yet: a transaction does
            // what the script does, at a third of its cost in Redis. The
            // script, which checks, is what goes again if the connection
            // breaks before the answer is acknowledged.
            let (packed, answers) = if self.recovered {
                (script.get_packed_command(), 1)
            } else {
                let transaction = answer.transaction(status, body);
                (transaction.get_packed_pipeline(), transaction.len() + 2)
            };
            if self.link.send_without_waiting(&packed, answers, Some(script)) {
                return Ok(());
            }
            // Not sent: send it the waiting way (the script was moved into the attempt).
            let script = answer.command(status, body);
            self.link.run_within("answering", ANSWER_RETRY, |c| script.query::<i64>(c))?;
            return Ok(());
        }
        self.link.run_within("answering", ANSWER_RETRY, |c| script.query::<i64>(c))?;
        Ok(())
    }
}

/// How long an answer keeps being retried while Redis is unreachable (or a
/// cluster fails over or moves the slot): past it the request is claimed
/// again, and answered from this server's memory of its answers (another
/// server that claims it first handles it again).
const ANSWER_RETRY: Duration = Duration::from_secs(60);

impl Drop for RemoteRequest {
    fn drop(&mut self) {
        self.in_flight.remove(&self.stream_entry, &self.id);
    }
}

/// What the answer script needs about one entry.
pub(crate) struct Answer<'a> {
    pub keys: &'a FunctionKeys,
    pub stream: &'a str,
    pub stream_entry: &'a str,
    pub id: &'a str,
    /// `None`: write no reply (the entry named a list not its own).
    pub reply_key: Option<&'a str>,
    /// A body kept beside the entry, dropped with it.
    pub body_key: Option<&'a str>,
    /// Copy the entry to the dead-letter stream: the reason, and the entry's fields.
    pub dead: Option<(&'a str, &'a HashMap<String, Vec<u8>>)>,
}

impl Answer<'_> {
    /// The answer script as one `EVAL` (never `NOSCRIPT`, so it can go out
    /// without waiting; Redis caches the compiled script by its hash).
    fn command(&self, status: u8, body: &[u8]) -> redis::Cmd {
        let mut element = Vec::new();
        if self.reply_key.is_some() {
            element.reserve(body.len() + 1);
            element.push(status);
            element.extend_from_slice(body);
        }
        let state = self.keys.request_state(self.id);
        // Only a dead letter names the dead-letter stream; otherwise any key of the slot does.
        let dead_stream = self.dead.map(|_| self.keys.dead_letters());
        let mut eval = redis::cmd("EVAL");
        eval.arg(ANSWER_SCRIPT)
            .arg(5)
            .arg(&state)
            .arg(self.reply_key.unwrap_or(self.stream))
            .arg(self.stream)
            .arg(self.body_key.unwrap_or(self.stream))
            .arg(dead_stream.as_deref().unwrap_or(self.stream))
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
                eval.arg(name).arg(value);
            }
        }
        eval
    }

    /// What the script does for a request that cannot have been answered
    /// yet (delivered for the first time), as a `MULTI`/`EXEC` transaction.
    fn transaction(&self, status: u8, body: &[u8]) -> redis::Pipeline {
        let mut element = Vec::with_capacity(body.len() + 1);
        element.push(status);
        element.extend_from_slice(body);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(reply_key) = self.reply_key {
            pipe.cmd("SET").arg(self.keys.request_state(self.id)).arg("d").arg("EX").arg(KEEP_SECONDS);
            pipe.cmd("RPUSH").arg(reply_key).arg(&element);
            pipe.cmd("EXPIRE").arg(reply_key).arg(KEEP_SECONDS);
        }
        pipe.cmd("XACK").arg(self.stream).arg(GROUP).arg(self.stream_entry);
        pipe.cmd("XDEL").arg(self.stream).arg(self.stream_entry);
        if let Some(body_key) = self.body_key {
            pipe.cmd("DEL").arg(body_key);
        }
        pipe
    }

    /// Runs the answer script and waits for it.
    pub fn send(&self, link: &mut RedisLink, status: u8, body: &[u8]) -> Result<(), CallError> {
        let command = self.command(status, body);
        link.run_within("answering", ANSWER_RETRY, |c| command.query::<i64>(c))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_sent_again_under_a_new_entry_waits_for_its_first_handling() {
        let in_flight = InFlight::default();
        assert!(in_flight.insert("1-0", "req-a"));
        assert!(in_flight.handles("2-0", Some("req-a")), "the same request under a new entry");
        assert!(!in_flight.insert("2-0", "req-a"));
        assert!(!in_flight.insert("1-0", "req-b"), "the same entry");
        assert!(!in_flight.handles("2-0", None));
        in_flight.remove("1-0", "req-a");
        assert!(!in_flight.handles("1-0", Some("req-a")));
        assert!(in_flight.insert("2-0", "req-a"));
        assert!(in_flight.wait_finished("1-0", Duration::ZERO));
    }
}
