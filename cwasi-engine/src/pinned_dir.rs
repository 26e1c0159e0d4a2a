//! A directory an embedded peer reads, opened once when its container
//! starts and reached through that descriptor ever after.
//!
//! A peer instance is made at its first call, and again after a trap, while
//! the container's guest runs: by then the guest may have replaced the
//! directory's path with a symlink (`/data -> ../../..` in a writable
//! rootfs). Opening the path again would follow it out of the container.
//! The descriptor, opened before any guest code ran and checked to be the
//! directory the shim resolved, cannot be redirected.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::Context;

use crate::Preopen;

/// A peer's directory, held open.
#[derive(Debug)]
pub struct PinnedDir {
    _dir: File,
    /// The same preopen, its host path the descriptor's (`/proc/self/fd/N/.`).
    preopen: Preopen,
}

impl PinnedDir {
    /// Opens `preopen`'s directory and checks that it is the one the shim
    /// resolved (`host_path` is canonical: no symlink in it).
    pub fn open(preopen: &Preopen) -> anyhow::Result<Self> {
        let path = &preopen.host_path;
        let dir = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        anyhow::ensure!(dir.metadata()?.is_dir(), "{} is not a directory", path.display());
        let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let opened =
            std::fs::read_link(&by_descriptor).with_context(|| format!("reading {}", by_descriptor.display()))?;
        anyhow::ensure!(
            &opened == path,
            "{} changed since it was checked (it now opens {})",
            path.display(),
            opened.display()
        );
        // Through `/.`: an engine that opens its preopens without following a
        // final symlink (libwasmedge's O_NOFOLLOW) still goes through the
        // descriptor's link, which is then not the final component.
        let host_path = PathBuf::from(format!("{}/.", by_descriptor.display()));
        Ok(Self { _dir: dir, preopen: Preopen { host_path, ..preopen.clone() } })
    }

    /// The preopen to give each instance: the directory through its descriptor.
    pub fn preopen(&self) -> &Preopen {
        &self.preopen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_directory_stays_the_one_opened_when_its_path_is_swapped() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let (data, secret) = (root.join("data"), root.join("secret"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("note"), "mine").unwrap();
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("note"), "not yours").unwrap();
        let pinned =
            PinnedDir::open(&Preopen { host_path: data.clone(), guest_path: "/data".into(), read_only: true }).unwrap();
        // The guest swaps the path for a symlink out of its reach.
        std::fs::rename(&data, root.join("moved")).unwrap();
        std::os::unix::fs::symlink(&secret, &data).unwrap();
        let through_descriptor = pinned.preopen().host_path.join("note");
        assert_eq!(std::fs::read_to_string(through_descriptor).unwrap(), "mine");
        assert!(pinned.preopen().read_only);

        // A path already swapped when it is opened is refused.
        assert!(PinnedDir::open(&Preopen { host_path: data, guest_path: "/data".into(), read_only: true }).is_err());
    }
}
