//! The `cwasi.io/*` annotations that configure one function.
//!
//! Kubernetes pod annotations reach the OCI spec through containerd's
//! `pod_annotations = ["cwasi.io/*"]`; `ctr run --annotation` sets them directly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod embedded;

pub use embedded::{DIRS_SETTING, EMBED_PEER_PREFIX, ENV_SETTING, EmbeddedSettings, PEERS_SETTING};

/// Prefix shared by every annotation cwasi reads.
pub const PREFIX: &str = "cwasi.io/";
pub const FUNCTION: &str = "cwasi.io/function";
pub const SERVE: &str = "cwasi.io/serve";
pub const PEERS: &str = "cwasi.io/peers";
pub const EMBED: &str = "cwasi.io/embed";
pub const NODE: &str = "cwasi.io/node";
pub const REDIS: &str = "cwasi.io/redis";
pub const MODE: &str = "cwasi.io/mode";
pub const TIMEOUT: &str = "cwasi.io/timeout";
pub const CONCURRENCY: &str = "cwasi.io/concurrency";
pub const LOG: &str = "cwasi.io/log";

/// Annotation keys cwasi understands; any other `cwasi.io/` key is a typo.
const KNOWN: [&str; 10] = [FUNCTION, SERVE, PEERS, EMBED, NODE, REDIS, MODE, TIMEOUT, CONCURRENCY, LOG];

/// Levels `cwasi.io/log` takes, most to least verbose.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The longest deadline a function may give its calls.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most handler instances one serving container may run.
pub const MAX_CONCURRENCY: u32 = 64;

/// A malformed `cwasi.io/*` annotation: the container refuses to start with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("unknown annotation {0:?} (known: {known})", known = KNOWN.join(", "))]
    Unknown(String),
    #[error("annotation {key}: {reason} (value {value:?})")]
    Invalid { key: &'static str, value: String, reason: &'static str },
}

/// A way to reach a peer; `cwasi.io/mode` can force one per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Embedded,
    Local,
    Remote,
}

impl std::str::FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "embedded" => Ok(Mode::Embedded),
            "local" => Ok(Mode::Local),
            "remote" => Ok(Mode::Remote),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Embedded => "embedded",
            Mode::Local => "local",
            Mode::Remote => "remote",
        })
    }
}

/// Which peers a function may call (`cwasi.io/peers`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PeerPolicy {
    /// No annotation: the function calls nobody.
    #[default]
    None,
    /// `*`: any function of the same namespace.
    AnyInNamespace,
    /// An explicit allow-list.
    Only(Vec<String>),
}

impl PeerPolicy {
    pub fn allows(&self, peer: &str) -> bool {
        match self {
            PeerPolicy::None => false,
            PeerPolicy::AnyInNamespace => true,
            PeerPolicy::Only(names) => names.iter().any(|n| n == peer),
        }
    }
}

/// One function's configuration, read from its container's annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionConfig {
    pub name: String,
    pub serve: bool,
    pub peers: PeerPolicy,
    /// Peers shipped in this image: name -> module path inside the rootfs.
    pub embed: BTreeMap<String, PathBuf>,
    /// What embedded peers may call and see (`cwasi.io/embed.<peer>.*`);
    /// a peer without an entry calls nobody and sees nothing.
    #[serde(default)]
    pub embedded_settings: BTreeMap<String, EmbeddedSettings>,
    pub node: String,
    /// Functions only see peers of their own namespace: the Kubernetes
    /// namespace of the pod, else the containerd namespace. Set by the shim.
    pub namespace: String,
    pub redis_url: Option<String>,
    pub forced_modes: BTreeMap<String, Mode>,
    /// Deadline of this function's calls (`cwasi.io/timeout`); `None`: the
    /// node's default, which the shim fills in.
    #[serde(default, with = "optional_millis")]
    pub call_timeout: Option<Duration>,
    /// Handler instances a serving container runs at once (`cwasi.io/concurrency`).
    #[serde(default = "one")]
    pub concurrency: u32,
    /// How much the function's guest process logs (`cwasi.io/log`, one of
    /// [`LOG_LEVELS`]): `debug` logs every call and every request served,
    /// with its trace id. `None`: the node's setting (`RUST_LOG`, else info).
    #[serde(default)]
    pub log_level: Option<String>,
}

fn one() -> u32 {
    1
}

/// Durations cross the shim/guest boundary as whole milliseconds.
mod optional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Parses `250ms`, `30s`, `2m` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

