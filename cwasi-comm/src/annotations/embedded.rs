//! Settings of one embedded peer: `cwasi.io/embed.<peer>.<setting>`.
//!
//! An embedded peer is a function of its own inside its caller's container:
//! it may call the peers its `peers` setting allows, and sees the
//! environment of its `env` setting and, read-only, the directories of its
//! `dirs` setting, which must be ones the container itself sees. By default
//! it calls nobody and sees no environment and no files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AnnotationError, PeerPolicy, invalid, list_items, peer_policy};

/// Prefix of the per-peer keys: `cwasi.io/embed.<peer>.<setting>`.
pub const EMBED_PEER_PREFIX: &str = "cwasi.io/embed.";

/// Whom the peer may call: a list of names, or `*` (like `cwasi.io/peers`).
pub const PEERS_SETTING: &str = "peers";
/// Its environment: `KEY=VALUE,KEY2=VALUE2` (values without commas).
pub const ENV_SETTING: &str = "env";
/// Directories of the container it may read: `/data,/etc/app`.
pub const DIRS_SETTING: &str = "dirs";

const KEY: &str = "cwasi.io/embed.<peer>.<setting>";

/// What one embedded peer may do and see beyond serving its caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedSettings {
    pub peers: PeerPolicy,
    pub env: Vec<(String, String)>,
    /// Absolute paths in the container, shown to the peer read-only.
    pub dirs: Vec<PathBuf>,
}

/// Whether `key` is a per-peer key (checked by [`embedded_settings`]).
pub(super) fn is_embed_peer_key(key: &str) -> bool {
    key.starts_with(EMBED_PEER_PREFIX)
}

/// The settings of every peer named in a `cwasi.io/embed.<peer>.*` key;
/// each must be one of `embedded`.
pub(super) fn embedded_settings(
    annotations: &HashMap<String, String>,
    embedded: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, EmbeddedSettings>, AnnotationError> {
    let mut all: BTreeMap<String, EmbeddedSettings> = BTreeMap::new();
    for (key, value) in annotations {
        let Some(rest) = key.strip_prefix(EMBED_PEER_PREFIX) else { continue };
        let Some((peer, setting)) = rest.rsplit_once('.') else {
            return Err(AnnotationError::Unknown(key.clone()));
        };
        if !embedded.contains_key(peer) {
            return Err(invalid(KEY, key, "names a peer that cwasi.io/embed does not embed"));
        }
        let settings = all.entry(peer.to_owned()).or_default();
        let value = value.trim();
        match setting {
            PEERS_SETTING => settings.peers = peer_policy(KEY, value)?,
            ENV_SETTING => settings.env = environment(value)?,
            DIRS_SETTING => settings.dirs = directories(value)?,
            _ => return Err(AnnotationError::Unknown(key.clone())),
        }
    }
    Ok(all)
}

fn environment(list: &str) -> Result<Vec<(String, String)>, AnnotationError> {
    list_items(list)
        .map(|item| {
            let (name, value) = item.split_once('=').ok_or_else(|| invalid(KEY, item, "expected NAME=value"))?;
            let name = name.trim();
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '_';
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) || !name.chars().all(plain) {
                return Err(invalid(KEY, name, "an environment variable's name has letters, digits and '_'"));
            }
            Ok((name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn directories(list: &str) -> Result<Vec<PathBuf>, AnnotationError> {
    list_items(list)
        .map(|dir| {
            if !dir.starts_with('/') || dir.split('/').any(|part| part == "..") {
                return Err(invalid(KEY, dir, "a directory is an absolute path in the container, without '..'"));
            }
            Ok(PathBuf::from(dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<BTreeMap<String, EmbeddedSettings>, AnnotationError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let embedded = BTreeMap::from([("sha.v2".to_owned(), PathBuf::from("/sha.wasm"))]);
        embedded_settings(&map, &embedded)
    }

    #[test]
    fn reads_each_setting_of_an_embedded_peer() {
        let all = parse(&[
            ("cwasi.io/embed.sha.v2.peers", "store, audit"),
            ("cwasi.io/embed.sha.v2.env", "MODE=fast, LIMIT=10"),
            ("cwasi.io/embed.sha.v2.dirs", "/data,/etc/app"),
            ("cwasi.io/peers", "sha.v2"),
        ])
        .unwrap();
        let sha = &all["sha.v2"];
        assert!(sha.peers.allows("store") && sha.peers.allows("audit") && !sha.peers.allows("sha.v2x"));
        assert_eq!(sha.env, [("MODE".to_owned(), "fast".to_owned()), ("LIMIT".to_owned(), "10".to_owned())]);
        assert_eq!(sha.dirs, [PathBuf::from("/data"), PathBuf::from("/etc/app")]);
    }

    #[test]
    fn refuses_other_peers_unknown_settings_and_bad_values() {
        assert!(parse(&[("cwasi.io/embed.other.env", "A=1")]).is_err());
        assert!(matches!(parse(&[("cwasi.io/embed.sha.v2.mounts", "/x")]), Err(AnnotationError::Unknown(_))));
        assert!(parse(&[("cwasi.io/embed.sha.v2.env", "1A=x")]).is_err());
        assert!(parse(&[("cwasi.io/embed.sha.v2.env", "A-B=x")]).is_err());
        assert!(parse(&[("cwasi.io/embed.sha.v2.env", "novalue")]).is_err());
        assert!(parse(&[("cwasi.io/embed.sha.v2.dirs", "data")]).is_err());
        assert!(parse(&[("cwasi.io/embed.sha.v2.dirs", "/data/../../etc")]).is_err());
        assert!(parse(&[("cwasi.io/embed.sha.v2.peers", "../x")]).is_err());
        assert_eq!(parse(&[]).unwrap(), BTreeMap::new());
    }
}
