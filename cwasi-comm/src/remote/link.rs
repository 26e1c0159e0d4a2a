//! A Redis connection that reconnects, with a bounded retry.

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use crate::CallError;

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long an operation keeps retrying while Redis is unreachable;
/// `CWASI_REDIS_RETRY_MS` overrides it.
const DEFAULT_RETRY: Duration = Duration::from_secs(5);
pub const RETRY_ENV: &str = "CWASI_REDIS_RETRY_MS";
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
        let client = connection_info(url)
            .and_then(redis::Client::open)
            .map_err(|e| CallError::Redis(format!("bad Redis URL {}: {e}", redact(url))))?;
        let retry_for = std::env::var(RETRY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_RETRY, Duration::from_millis);
        Ok(Self { client, shown_url: redact(url), connection: None, retry_for })
    }

    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Runs `op`, reconnecting and retrying while Redis is unreachable or
    /// still loading, for at most the retry window.
    pub fn run<T>(&mut self, what: &str, mut op: impl FnMut(&mut Connection) -> RedisResult<T>) -> Result<T, CallError> {
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
