use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use cwasi_engine::ModuleCache;
use wasmtime::{Engine, Module};

/// Where a module came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleSource {
    Cache,
    Compiled,
}

/// Identifies the wasmtime build and settings that produce compatible artifacts.
pub(crate) fn compat_tag(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Loads `module_path`, from the cache when an artifact for its bytes exists.
///
/// A cache that cannot be used only costs a compilation: it is logged, never fatal.
pub(crate) fn load(
    engine: &Engine,
    compat: &str,
    module_path: &Path,
    cache_root: Option<&Path>,
) -> anyhow::Result<(Module, ModuleSource)> {
    let bytes = std::fs::read(module_path).with_context(|| format!("reading module {}", module_path.display()))?;
    let cache = cache_root.and_then(|root| {
        ModuleCache::new(root, "wasmtime", compat)
            .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "module cache unusable"))
            .ok()
    });
    let artifact = cache.as_ref().map(|c| c.artifact_for(&bytes));

    if let Some(artifact) = artifact.as_ref().filter(|a| a.path.exists()) {
        // SAFETY: the artifact was written by `Module::serialize` of an engine
        // with the same compatibility hash (it is part of the directory name),
        // into a 0700 directory that only root writes; wasmtime still checks
        // its header and refuses a mismatched or truncated file.
        match unsafe { Module::deserialize_file(engine, &artifact.path) } {
            Ok(module) => return Ok((module, ModuleSource::Cache)),
            Err(e) => tracing::warn!(
                artifact = %artifact.path.display(),
                error = %e,
                "cached module unusable; compiling again"
            ),
        }
    }

    let started = Instant::now();
    let module = Module::new(engine, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling module {}", module_path.display()))?;
    tracing::info!(
        module = %module_path.display(),
        compile_ms = started.elapsed().as_millis() as u64,
        "compiled module"
    );
    if let (Some(cache), Some(artifact)) = (cache, artifact) {
        let stored = module.serialize().map_err(anyhow::Error::from).and_then(|bytes| cache.store(&artifact, &bytes));
        if let Err(e) = stored {
            tracing::warn!(error = %format!("{e:#}"), "could not store compiled module");
        }
    }
    Ok((module, ModuleSource::Compiled))
}
