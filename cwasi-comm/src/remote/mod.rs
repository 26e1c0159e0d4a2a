//! Remote mode: functions on different nodes exchange requests through Redis.
//!
//! Requests go to a stream per function, `cwasi:{<namespace>}:req:<function>`,
//! read by the consumer group `servers` (`XREADGROUP`); a request delivered
//! to a server that died unacknowledged is claimed again by another
//! (`XAUTOCLAIM`), so requests survive a server restart and are queued while
//! none runs. Each request carries an id and the key of a reply list the
//! caller waits on (`BLMOVE` onto itself, then `DEL`: a reply read on a
//! connection that breaks stays for the retry), so a reply that arrives
//! early, or during a Redis restart, is kept, not lost. Needs Redis ≥ 6.2. A server answers, records the id as done and acknowledges in one
//! Lua script, and skips ids already done: a request delivered twice is
//! handled once. Every Redis operation retries over reconnects for a bounded
//! time, then fails the call with a typed error.

mod client;
mod keys;
mod link;
mod listener;

pub use client::RemoteChannel;
pub use link::{CA_FILE_ENV, RETRY_ENV, RedisLink, connection_info};
pub use listener::{RemoteListener, RemoteRequest};
