//! Taking a function's requests from its stream: reading new entries,
//! claiming those a stopped server left, and turning an entry into a
//! [`RemoteRequest`] only when it is well formed, really this function's,
//! not answered yet and not delivered too often.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::answered::{Answered, PastAnswer};
use super::keys::{FunctionKeys, GROUP, MAX_DELIVERIES, REPLY_FAILED};
use super::link::{LinkPool, PooledLink, RedisLink};
use super::request::{Answer, InFlight, RemoteRequest};
use crate::CallError;
use crate::trace::TraceContext;

/// A request delivered to a server that stopped is claimed by another after
/// this long without a heartbeat.
pub(crate) const CLAIM_IDLE: Duration = Duration::from_secs(5);

/// One entry of the stream.
pub(crate) struct Entry {
    pub stream_id: String,
    fields: HashMap<String, Vec<u8>>,
    /// How often it was delivered, counting this delivery.
    deliveries: u64,
    /// Claimed from a stopped server (or from ourselves, after a lost
    /// connection), not new: it may have been answered already.
    recovered: bool,
}

/// What every reader of one function's stream shares.
pub(crate) struct Intake {
    pub function: String,
    pub keys: FunctionKeys,
    pub stream: String,
    pub dead_stream: String,
    pub consumer: String,
    pub pool: Arc<LinkPool>,
    pub in_flight: Arc<InFlight>,
    pub answered: Arc<Answered>,
}

