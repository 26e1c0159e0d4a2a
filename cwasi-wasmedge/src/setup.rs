//! What libwasmedge is given for a guest or an embedded peer: its
//! configuration (the memory cap) and its preopens.

use cwasi_engine::Preopen;
use wasmedge_sdk::RunMode;
use wasmedge_sdk::config::{CommonConfigOptions, Config, ConfigBuilder, RuntimeConfigOptions};

/// A WebAssembly page, in bytes.
pub(crate) const PAGE: u64 = 65536;

/// A WasmEdge configuration whose memories stop at `memory_limit`. A module
/// may have one memory, 32-bit: the only one whose growths the container's
/// budget sees (`growth_gate`); a second could grow past it, and so could
/// the GC proposal's heap objects, which are off too. The interpreter runs
/// the module as the gate rewrote it (an AOT section in it is ignored).
pub(crate) fn config(memory_limit: Option<u64>) -> anyhow::Result<Config> {
    let mut runtime = RuntimeConfigOptions::default();
    if let Some(limit) = memory_limit {
        runtime = runtime.max_memory_pages(u32::try_from(limit / PAGE).unwrap_or(u32::MAX).max(1));
    }
    let proposals =
        CommonConfigOptions::default().multi_memories(false).memory64(false).gc(false).run_mode(RunMode::Interpreter);
    ConfigBuilder::new(proposals)
        .with_runtime_config(runtime)
        .build()
        .map_err(|e| anyhow::anyhow!("configuring WasmEdge: {e}"))
}

/// A preopen as libwasmedge takes it: `GUEST:HOST`, with `:readonly` for a
/// read-only one (without it the guest could write into a read-only mount:
/// WASI's rights are the only thing between them). A `:` in either path
/// would be read as a separator, so such a path is refused.
pub(crate) fn preopen(preopen: &Preopen) -> anyhow::Result<String> {
    let host = preopen.host_path.to_str().filter(|host| !host.contains(':'));
    let (Some(host), false) = (host, preopen.guest_path.contains(':')) else {
        anyhow::bail!(
            "WasmEdge cannot preopen {} as {}: its paths may not contain ':' (nor be other than UTF-8)",
            preopen.host_path.display(),
            preopen.guest_path
        );
    };
    let mode = if preopen.read_only { ":readonly" } else { "" };
    Ok(format!("{}:{host}{mode}", preopen.guest_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(host: &str, guest: &str, read_only: bool) -> Preopen {
        Preopen { host_path: host.into(), guest_path: guest.into(), read_only }
    }

    #[test]
    fn read_only_preopens_say_so_and_separators_in_paths_are_refused() {
        assert_eq!(preopen(&dir("/run/c/rootfs", "/", true)).unwrap(), "/:/run/c/rootfs:readonly");
        assert_eq!(preopen(&dir("/srv/data", "/data", false)).unwrap(), "/data:/srv/data");
        assert!(preopen(&dir("/srv/a:readonly", "/data", false)).is_err());
        assert!(preopen(&dir("/srv/data", "/da:ta", true)).is_err());
    }

    #[test]
    fn a_second_memory_a_64_bit_one_or_gc_heap_objects_are_refused_at_load() {
        let config = config(Some(64 << 20)).unwrap();
        let load = |wat: &str| wasmedge_sdk::Module::from_bytes(Some(&config), wat::parse_str(wat).unwrap());
        assert!(load("(module (memory 1))").is_ok());
        assert!(load("(module (memory 1) (memory 1))").is_err());
        assert!(load("(module (memory i64 1))").is_err());
        // A GC array: heap the memory budget would not see.
        assert!(load("(module (type (array (mut i8))) (func (drop (array.new_default 0 (i32.const 1)))))").is_err());
    }
}