impl FunctionConfig {
    /// Reads the `cwasi.io/*` annotations; `default_name` and `default_node`
    /// apply when `cwasi.io/function` / `cwasi.io/node` are absent.
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
        default_name: &str,
        default_node: &str,
    ) -> Result<Self, AnnotationError> {
        let unknown =
            |k: &String| k.starts_with(PREFIX) && !KNOWN.contains(&k.as_str()) && !embedded::is_embed_peer_key(k);
        if let Some(key) = annotations.keys().find(|k| unknown(k)) {
            return Err(AnnotationError::Unknown(key.clone()));
        }
        let get = |key: &str| annotations.get(key).map(|v| v.trim());

        let name = match get(FUNCTION) {
            Some(name) => valid_name(FUNCTION, name)?.to_owned(),
            None => default_name.to_owned(),
        };
        let serve = match get(SERVE) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(invalid(SERVE, other, "expected true or false")),
        };
        let peers = peer_policy(PEERS, get(PEERS).unwrap_or_default())?;
        let embed = match get(EMBED) {
            None => BTreeMap::new(),
            Some(list) => key_values(EMBED, list)?
                .into_iter()
                .map(|(name, path)| {
                    if !path.starts_with('/') {
                        return Err(invalid(EMBED, path, "module path must be absolute in the rootfs"));
                    }
                    Ok((name.to_owned(), PathBuf::from(path)))
                })
                .collect::<Result<_, _>>()?,
        };
        let embedded_settings = embedded::embedded_settings(annotations, &embed)?;
        let node = match get(NODE) {
            Some(node) => valid_name(NODE, node)?.to_owned(),
            None => default_node.to_owned(),
        };
        let redis_url = match get(REDIS) {
            None => None,
            Some(url) if crate::remote::Endpoint::parse_all(url).is_ok() => Some(url.to_owned()),
            // The value may carry a password: it stays out of the message.
            Some(_) => {
                return Err(invalid(
                    REDIS,
                    "(withheld)",
                    "expected a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL with hosts and ports",
                ));
            }
        };
        let forced_modes = match get(MODE) {
            None => BTreeMap::new(),
            Some(list) => key_values(MODE, list)?
                .into_iter()
                .map(|(peer, mode)| {
                    let mode =
                        mode.parse().map_err(|()| invalid(MODE, mode, "mode must be embedded, local or remote"))?;
                    Ok((peer.to_owned(), mode))
                })
                .collect::<Result<_, _>>()?,
        };
        let call_timeout = match get(TIMEOUT) {
            None => None,
            Some(text) => match parse_duration(text) {
                Some(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
                _ => return Err(invalid(TIMEOUT, text, "expected a duration from 1ms to 60m, like 500ms, 30s or 2m")),
            },
        };
        let concurrency = match get(CONCURRENCY) {
            None => 1,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
                _ => return Err(invalid(CONCURRENCY, text, "expected a whole number from 1 to 64")),
            },
        };
        let log_level = match get(LOG) {
            None => None,
            Some(level) if LOG_LEVELS.contains(&level) => Some(level.to_owned()),
            Some(other) => return Err(invalid(LOG, other, "expected trace, debug, info, warn or error")),
        };
        Ok(FunctionConfig {
            log_level,
            name,
            serve,
            peers,
            embed,
            embedded_settings,
            node,
            namespace: "default".to_owned(),
            redis_url,
            forced_modes,
            call_timeout,
            concurrency,
        })
    }
}

impl FunctionConfig {
    /// The configuration embedded `peer` calls with: its own name and
    /// allow-list, everything else its container's.
    pub fn for_embedded_peer(&self, peer: &str) -> FunctionConfig {
        let settings = self.embedded_settings.get(peer).cloned().unwrap_or_default();
        FunctionConfig {
            name: peer.to_owned(),
            // It serves its caller: a call to itself could only wait for its own end.
            serve: true,
            peers: settings.peers,
            concurrency: 1,
            ..self.clone()
        }
    }
}

/// `cwasi.io/peers` and the peers setting of an embedded peer: none, `*`, or a list.
fn peer_policy(key: &'static str, value: &str) -> Result<PeerPolicy, AnnotationError> {
    Ok(match value {
        "" => PeerPolicy::None,
        "*" => PeerPolicy::AnyInNamespace,
        list => {
            PeerPolicy::Only(list_items(list).map(|p| valid_name(key, p).map(str::to_owned)).collect::<Result<_, _>>()?)
        }
    })
}

