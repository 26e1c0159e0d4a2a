//! A Redis connection that reconnects, with a bounded retry.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

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

pub struct RedisLink {
    client: redis::Client,
    /// The URL without its password, for messages.
    shown_url: String,
    connection: Option<Connection>,
    retry_for: Duration,
}

impl RedisLink {
    pub fn new(url: &str) -> Result<Self, CallError> {
        let client = client(url, std::env::var_os(CA_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))?;
        let retry_for =
            std::env::var(RETRY_ENV).ok().and_then(|v| v.parse().ok()).map_or(DEFAULT_RETRY, Duration::from_millis);
        Ok(Self { client, shown_url: redact(url), connection: None, retry_for })
    }

    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Runs `op`, reconnecting and retrying while Redis is unreachable or
    /// still loading, for at most the retry window.
    pub fn run<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            let result = self.connection().and_then(&mut op);
            match result {
                Ok(value) => return Ok(value),
                Err(e) if transient(&e) => {
                    self.connection = None;
                    if Instant::now() + backoff > deadline {
                        return Err(CallError::Redis(format!(
                            "Redis at {} unreachable for {:?} ({what}): {e}",
                            self.shown_url, self.retry_for
                        )));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(CallError::Redis(format!("{what} at {}: {e}", self.shown_url))),
            }
        }
    }

    fn connection(&mut self) -> RedisResult<&mut Connection> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            connection.set_read_timeout(Some(IO_TIMEOUT))?;
            connection.set_write_timeout(Some(IO_TIMEOUT))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("just connected"))
    }
}

/// A client for `url`; a `rediss://` one trusts the PEM CA certificates in
/// `ca_file` when given, else the system's CA store.
fn client(url: &str, ca_file: Option<PathBuf>) -> Result<redis::Client, CallError> {
    let bad_url = |e: RedisError| CallError::Redis(format!("bad Redis URL {}: {e}", redact(url)));
    let info = connection_info(url).map_err(bad_url)?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if tls {
        // rustls needs one crypto provider for the process; ring is the one
        // built in. An error only says one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match ca_file {
        Some(path) if tls => {
            let root_cert = std::fs::read(&path)
                .map_err(|e| CallError::Redis(format!("cannot read {CA_FILE_ENV} {}: {e}", path.display())))?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(info, certificates)
                .map_err(|e| CallError::Redis(format!("{CA_FILE_ENV} {} for {}: {e}", path.display(), redact(url))))
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
        || matches!(e.code(), Some("LOADING" | "MASTERDOWN" | "TRYAGAIN"))
}

/// `redis://:secret@host` -> `redis://:***@host`.
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
    }

    #[test]
    fn a_ca_file_applies_to_rediss_only_and_a_missing_one_is_named() {
        let missing = PathBuf::from("/nonexistent/cwasi-ca.pem");
        let Err(error) = client("rediss://127.0.0.1:6380", Some(missing.clone())) else {
            panic!("a missing CA file must be an error");
        };
        assert!(matches!(error, CallError::Redis(ref m) if m.contains("/nonexistent/cwasi-ca.pem")), "{error}");
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
        assert!(matches!(error, CallError::Redis(ref m) if m.contains("unreachable")), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
