//! Remote mode: functions on different nodes exchange requests through
//! Redis — one server, or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`,
//! whose redirections and failovers the cluster client follows).
//!
//! Each function's keys share the hash tag `{<namespace>/<function>}`
//! (`keys`), so every script stays on one cluster slot while a namespace's
//! functions spread over the cluster. Requests go to the function's stream,
//! read by the consumer group `servers` (`XREADGROUP`); a request delivered
//! to a server that stopped unacknowledged is claimed by another
//! (`XAUTOCLAIM`), so requests survive a server restart and queue while none
//! runs. Each request carries an id and the key of a reply list its caller
//! waits on (`BLMOVE` onto itself: a reply read on a connection that breaks
//! stays for the retry). Needs Redis ≥ 6.2.
//!
//! The send script writes the request's state beside its entry, so a send
//! retried over a reconnect adds nothing, and a caller that reconnected
//! (a failover) finds out whether its request survived and sends it again if
//! not. A server answers, marks the state done and acknowledges in one
//! script, and only a request read again (claimed, not new) is checked for
//! being done already. A failover (or a restart that reloads its log) can
//! lose those last writes after the caller read its answer; the request
//! then comes back, and the server that handled it answers again from its
//! memory of recent answers (`answered`) instead of handling it twice.
//!
//! A small call to a single server costs each side one round trip: the
//! caller writes its send and its first blocking read at once (`client`);
//! a handler thread with no local callers blocks in Redis itself, and its
//! answer goes out without waiting, acknowledged with the next read
//! (`listener`, `request`). Every Redis operation retries over reconnects
//! for a bounded time, then fails the call with a typed error.
//!
//! Promises kept in Redis (constants in `keys`, `intake` and `listener`):
//! - a request is handed to a handler at most `MAX_DELIVERIES` (3) times;
//!   the next delivery moves it to the function's dead-letter stream with
//!   the reason, and its caller gets `PeerFailed`;
//! - while a handler runs, its server's listener thread resets the
//!   request's idle time every `CLAIM_IDLE`/3 (`XCLAIM … JUSTID`, which
//!   counts no delivery), so only a server that stopped loses it;
//! - servers record that they live (scored with the Redis clock) every
//!   1.7 s; a send checks it in the same script as its `XADD`: no server
//!   seen for `SERVER_GONE` (30 s) is `UnknownPeer` at once, and a caller
//!   waiting that long withdraws its request and gets `UnknownPeer`;
//! - answered entries are deleted, so a stream holds only unanswered
//!   requests, at most `MAX_QUEUED`; replies, bodies and states expire after
//!   `KEEP_SECONDS`; a function's keys expire a day after its last server;
//!   consumers of servers gone for 10 min are removed;
//! - a server only touches the keys an entry's own id names under its own
//!   function: a forged entry is dead-lettered, nothing it names is touched.

mod answered;
mod client;
mod endpoint;
mod intake;
mod keys;
mod link;
mod listener;
mod request;
mod transport;

pub use client::RemoteChannel;
pub use endpoint::{Endpoint, EndpointError};
pub use link::{CA_FILE_ENV, LinkPool, RETRY_ENV, RedisLink, cluster_seeds, connection_info};
pub use listener::{LocalCallers, RemoteListener};
pub use request::RemoteRequest;
pub use transport::{RedisLinks, RemoteTransport};
