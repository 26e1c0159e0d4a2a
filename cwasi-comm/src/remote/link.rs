//! A Redis connection that reconnects, with a bounded retry: to one server
//! (`redis://`, `rediss://`) or to a Redis Cluster (`redis+cluster://`,
//! `rediss+cluster://` with comma-separated seed nodes), whose MOVED/ASK
//! redirections and slot map the cluster client follows.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::{Connection, ConnectionLike, RedisError, RedisResult};

use crate::CallError;

/// How long an operation keeps retrying while Redis is unreachable;
/// `CWASI_REDIS_RETRY_MS` overrides it.
const DEFAULT_RETRY: Duration = Duration::from_secs(5);
pub const RETRY_ENV: &str = "CWASI_REDIS_RETRY_MS";
/// A PEM file of the CA certificates that `rediss://` servers are checked
/// against instead of the system's store (a private CA, as tests use).
pub const CA_FILE_ENV: &str = "CWASI_REDIS_CA_FILE";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer than any blocking command we send (they block at most 1 s).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Past a call's deadline a socket read still waits this long, so that a
/// blocking read that ends at the deadline is heard rather than cut.
const DEADLINE_SLACK: Duration = Duration::from_millis(200);
/// Redirections and reconnects the cluster client tries within one
/// operation before `RedisLink::run`'s own retry takes over.
const CLUSTER_RETRIES: u32 = 4;

/// Where a link connects.
enum Target {
    Server(redis::Client),
    Cluster(ClusterClient),
}

enum Live {
    Server(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Live {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Live::Server(c) => c,
            Live::Cluster(c) => c.as_mut(),
        }
    }
}

/// Commands written without waiting: how many answers they owe, and what
/// to send (idempotent) if the connection breaks before those are read.
struct Unread {
    answers: usize,
    again: Option<redis::Cmd>,
    /// One of its answers was an error.
    failed: bool,
}

/// How long a command sent without waiting (an answer) keeps being retried
/// when it failed: giving up means its request is handled again.
const AGAIN_RETRY: Duration = Duration::from_secs(60);

pub struct RedisLink {
    target: Target,
    /// The URL without its password, for messages.
    shown_url: String,
    connection: Option<Live>,
    retry_for: Duration,
    /// Connections made after the first: a caller waiting on a reply uses it
    /// to notice that Redis (or a cluster's node) went away meanwhile.
    reconnects: u64,
    connected_once: bool,
    /// Commands sent without waiting for their answers (a single server
    /// only), read before the connection's next use.
    unread: Vec<Unread>,
    /// Commands sent without waiting that failed, to send again.
    failed: Vec<redis::Cmd>,
    /// This connection's `CLIENT ID` once asked (`Some(None)`: refused).
    client_id: Option<Option<i64>>,
    /// The deadline of the call this link serves: no operation, retry or
    /// socket read outlasts it.
    deadline: Option<Instant>,
    /// The socket timeouts the connection has now (set only on a change:
    /// two system calls a call otherwise).
    applied_timeout: Duration,
}

