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
//!
//! Promises kept in Redis (constants in `keys` and `listener`):
//! - a request is handed to a handler at most `MAX_DELIVERIES` (3) times;
//!   the next delivery moves it to `cwasi:{<ns>}:dead:<function>` with the
//!   reason, and its caller gets `PeerFailed`;
//! - while a handler runs, its server's listener thread resets the
//!   request's idle time every `CLAIM_IDLE`/3 (`XCLAIM … JUSTID`, which
//!   counts no delivery), so only a server that stopped loses it;
//! - servers record that they live in `cwasi:{<ns>}:servers:<function>`
//!   (scored with the Redis clock) every 1.7 s; a send checks it in the same
//!   script as its `XADD`: no server seen for `SERVER_GONE` (30 s) is
//!   `UnknownPeer` at once, and a caller waiting that long withdraws its
//!   request and gets `UnknownPeer`;
//! - answered entries are deleted, so a stream holds only unanswered
//!   requests, at most `MAX_QUEUED`; replies, bodies and done markers
//!   expire after `KEEP_SECONDS`; a function's keys expire a day after its
//!   last server; consumers of servers gone for 10 min are removed;
//! - a server only touches the keys an entry's own id names in its own
//!   namespace: a forged entry is dead-lettered, nothing it names is touched.

mod client;
mod endpoint;
mod keys;
mod link;
mod listener;

pub use client::RemoteChannel;
pub use endpoint::{Endpoint, EndpointError};
pub use link::{CA_FILE_ENV, RETRY_ENV, RedisLink, connection_info};
pub use listener::{RemoteListener, RemoteRequest};