impl Intake {
    /// A new entry, blocking up to `block` (answers sent without waiting on
    /// `link` are collected in the same wake-up).
    pub fn read_new(&self, link: &mut RedisLink, block: Duration) -> Result<Option<Entry>, CallError> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(1);
        read.arg("BLOCK").arg(block.as_millis().max(1) as u64).arg("STREAMS").arg(&self.stream).arg(">");
        let new: Value = link.run_after_unread("XREADGROUP", &read)?;
        Ok(first_read_entry(&new))
    }

    /// An entry left unacknowledged for `CLAIM_IDLE` by a server that
    /// stopped (or by a connection of ours that broke), with its delivery
    /// count; never one this process is handling.
    pub fn claim_stale(&self, link: &mut RedisLink) -> Result<Option<Entry>, CallError> {
        let claimed: Value = link.run("XAUTOCLAIM", |c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(1)
                .query(c)
        })?;
        let Some(mut entry) = first_claimed_entry(&claimed) else { return Ok(None) };
        if self.in_flight.handles(&entry.stream_id, None) {
            return Ok(None);
        }
        let stream = &self.stream;
        let pending: Value = link.run("XPENDING", |c| {
            redis::cmd("XPENDING").arg(stream).arg(GROUP).arg(&entry.stream_id).arg(&entry.stream_id).arg(1).query(c)
        })?;
        entry.deliveries = pending_deliveries(&pending).unwrap_or(1);
        entry.recovered = true;
        tracing::info!(function = %self.function, entry = %entry.stream_id, "claimed a request left by a server that stopped");
        Ok(Some(entry))
    }

    /// Checks `entry` and makes it a request answered on `link`; `None`
    /// when it was refused (dead-lettered), answered already, or Redis went
    /// away (it stays pending and comes back).
    pub fn admit(&self, mut link: PooledLink, mut entry: Entry) -> Option<RemoteRequest> {
        let field = |name: &str| entry.fields.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let (Some(id), Some(reply_key)) = (field("id"), field("reply")) else {
            self.refuse(&mut link, &entry, "malformed request (no id or no reply key)", None, None, None);
            return None;
        };
        let body_key = field("bodykey");
        // A malformed context starts a new trace at the next call, as the
        // W3C format asks; the request itself is fine.
        let trace = entry.fields.get("tp").and_then(|tp| std::str::from_utf8(tp).ok()).and_then(TraceContext::parse);
        if let Err(reason) = self.keys.check_entry(&id, &reply_key, body_key.as_deref()) {
            let reason = format!("refused: {reason}");
            // Answer only through a reply list that is really this request's.
            let own_reply = (reply_key == self.keys.reply_list(&id)).then_some(reply_key.as_str());
            self.refuse(&mut link, &entry, &reason, Some(&id), own_reply, None);
            return None;
        }
        // Brought back by a failover (or sent again by its caller) while its
        // handler still runs here: the handler's answer acknowledges the
        // same entry; a new one stays pending, is claimed again, and is
        // answered from `answered` by then.
        if self.in_flight.handles(&entry.stream_id, Some(&id)) {
            return None;
        }
        if let Some(past) = self.answered.get(&id) {
            self.answer_again(&mut link, &entry, &id, &reply_key, body_key.as_deref(), past);
            return None;
        }
        // A new entry is new: its send wrote its state once, so the stream
        // never holds a request twice. Only one read again may have been
        // answered already.
        if entry.recovered {
            let state = self.keys.request_state(&id);
            match link.run("GET state", |c| redis::cmd("GET").arg(&state).query::<Option<String>>(c)) {
                Ok(Some(done)) if done == "d" => {
                    tracing::info!(function = %self.function, request = %id, "request delivered again after it was answered; not handling it twice");
                    let (stream, entry_id) = (&self.stream, &entry.stream_id);
                    let _ =
                        link.run("XACK", |c| redis::cmd("XACK").arg(stream).arg(GROUP).arg(entry_id).query::<()>(c));
                    let _ = link.run("XDEL", |c| redis::cmd("XDEL").arg(stream).arg(entry_id).query::<()>(c));
                    return None;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        if entry.deliveries > MAX_DELIVERIES {
            let reason = format!(
                "{} did not finish request {id} in {MAX_DELIVERIES} deliveries (its handler trapped or its server stopped each time); the request was moved to {}",
                self.function, self.dead_stream
            );
            self.refuse(&mut link, &entry, &reason, Some(&id), Some(&reply_key), body_key.as_deref());
            return None;
        }
        let body = match &body_key {
            None => entry.fields.remove("body").unwrap_or_default(),
            Some(key) => match link.run("GET body", |c| redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(c)) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    // Its caller hears why, instead of waiting for its deadline.
                    let reason = format!("the body of request {id} expired before a server took it");
                    self.refuse(&mut link, &entry, &reason, Some(&id), Some(&reply_key), None);
                    return None;
                }
                Err(_) => return None,
            },
        };
        if !self.in_flight.insert(&entry.stream_id, &id) {
            // Another thread took it meanwhile.
            return None;
        }
        Some(RemoteRequest {
            stream_entry: entry.stream_id,
            id,
            reply_key,
            body,
            body_key,
            keys: self.keys.clone(),
            stream: self.stream.clone(),
            link,
            in_flight: self.in_flight.clone(),
            answered: self.answered.clone(),
            recovered: entry.recovered,
            trace,
        })
    }

    /// Answers `entry` again as this server answered it before Redis lost
    /// that answer, without handling it twice. An answer too large to have
    /// been kept fails the call, with why, if its caller still waits.
    fn answer_again(
        &self,
        link: &mut RedisLink,
        entry: &Entry,
        id: &str,
        reply_key: &str,
        body_key: Option<&str>,
        past: PastAnswer,
    ) {
        tracing::info!(function = %self.function, request = %id, entry = %entry.stream_id, "request delivered again after this server answered it (Redis lost the answer: a failover or a restart?); answering it again, not handling it twice");
        let lost;
        let (status, body) = match &past.body {
            Some(body) => (past.status, body.as_slice()),
            None => {
                lost = format!(
                    "{} handled request {id}, but Redis lost its answer (a failover or a restart?), which this server no longer keeps (too large, or dropped for newer answers); the request was not handled twice",
                    self.function
                );
                (REPLY_FAILED, lost.as_bytes())
            }
        };
        let answer = Answer {
            keys: &self.keys,
            stream: &self.stream,
            stream_entry: &entry.stream_id,
            id,
            reply_key: Some(reply_key),
            body_key,
            dead: None,
        };
        // Redis went away: the entry stays pending and comes back here.
        let _ = answer.send(link, status, body);
    }

    /// Acknowledges `entry` without handling it: copied to the dead-letter
    /// stream with `reason`, its caller answered `PeerFailed` when the entry
    /// names its own reply list. Keys the entry names outside its own are
    /// never touched.
    fn refuse(
        &self,
        link: &mut RedisLink,
        entry: &Entry,
        reason: &str,
        id: Option<&str>,
        reply_key: Option<&str>,
        body_key: Option<&str>,
    ) {
        tracing::warn!(function = %self.function, entry = %entry.stream_id, "request moved to {}: {reason}", self.dead_stream);
        let answer = Answer {
            keys: &self.keys,
            stream: &self.stream,
            stream_entry: &entry.stream_id,
            id: id.unwrap_or(""),
            reply_key,
            body_key,
            dead: Some((reason, &entry.fields)),
        };
        // Redis went away: the entry stays pending and comes back.
        let _ = answer.send(link, REPLY_FAILED, reason.as_bytes());
    }
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
        Some(Entry { stream_id, fields, deliveries: 1, recovered: false })
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