impl RedisLink {
    pub fn new(url: &str) -> Result<Self, CallError> {
        let ca_file = std::env::var_os(CA_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        let target = match cluster_seeds(url) {
            Some(seeds) => Target::Cluster(cluster_client(url, &seeds?, ca_file)?),
            None => Target::Server(client(url, ca_file)?),
        };
        let retry_for =
            std::env::var(RETRY_ENV).ok().and_then(|v| v.parse().ok()).map_or(DEFAULT_RETRY, Duration::from_millis);
        Ok(Self {
            target,
            shown_url: redact(url),
            connection: None,
            retry_for,
            reconnects: 0,
            connected_once: false,
            unread: Vec::new(),
            failed: Vec::new(),
            client_id: None,
            deadline: None,
            applied_timeout: IO_TIMEOUT,
        })
    }

    pub fn url(&self) -> &str {
        &self.shown_url
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// How often the link had to connect again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Bounds every operation, retry and socket read of this link by a
    /// call's deadline (`None`: the link's own limits).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Socket timeouts for the next operation: the time left before the
    /// deadline (and a little, so that a blocking read ending at it is
    /// heard), never more than `IO_TIMEOUT`.
    fn apply_timeouts(&mut self) -> RedisResult<()> {
        let timeout = match self.deadline {
            Some(deadline) => (deadline.saturating_duration_since(Instant::now()) + DEADLINE_SLACK).min(IO_TIMEOUT),
            None => IO_TIMEOUT,
        };
        if timeout == self.applied_timeout {
            return Ok(());
        }
        self.applied_timeout = timeout;
        match self.connection.as_mut() {
            Some(Live::Server(c)) => {
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))
            }
            Some(Live::Cluster(c)) => {
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))
            }
            None => Ok(()),
        }
    }

    /// Runs `op`, reconnecting and retrying while Redis is unreachable or
    /// still loading (a cluster: failing over), for at most the retry window
    /// and never past the link's deadline.
    pub fn run<T>(
        &mut self,
        what: &str,
        op: impl FnMut(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Result<T, CallError> {
        self.run_within(what, self.retry_for, op)
    }

    /// [`RedisLink::run`] with a retry window of `retry_for`: an answer is
    /// worth waiting for longer (a slot migrating, a failover), since giving
    /// up on it means its request is handled again.
    pub fn run_within<T>(
        &mut self,
        what: &str,
        retry_for: Duration,
        mut op: impl FnMut(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Result<T, CallError> {
        let window = Instant::now() + retry_for;
        let give_up = self.deadline.map_or(window, |deadline| deadline.min(window));
        let mut backoff = Duration::from_millis(20);
        loop {
            self.settle();
            let ready = self.connection().map(|_| ()).and_then(|()| self.apply_timeouts());
            let result = ready.and_then(|()| match self.connection.as_mut() {
                Some(live) => op(live.as_dyn()),
                None => Err((redis::ErrorKind::Io, "not connected").into()),
            });
            match result {
                Ok(value) => return Ok(value),
                Err(e) if transient(&e) => {
                    self.disconnect();
                    if Instant::now() + backoff > give_up {
                        if self.deadline.is_some_and(|deadline| give_up == deadline) {
                            return Err(CallError::Timeout(format!(
                                "Redis at {} did not answer by the call's deadline ({what}): {e}",
                                self.shown_url
                            )));
                        }
                        return Err(CallError::redis(
                            format!("Redis at {} unreachable for {retry_for:?} ({what})", self.shown_url),
                            e,
                        ));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(CallError::redis(format!("{what} at {}", self.shown_url), e)),
            }
        }
    }

    /// The connection to a single server, for a caller that writes a
    /// pipeline now and reads its answers later (`None` for a cluster, whose
    /// client only does whole round trips). On an error, call
    /// [`RedisLink::disconnect`]: the stream is out of step.
    pub fn server_connection(&mut self) -> Option<RedisResult<&mut Connection>> {
        if self.is_cluster() {
            return None;
        }
        self.settle();
        if let Err(e) = self.connection().map(|_| ()).and_then(|()| self.apply_timeouts()) {
            return Some(Err(e));
        }
        Some(self.connection().map(|live| match live {
            Live::Server(c) => c,
            Live::Cluster(_) => unreachable!("checked above"),
        }))
    }

    /// Drops the connection; the next operation connects again. Commands
    /// that must succeed and whose answers were not read yet are sent again
    /// by the next [`RedisLink::run`].
    pub fn disconnect(&mut self) {
        self.connection = None;
        self.client_id = None;
    }

    /// Writes `packed` (commands owing `answers` answers) on a single
    /// server's live connection without waiting for them; the next use of
    /// the link reads them. The caller goes on at once: a clean-up off a
    /// call's critical path, an answer whose acknowledgement the server's
    /// next read collects. If the connection breaks before the answers are
    /// read, `again` (idempotent) is sent in its place. False when nothing
    /// was sent (a cluster, no live connection, or the write failed).
    pub fn send_without_waiting(&mut self, packed: &[u8], answers: usize, again: Option<redis::Cmd>) -> bool {
        // At most one such write stays unread: the earlier answers came long ago.
        self.settle();
        let Some(Live::Server(connection)) = self.connection.as_mut() else {
            return false;
        };
        if connection.send_packed_command(packed).is_err() {
            self.disconnect();
            return false;
        }
        self.unread.push(Unread { answers, again, failed: false });
        true
    }

    /// Reads the answers of commands sent without waiting; when the
    /// connection broke, sends those that must succeed again (bounded by
    /// the retry window; past it they are given up, with a warning).
    fn settle(&mut self) {
        if !self.unread.is_empty() && !self.read_unread() {
            // The connection broke: whatever was not answered goes again.
            let unanswered = std::mem::take(&mut self.unread).into_iter().filter_map(|u| u.again);
            self.failed.extend(unanswered);
        }
        for command in std::mem::take(&mut self.failed) {
            if let Err(e) = self.run_within("sending again", AGAIN_RETRY, |c| command.query::<redis::Value>(c)) {
                tracing::warn!("a command sent without waiting was lost: {e}");
            }
        }
    }

    /// Writes `packed` commands on a single server's connection without
    /// reading anything: answers still unread from earlier commands come
    /// first, [`RedisLink::read_unread`] reads them, then the caller reads
    /// its own. False for a cluster, or when no connection could be made or
    /// the write failed (then disconnected).
    pub fn write_pipelined(&mut self, packed: &[u8]) -> bool {
        if self.is_cluster() {
            return false;
        }
        if self.connection().map(|_| ()).and_then(|()| self.apply_timeouts()).is_err() {
            return false;
        }
        let Some(Live::Server(connection)) = self.connection.as_mut() else {
            return false;
        };
        if connection.send_packed_command(packed).is_err() {
            self.disconnect();
            return false;
        }
        true
    }

    /// Reads the unread answers on the live connection. False when it broke
    /// (then disconnected, with the unanswered commands still listed, sent
    /// again by the next [`RedisLink::run`]).
    pub fn read_unread(&mut self) -> bool {
        while let Some(first) = self.unread.first_mut() {
            let Some(Live::Server(connection)) = self.connection.as_mut() else {
                return false;
            };
            match connection.recv_response() {
                Ok(value) => {
                    if let Err(e) = value.extract_error() {
                        tracing::warn!("a command sent without waiting failed at {}: {e}", self.shown_url);
                        first.failed = true;
                    }
                    first.answers -= 1;
                    if first.answers == 0 {
                        let done = self.unread.remove(0);
                        // Sent again by the next settle, with the full retry.
                        if done.failed
                            && let Some(again) = done.again
                        {
                            self.failed.push(again);
                        }
                    }
                }
                Err(_) => {
                    self.disconnect();
                    return false;
                }
            }
        }
        true
    }

    /// Writes `command`, then reads the answers still unread from earlier
    /// commands, then `command`'s: a server that answered a request without
    /// waiting and now blocks for the next one wakes once, not twice.
    pub fn run_after_unread<T: redis::FromRedisValue>(
        &mut self,
        what: &str,
        command: &redis::Cmd,
    ) -> Result<T, CallError> {
        if let Some(Live::Server(connection)) = self.connection.as_mut()
            && !self.unread.is_empty()
        {
            if connection.send_packed_command(&command.get_packed_command()).is_err() {
                self.disconnect();
            } else if self.read_unread()
                && let Some(Live::Server(connection)) = self.connection.as_mut()
            {
                match connection.recv_response().and_then(redis::Value::extract_error) {
                    Ok(value) => {
                        return redis::from_redis_value(value)
                            .map_err(|e| CallError::Protocol(format!("{what} at {}: {e}", self.shown_url)));
                    }
                    Err(e) if !transient(&e) => {
                        return Err(CallError::redis(format!("{what} at {}", self.shown_url), e));
                    }
                    Err(_) => self.disconnect(),
                }
            }
        }
        // Reconnects, sends again what must succeed, then `command`.
        self.run(what, |c| command.query(c))
    }

    /// This connection's client id (`CLIENT ID`), for `CLIENT UNBLOCK`;
    /// `None` when the ACL refuses it (asked once per connection).
    pub fn client_id(&mut self) -> Result<Option<i64>, CallError> {
        if let Some(id) = self.client_id {
            return Ok(id);
        }
        let id = self.run("CLIENT ID", |c| match redis::cmd("CLIENT").arg("ID").query::<i64>(c) {
            Ok(id) => Ok(Some(id)),
            Err(e) if e.code() == Some("NOPERM") => Ok(None),
            Err(e) => Err(e),
        })?;
        self.client_id = Some(id);
        Ok(id)
    }

    fn connection(&mut self) -> RedisResult<&mut Live> {
        if self.connection.is_none() {
            let live = match &self.target {
                Target::Server(client) => {
                    let connection = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                    connection.set_read_timeout(Some(IO_TIMEOUT))?;
                    connection.set_write_timeout(Some(IO_TIMEOUT))?;
                    Live::Server(connection)
                }
                Target::Cluster(client) => Live::Cluster(Box::new(client.get_connection()?)),
            };
            if self.connected_once {
                self.reconnects += 1;
            }
            self.client_id = None;
            self.applied_timeout = IO_TIMEOUT;
            self.connected_once = true;
            self.connection = Some(live);
        }
        Ok(self.connection.as_mut().expect("just connected"))
    }
}

/// Links to one Redis, one per call in flight: a caller waiting for its
/// reply holds its own connection, so calls started together (fan-out) wait
/// side by side.
pub struct LinkPool {
    url: String,
    idle: Mutex<Vec<RedisLink>>,
}

/// Connections kept for reuse; more calls in flight open more.
const IDLE_LINKS_KEPT: usize = 8;

impl LinkPool {
    pub fn new(url: &str) -> Result<Arc<Self>, CallError> {
        let first = RedisLink::new(url)?;
        Ok(Arc::new(Self { url: url.to_owned(), idle: Mutex::new(vec![first]) }))
    }

    /// The URL without its password, for messages.
    pub fn url(&self) -> String {
        redact(&self.url)
    }

    pub fn take(self: &Arc<Self>) -> Result<PooledLink, CallError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let link = match idle {
            Some(link) => link,
            None => RedisLink::new(&self.url)?,
        };
        // Boxed: a request being served carries its link, and stays small.
        Ok(PooledLink { link: Some(Box::new(link)), pool: self.clone() })
    }
}

/// A link taken from a [`LinkPool`], given back when dropped.
pub struct PooledLink {
    link: Option<Box<RedisLink>>,
    pool: Arc<LinkPool>,
}

impl std::ops::Deref for PooledLink {
    type Target = RedisLink;
    fn deref(&self) -> &RedisLink {
        self.link.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledLink {
    fn deref_mut(&mut self) -> &mut RedisLink {
        self.link.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledLink {
    fn drop(&mut self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_LINKS_KEPT
            && let Some(mut link) = self.link.take()
        {
            link.set_deadline(None);
            idle.push(*link);
        }
    }
}

/// The seed node URLs of a `redis+cluster://` or `rediss+cluster://` URL
/// (`None`: not a cluster URL): `[user:password@]host:port,host:port[/…]`
/// becomes one `redis://` (`rediss://`) URL per seed, each with the
/// credentials and what follows the hosts.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, CallError>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let hosts_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(hosts_end);
    let (credentials, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}{tail}"))
        .collect();
    if seeds.is_empty() {
        return Some(Err(CallError::redis_settings(format!("{} names no cluster node", redact(url)), None)));
    }
    Some(Ok(seeds))
}

fn cluster_client(url: &str, seeds: &[String], ca_file: Option<PathBuf>) -> Result<ClusterClient, CallError> {
    let bad_url = |e: RedisError| CallError::redis_settings(format!("bad Redis Cluster URL {}", redact(url)), boxed(e));
    let infos = seeds.iter().map(|seed| connection_info(seed)).collect::<RedisResult<Vec<_>>>().map_err(bad_url)?;
    let tls = infos.iter().any(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
    if tls {
        install_crypto_provider();
    }
    let mut builder = ClusterClientBuilder::new(infos)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(IO_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if let Some(path) = ca_file.filter(|_| tls) {
        builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(read_ca(&path)?) });
    }
    builder.build().map_err(bad_url)
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> Option<Box<dyn std::error::Error + Send + Sync>> {
    Some(Box::new(e))
}

fn install_crypto_provider() {
    // rustls needs one crypto provider for the process; ring is the one
    // built in. An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, CallError> {
    std::fs::read(path)
        .map_err(|e| CallError::redis_settings(format!("cannot read {CA_FILE_ENV} {}", path.display()), boxed(e)))
}

/// A client for `url`; a `rediss://` one trusts the PEM CA certificates in
/// `ca_file` when given, else the system's CA store.
fn client(url: &str, ca_file: Option<PathBuf>) -> Result<redis::Client, CallError> {
    let bad_url = |e: RedisError| CallError::redis_settings(format!("bad Redis URL {}", redact(url)), boxed(e));
    let info = connection_info(url).map_err(bad_url)?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if tls {
        install_crypto_provider();
    }
    match ca_file {
        Some(path) if tls => {
            let root_cert = read_ca(&path)?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(info, certificates).map_err(|e| {
                CallError::redis_settings(format!("{CA_FILE_ENV} {} for {}", path.display(), redact(url)), boxed(e))
            })
        }
        _ => redis::Client::open(info).map_err(bad_url),
    }
}

/// The URL's connection settings, with Nagle's algorithm off: requests are
/// small writes that must not wait for an ACK.
pub fn connection_info(url: &str) -> RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        // A cluster failing over or moving a slot: the cluster client
        // follows what it can, and a retry does the rest.
        || matches!(
            e.code(),
            Some("LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "UNBLOCKED" | "ASK" | "MOVED")
        )
}

/// `redis://:secret@host` -> `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://:pw@10.0.0.1:6379"), "redis://***@10.0.0.1:6379");
        assert_eq!(redact("rediss://user:pw@h/0"), "rediss://***@h/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("redis+cluster://:pw@a:1,b:2"), "redis+cluster://***@a:1,b:2");
    }

    #[test]
    fn a_cluster_url_names_its_seeds_with_the_same_credentials_and_tls() {
        let seeds = cluster_seeds("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001").unwrap().unwrap();
        assert_eq!(seeds, ["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7001"]);
        let seeds = cluster_seeds("rediss+cluster://[::1]:7000,h:7001/0").unwrap().unwrap();
        assert_eq!(seeds, ["rediss://[::1]:7000/0", "rediss://h:7001/0"]);
        assert!(cluster_seeds("redis://h:6379").is_none());
        assert!(cluster_seeds("redis+cluster://:pw@").unwrap().is_err());
        assert!(RedisLink::new("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap().is_cluster());
        assert!(!RedisLink::new("redis://127.0.0.1:7000").unwrap().is_cluster());
    }

    #[test]
    fn a_ca_file_applies_to_rediss_only_and_a_missing_one_is_named() {
        let missing = PathBuf::from("/nonexistent/cwasi-ca.pem");
        let Err(error) = client("rediss://127.0.0.1:6380", Some(missing.clone())) else {
            panic!("a missing CA file must be an error");
        };
        assert!(matches!(error, CallError::RedisSettings { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/cwasi-ca.pem"), "{error}");
        assert!(std::error::Error::source(&error).is_some(), "the read's error is kept: {error:?}");
        assert!(client("redis://127.0.0.1:6379", Some(missing)).is_ok());
        assert!(client("rediss://127.0.0.1:6380", None).is_ok());
    }

    #[test]
    fn unreachable_redis_is_a_typed_error_after_the_retry_window() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut link = RedisLink::new(&format!("redis://127.0.0.1:{port}")).unwrap();
        link.retry_for = Duration::from_millis(200);
        let started = Instant::now();
        let error = link.run("PING", |c| redis::cmd("PING").query::<String>(c)).unwrap_err();
        assert!(matches!(error, CallError::Redis { ref context, .. } if context.contains("unreachable")), "{error}");
        assert!(std::error::Error::source(&error).is_some(), "Redis's error is kept: {error:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
