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

/// A file mapping namespaces to their Redis URLs (credentials included),
/// one `<namespace> <redis-url>` a line, `#` comments: a pod's namespace
/// picks its URL when the pod names none (`cwasi.io/redis`).
pub const REDIS_CREDENTIALS_ENV: &str = "CWASI_REDIS_CREDENTIALS";
/// `host:port,...`: the only Redis endpoints a `cwasi.io/redis` annotation
/// may name (unset: any).
pub const REDIS_ALLOW_ENV: &str = "CWASI_REDIS_ALLOW";
/// `true` lets a `cwasi.io/redis` annotation use `rediss://…#insecure`
/// (TLS without certificate checks).
pub const REDIS_ALLOW_INSECURE_ENV: &str = "CWASI_REDIS_ALLOW_INSECURE";

/// What the node operator decides about the Redis of remote mode.
#[derive(Debug, Clone, Default)]
pub struct RedisPolicy {
    /// Namespace -> Redis URL.
    pub credentials: std::collections::BTreeMap<String, String>,
    /// `None`: pods may name any endpoint.
    pub allow: Option<Vec<cwasi_comm::remote::Endpoint>>,
    pub allow_insecure: bool,
}

/// Reads the policy from the environment; a broken setting refuses
/// containers rather than loosening what the operator meant.
pub fn redis_policy() -> anyhow::Result<RedisPolicy> {
    use anyhow::Context;
    let credentials = match std::env::var_os(REDIS_CREDENTIALS_ENV).filter(|v| !v.is_empty()) {
        None => Default::default(),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{REDIS_CREDENTIALS_ENV}: reading {}", PathBuf::from(&path).display()))?;
            parse_credentials(&text)
                .with_context(|| format!("{REDIS_CREDENTIALS_ENV}: {}", PathBuf::from(&path).display()))?
        }
    };
    let allow = match std::env::var(REDIS_ALLOW_ENV) {
        Ok(list) if !list.trim().is_empty() => Some(parse_allow(&list).with_context(|| REDIS_ALLOW_ENV)?),
        _ => None,
    };
    let allow_insecure = std::env::var(REDIS_ALLOW_INSECURE_ENV).is_ok_and(|v| v == "true");
    Ok(RedisPolicy { credentials, allow, allow_insecure })
}

/// `<namespace> <redis-url>` lines; blank lines and `#` comments skipped.
/// Errors name the line, never its URL (it holds a password).
pub fn parse_credentials(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(namespace), Some(url), None) = (words.next(), words.next(), words.next()) else {
            anyhow::bail!("line {number}: expected `<namespace> <redis-url>`");
        };
        cwasi_comm::remote::Endpoint::parse_all(url).map_err(|e| anyhow::anyhow!("line {number}: {e}"))?;
        if map.insert(namespace.to_owned(), url.to_owned()).is_some() {
            anyhow::bail!("line {number}: namespace {namespace} appears twice");
        }
    }
    Ok(map)
}

/// `host:port,host:port,...` (port 6379 when left out).
pub fn parse_allow(list: &str) -> anyhow::Result<Vec<cwasi_comm::remote::Endpoint>> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| cwasi_comm::remote::Endpoint::parse_address(a).map_err(|e| anyhow::anyhow!("{a:?}: {e}")))
        .collect()
}

impl RedisPolicy {
    /// Refuses a Redis URL from a pod's annotation that the operator did not allow.
    pub fn check_annotation(&self, url: &str) -> anyhow::Result<()> {
        use cwasi_comm::annotations::REDIS;
        let endpoints = cwasi_comm::remote::Endpoint::parse_all(url).map_err(|e| anyhow::anyhow!("{REDIS}: {e}"))?;
        // A cluster's seeds must all be allowed; the nodes it announces are
        // the operator's cluster's own.
        if let Some(allow) = &self.allow
            && let Some(endpoint) = endpoints.iter().find(|e| !allow.iter().any(|a| a.same_address(e)))
        {
            anyhow::bail!("{REDIS} names Redis at {endpoint}, which is not in the node's {REDIS_ALLOW_ENV}");
        }
        if endpoints.iter().any(|e| e.insecure) && !self.allow_insecure {
            anyhow::bail!(
                "{REDIS} asks for TLS without certificate checks (#insecure), which the node does not allow ({REDIS_ALLOW_INSECURE_ENV})"
            );
        }
        Ok(())
    }
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

    #[test]
    fn credentials_file_maps_namespaces_and_keeps_urls_out_of_errors() {
        let map =
            parse_credentials("# ns url\n\nteam-a redis://a:pa@10.0.0.1:6379\n  team-b   rediss://b:pb@r:6380  \n")
                .unwrap();
        assert_eq!(map["team-a"], "redis://a:pa@10.0.0.1:6379");
        assert_eq!(map["team-b"], "rediss://b:pb@r:6380");
        let error = parse_credentials("team-a http://a:secret@h\n").unwrap_err().to_string();
        assert!(error.contains("line 1") && !error.contains("secret"), "{error}");
        assert!(parse_credentials("team-a\n").is_err());
        assert!(parse_credentials("a redis://h b\n").is_err());
        assert!(parse_credentials("a redis://h\na redis://g\n").is_err());
    }

    #[test]
    fn annotations_must_name_allowed_endpoints_and_insecure_tls_needs_consent() {
        let policy =
            RedisPolicy { allow: Some(parse_allow("10.0.0.1:6379, redis.internal").unwrap()), ..Default::default() };
        assert!(policy.check_annotation("redis://:pw@10.0.0.1:6379").is_ok());
        assert!(policy.check_annotation("rediss://redis.internal").is_ok());
        let error = policy.check_annotation("redis://:pw@10.0.0.2:6379").unwrap_err().to_string();
        assert!(
            error.contains("cwasi.io/redis") && error.contains("10.0.0.2:6379") && !error.contains("pw"),
            "{error}"
        );
        assert!(policy.check_annotation("rediss://redis.internal#insecure").is_err());
        let open = RedisPolicy::default();
        assert!(open.check_annotation("redis://anywhere:1").is_ok());
        assert!(open.check_annotation("rediss://anywhere:1#insecure").is_err());
        let consenting = RedisPolicy { allow_insecure: true, ..Default::default() };
        assert!(consenting.check_annotation("rediss://anywhere:1#insecure").is_ok());
        assert!(parse_allow("h:notaport").is_err());
        // A cluster: every seed must be allowed.
        assert!(policy.check_annotation("redis+cluster://10.0.0.1:6379,redis.internal:6379").is_ok());
        let error = policy.check_annotation("redis+cluster://10.0.0.1:6379,10.0.0.9:7000").unwrap_err().to_string();
        assert!(error.contains("10.0.0.9:7000"), "{error}");
    }
}
