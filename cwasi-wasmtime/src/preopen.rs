//! Directories a guest or an embedded peer sees, as wasmtime-wasi takes them.

use anyhow::Context as _;
use cwasi_engine::Preopen;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Shows the guest (or an embedded peer) `preopen`, read-only if it says so.
pub(crate) fn add_preopen(wasi: &mut WasiCtxBuilder, preopen: &Preopen) -> anyhow::Result<()> {
    let perms = if preopen.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
    wasi.preopened_dir(&preopen.host_path, &preopen.guest_path, perms)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("preopening {} as {}", preopen.host_path.display(), preopen.guest_path))?;
    Ok(())
}
