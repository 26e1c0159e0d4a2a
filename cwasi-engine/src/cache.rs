//! On-disk cache of compiled modules, keyed by the module's content hash.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// A directory of compiled artifacts for one engine build.
///
/// Artifacts live in `<root>/<engine>-<compat>/<sha256 of module>`, where
/// `compat` identifies the engine version and settings that produced them,
/// so an engine upgrade never loads an incompatible artifact.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// Where the artifact of one module lives, whether or not it exists yet.
#[derive(Debug, Clone)]
pub struct CachedArtifact {
    pub path: PathBuf,
    pub module_sha256: String,
}

impl ModuleCache {
    pub fn new(root: &Path, engine: &str, compat: &str) -> anyhow::Result<Self> {
        let dir = root.join(format!("{engine}-{compat}"));
        // 0700: artifacts are native code that the engine maps without re-validating.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating module cache {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn artifact_for(&self, module_bytes: &[u8]) -> CachedArtifact {
        let module_sha256 = hex::encode(Sha256::digest(module_bytes));
        CachedArtifact { path: self.dir.join(format!("{module_sha256}.bin")), module_sha256 }
    }

    /// Writes an artifact atomically: readers see the old state or the whole file.
    pub fn store(&self, artifact: &CachedArtifact, bytes: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{}.{}.tmp", artifact.module_sha256, std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes).and_then(|()| file.sync_data()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &artifact.path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_artifact_and_store_is_atomic() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModuleCache::new(root.path(), "test", "v1").unwrap();
        let a = cache.artifact_for(b"\0asm module a");
        assert_eq!(a.path, cache.artifact_for(b"\0asm module a").path);
        assert_ne!(a.path, cache.artifact_for(b"\0asm module b").path);
        assert!(!a.path.exists());
        cache.store(&a, b"compiled").unwrap();
        assert_eq!(fs::read(&a.path).unwrap(), b"compiled");
        let leftovers = fs::read_dir(a.path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary file left behind");
    }

    #[test]
    fn engine_builds_do_not_share_artifacts() {
        let root = tempfile::tempdir().unwrap();
        let v1 = ModuleCache::new(root.path(), "test", "v1").unwrap();
        let v2 = ModuleCache::new(root.path(), "test", "v2").unwrap();
        assert_ne!(v1.artifact_for(b"m").path, v2.artifact_for(b"m").path);
    }
}
