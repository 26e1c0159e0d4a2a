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
