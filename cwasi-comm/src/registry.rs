//! The node registry: which functions serve on this node, and where.
//!
//! `<run dir>/<node>/<namespace>/<function>/<pid>.sock` is a serving
//! instance's socket; `<pid>.lock` is held (flock) by that instance for as
//! long as it lives. A lock that can be taken means its owner died: the entry
//! is stale and whoever notices removes it. Directories are 0700: only root
//! (the shims) may see or call functions.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Default root of the registry; `CWASI_RUN_DIR` overrides it.
pub const DEFAULT_RUN_DIR: &str = "/run/cwasi";

/// The functions of one namespace on one node.
#[derive(Debug, Clone)]
pub struct NodeRegistry {
    dir: PathBuf,
}

/// A live registration; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    socket_path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl Registration {
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket_path);
        let _ = fs::remove_file(&self.lock_path);
    }
}

impl NodeRegistry {
    pub fn new(run_dir: &Path, node: &str, namespace: &str) -> Self {
        Self { dir: run_dir.join(node).join(namespace) }
    }

    /// Registers this process as an instance of `function`; the caller binds
    /// its listener at [`Registration::socket_path`].
    pub fn register(&self, function: &str) -> io::Result<Registration> {
        let dir = self.dir.join(function);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let pid = std::process::id();
        let lock_path = dir.join(format!("{pid}.lock"));
        let file = File::create(&lock_path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(Registration { socket_path: dir.join(format!("{pid}.sock")), lock_path, _lock: lock })
    }

    /// Sockets of the live instances of `function`; stale entries are removed.
    pub fn lookup(&self, function: &str) -> Vec<PathBuf> {
        let dir = self.dir.join(function);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut live = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            let lock_path = path.with_extension("lock");
            if owner_alive(&lock_path) {
                live.push(path);
            } else {
                tracing::info!(entry = %path.display(), "removing a stale registration");
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(&lock_path);
            }
        }
        live.sort();
        live
    }
}

fn owner_alive(lock_path: &Path) -> bool {
    let Ok(file) = File::open(lock_path) else {
        return false;
    };
    // Taking the lock means nobody holds it; it is released when dropped.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_visible_until_dropped_and_namespaces_do_not_mix() {
        let run = tempfile::tempdir().unwrap();
        let registry = NodeRegistry::new(run.path(), "node-a", "team-1");
        let registration = registry.register("sha256").unwrap();
        fs::write(registration.socket_path(), b"").unwrap();
        assert_eq!(registry.lookup("sha256"), vec![registration.socket_path().to_path_buf()]);
        assert!(NodeRegistry::new(run.path(), "node-a", "team-2").lookup("sha256").is_empty());
        assert!(NodeRegistry::new(run.path(), "node-b", "team-1").lookup("sha256").is_empty());
        drop(registration);
        assert!(registry.lookup("sha256").is_empty());
    }

    #[test]
    fn entries_of_dead_owners_are_cleaned() {
        let run = tempfile::tempdir().unwrap();
        let registry = NodeRegistry::new(run.path(), "n", "ns");
        let dir = run.path().join("n/ns/echo");
        fs::create_dir_all(&dir).unwrap();
        // A registration whose owner is gone: files exist, nobody holds the lock.
        fs::write(dir.join("999999.sock"), b"").unwrap();
        fs::write(dir.join("999999.lock"), b"").unwrap();
        assert!(registry.lookup("echo").is_empty());
        assert!(!dir.join("999999.sock").exists() && !dir.join("999999.lock").exists());
    }
}