fn invalid(key: &'static str, value: &str, reason: &'static str) -> AnnotationError {
    AnnotationError::Invalid { key, value: value.to_owned(), reason }
}

/// Function and node names end up in file names and Redis keys: keep them plain.
fn valid_name<'a>(key: &'static str, name: &'a str) -> Result<&'a str, AnnotationError> {
    if !is_function_name(name) {
        return Err(invalid(key, name, "names use letters, digits, '-', '_' and '.'"));
    }
    Ok(name)
}

/// A name a function (or node) may have: 1 to 253 letters, digits, `-`,
/// `_` and `.`, not starting with `.`.
pub fn is_function_name(name: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !name.is_empty() && name.len() <= 253 && name.chars().all(plain) && !name.starts_with('.')
}

fn list_items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn key_values<'a>(key: &'static str, list: &'a str) -> Result<Vec<(&'a str, &'a str)>, AnnotationError> {
    list_items(list)
        .map(|item| {
            let (k, v) = item.split_once('=').ok_or_else(|| invalid(key, item, "expected name=value"))?;
            Ok((valid_name(key, k.trim())?, v.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<FunctionConfig, AnnotationError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        FunctionConfig::from_annotations(&map, "hello", "node-a")
    }

    #[test]
    fn defaults_without_annotations() {
        let cfg = parse(&[("io.kubernetes.cri.container-type", "container")]).unwrap();
        assert_eq!(cfg.name, "hello");
        assert_eq!(cfg.node, "node-a");
        assert!(!cfg.serve);
        assert_eq!(cfg.peers, PeerPolicy::None);
        assert!(!cfg.peers.allows("anyone"));
        assert!(cfg.embed.is_empty() && cfg.forced_modes.is_empty() && cfg.redis_url.is_none());
    }

    #[test]
    fn reads_every_annotation() {
        let cfg = parse(&[
            (FUNCTION, "producer"),
            (SERVE, "true"),
            (PEERS, "sha256, resize"),
            (EMBED, "sha256=/fn/sha256.wasm"),
            (NODE, "edge-1"),
            (REDIS, "redis://:pw@10.0.0.1:6379"),
            (MODE, "sha256=local,resize=remote"),
            (TIMEOUT, "1500ms"),
            (CONCURRENCY, "4"),
            (LOG, "debug"),
        ])
        .unwrap();
        assert_eq!(cfg.name, "producer");
        assert!(cfg.serve);
        assert!(cfg.peers.allows("resize") && !cfg.peers.allows("other"));
        assert_eq!(cfg.embed["sha256"], PathBuf::from("/fn/sha256.wasm"));
        assert_eq!(cfg.node, "edge-1");
        assert_eq!(cfg.redis_url.as_deref(), Some("redis://:pw@10.0.0.1:6379"));
        assert_eq!(cfg.forced_modes["sha256"], Mode::Local);
        assert_eq!(cfg.forced_modes["resize"], Mode::Remote);
        assert_eq!(cfg.call_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(cfg.concurrency, 4);
        assert_eq!(cfg.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn durations_need_a_unit_and_stay_in_range() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("1.5s"), None);
        for bad in ["0s", "61m", "soon", "-1s", ""] {
            assert!(parse(&[(TIMEOUT, bad)]).is_err(), "{bad}");
        }
        for bad in ["0", "65", "four", "-1"] {
            assert!(parse(&[(CONCURRENCY, bad)]).is_err(), "{bad}");
        }
        let cfg = parse(&[]).unwrap();
        assert_eq!((cfg.call_timeout, cfg.concurrency), (None, 1));
    }

    #[test]
    fn star_allows_any_peer() {
        assert!(parse(&[(PEERS, "*")]).unwrap().peers.allows("x"));
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(matches!(parse(&[("cwasi.io/peer", "a")]), Err(AnnotationError::Unknown(_))));
        assert!(parse(&[(SERVE, "yes")]).is_err());
        assert!(parse(&[(FUNCTION, "../etc")]).is_err());
        assert!(parse(&[(EMBED, "sha=relative.wasm")]).is_err());
        assert!(parse(&[(EMBED, "noequals")]).is_err());
        assert!(parse(&[(MODE, "a=teleport")]).is_err());
        assert!(parse(&[(REDIS, "http://x")]).is_err());
        assert!(parse(&[(LOG, "verbose")]).is_err());
        assert!(parse(&[(LOG, "cwasi=debug")]).is_err());
        assert_eq!(parse(&[]).unwrap().log_level, None);
    }
}
