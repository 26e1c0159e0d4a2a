//! Shim-wide settings, read from the environment containerd gives the shim.

use std::path::PathBuf;

/// Overrides where compiled modules are cached.
pub const CACHE_DIR_ENV: &str = "CWASI_CACHE_DIR";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cwasi/cache";

pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// Overrides the root of the node registry (sockets of serving functions).
pub const RUN_DIR_ENV: &str = "CWASI_RUN_DIR";

pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(cwasi_comm::registry::DEFAULT_RUN_DIR))
}

/// The Redis URL of remote mode when a function has no `cwasi.io/redis`
/// annotation. Remote mode is opt-in: unset, empty or `none` leaves it off,
/// so on a node without Redis a call to a peer that is neither embedded nor
/// on the node is `UnknownPeer` at once instead of a retried connection.
pub const REDIS_URL_ENV: &str = "CWASI_REDIS_URL";

pub fn redis_url() -> Option<String> {
    redis_url_from(std::env::var(REDIS_URL_ENV).ok().as_deref())
}

fn redis_url_from(value: Option<&str>) -> Option<String> {
    match value.map(str::trim) {
        None | Some("" | "none") => None,
        Some(url) => Some(url.to_owned()),
    }
}

/// The deadline of calls whose function has no `cwasi.io/timeout` and whose
/// guest gives none, in milliseconds.
pub const CALL_TIMEOUT_ENV: &str = "CWASI_CALL_TIMEOUT_MS";

pub fn call_timeout() -> std::time::Duration {
    std::env::var(CALL_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(cwasi_comm::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_mode_is_off_unless_a_redis_is_named() {
        assert_eq!(redis_url_from(None), None);
        assert_eq!(redis_url_from(Some("")), None);
        assert_eq!(redis_url_from(Some("none")), None);
        assert_eq!(redis_url_from(Some("redis://10.0.0.1:6379")).as_deref(), Some("redis://10.0.0.1:6379"));
        assert_eq!(redis_url_from(Some("rediss://h:6380")).as_deref(), Some("rediss://h:6380"));
    }
}
