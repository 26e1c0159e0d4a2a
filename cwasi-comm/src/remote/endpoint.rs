//! Where a Redis URL points: what the node operator's allow-list of
//! endpoints is checked against. A Redis Cluster URL
//! (`redis+cluster://h1:p1,h2:p2`) points at each of its seed nodes.

use std::fmt;

pub const DEFAULT_PORT: u16 = 6379;

/// `host:port` of a `redis://` or `rediss://` URL, and its TLS options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Lower case; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// `rediss://…#insecure`: TLS without certificate checks.
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("expected a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("bad port {0:?}")]
    Port(String),
}

impl Endpoint {
    /// The endpoints `url` names: one for a server, each seed of a cluster.
    pub fn parse_all(url: &str) -> Result<Vec<Self>, EndpointError> {
        match super::link::cluster_seeds(url) {
            None => Ok(vec![Self::parse(url)?]),
            Some(Err(_)) => Err(EndpointError::NoHost),
            Some(Ok(seeds)) => seeds.iter().map(|seed| Self::parse(seed)).collect(),
        }
    }

    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err(EndpointError::Scheme);
        };
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        // Credentials end at the last '@' (a password may contain '@').
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        Self::host_port(authority, tls, tls && fragment == "insecure")
    }

    /// An allow-list entry: `host:port`, `host` (port 6379) or `[v6]:port`.
    pub fn parse_address(address: &str) -> Result<Self, EndpointError> {
        Self::host_port(address.trim(), false, false)
    }

    fn host_port(authority: &str, tls: bool, insecure: bool) -> Result<Self, EndpointError> {
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(EndpointError::NoHost)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost);
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| EndpointError::Port(p.to_owned()))?,
        };
        Ok(Self { host: host.to_ascii_lowercase(), port, tls, insecure })
    }

    /// Same host and port (schemes and credentials aside).
    pub fn same_address(&self, other: &Endpoint) -> bool {
        self.host == other.host && self.port == other.port
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_host_and_port_behind_credentials_paths_and_fragments() {
        let e = Endpoint::parse("redis://user:p@ss@Redis.Example:6380/0").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls, e.insecure), ("redis.example", 6380, false, false));
        let e = Endpoint::parse("rediss://:pw@10.0.0.1#insecure").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls, e.insecure), ("10.0.0.1", 6379, true, true));
        // `#insecure` means something only with TLS.
        assert!(!Endpoint::parse("redis://h#insecure").unwrap().insecure);
        let e = Endpoint::parse("redis://[::1]:7000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 7000));
        assert_eq!(e.to_string(), "[::1]:7000");
        assert_eq!(Endpoint::parse("http://h"), Err(EndpointError::Scheme));
        assert_eq!(Endpoint::parse("redis://:pw@/0"), Err(EndpointError::NoHost));
        assert!(matches!(Endpoint::parse("redis://h:port"), Err(EndpointError::Port(_))));
    }

    #[test]
    fn a_cluster_url_names_each_seed() {
        let seeds = Endpoint::parse_all("rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2#insecure").unwrap();
        let shown: Vec<String> = seeds.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown, ["10.0.0.1:7000", "10.0.0.2:6379"]);
        assert!(seeds.iter().all(|e| e.tls && e.insecure));
        assert_eq!(Endpoint::parse_all("redis://h:1").unwrap().len(), 1);
        assert_eq!(Endpoint::parse_all("redis+cluster://"), Err(EndpointError::NoHost));
        assert!(Endpoint::parse_all("redis+cluster://h:port").is_err());
    }

    #[test]
    fn allow_list_entries_compare_by_address() {
        let allowed = Endpoint::parse_address("redis.example").unwrap();
        assert!(allowed.same_address(&Endpoint::parse("rediss://u:p@REDIS.example:6379").unwrap()));
        assert!(!allowed.same_address(&Endpoint::parse("redis://redis.example:6380").unwrap()));
        assert!(
            Endpoint::parse_address("[::1]:6379").unwrap().same_address(&Endpoint::parse("redis://[::1]").unwrap())
        );
    }
}
