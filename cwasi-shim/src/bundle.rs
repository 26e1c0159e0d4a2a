//! Turns an OCI bundle (`config.json` + rootfs) into what the shim runs.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use cwasi_comm::FunctionConfig;
use cwasi_engine::{EmbeddedModule, GuestSpec, Preopen};
use oci_spec::runtime::{Mount, Spec};

/// What the shim's environment configures for every container.
#[derive(Debug, Clone)]
pub struct ShimSettings {
    pub cache_dir: PathBuf,
    pub redis_url: Option<String>,
    /// Deadline of calls when `cwasi.io/timeout` gives none.
    pub call_timeout: std::time::Duration,
    /// Namespace credentials and the endpoints pods may name.
    pub redis_policy: crate::settings::RedisPolicy,
}

/// CRI marks a pod's sandbox ("pause") container with this annotation.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// What a container asks the shim to do.
// One per container, built once and moved into the guest: boxing the large
// variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Workload {
    /// Run a WebAssembly function.
    Function { guest: GuestSpec, function: FunctionConfig },
    /// A container without wasm (a pod's pause container): it exists until killed.
    Sandbox,
}

/// Reads `<bundle>/config.json`.
pub fn read_spec(bundle: &Path) -> anyhow::Result<Spec> {
    let config = bundle.join("config.json");
    Spec::load(&config).with_context(|| format!("reading {}", config.display()))
}

/// Resolves what `spec` runs: the module inside the rootfs, or a sandbox.
/// Functions of a pod live in its Kubernetes namespace, others in their
/// containerd namespace.
pub fn load(
    bundle: &Path,
    spec: &Spec,
    containerd_namespace: &str,
    settings: &ShimSettings,
) -> anyhow::Result<Workload> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Workload::Sandbox);
    }

    let root = spec.root().as_ref().context("config.json has no root")?;
    let rootfs = bundle.join(root.path());
    let process = spec.process().as_ref().context("config.json has no process")?;
    let args = process.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        bail!("the container has no command: give the module to run (e.g. /app.wasm)");
    };
    let cwd = process.cwd();
    let (module_arg, entry) = match arg0.split_once('#') {
        Some((module, func)) if !func.is_empty() => (module, Some(func.to_owned())),
        _ => (arg0.as_str(), None),
    };
    let module = resolve_in_rootfs(&rootfs, cwd, module_arg)?;
    if !is_wasm(&module)? {
        tracing::warn!(
            command = %arg0,
            "the command is not a WebAssembly module: running the container as a sandbox that waits until it is killed"
        );
        return Ok(Workload::Sandbox);
    }

    let default_name = annotations
        .get(CRI_CONTAINER_NAME)
        .cloned()
        .or_else(|| module.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "function".to_owned());
    let mut function = FunctionConfig::from_annotations(&annotations, &default_name, &host_name())?;
    function.namespace =
        annotations.get(CRI_SANDBOX_NAMESPACE).cloned().unwrap_or_else(|| containerd_namespace.to_owned());
    match &function.redis_url {
        Some(url) => settings.redis_policy.check_annotation(url)?,
        None => function.redis_url = settings.redis_policy.credentials.get(&function.namespace).cloned(),
    }
    if function.redis_url.is_none() {
        function.redis_url = settings.redis_url.clone();
    }
    function.call_timeout.get_or_insert(settings.call_timeout);

    let mut preopens = vec![Preopen {
        host_path: rootfs.clone(),
        guest_path: "/".to_owned(),
        read_only: root.readonly().unwrap_or(false),
    }];
    if cwd != Path::new("/") {
        preopens.push(Preopen {
            host_path: resolve_in_rootfs(&rootfs, Path::new("/"), &cwd.to_string_lossy())?,
            guest_path: ".".to_owned(),
            read_only: root.readonly().unwrap_or(false),
        });
    }
    preopens.extend(spec.mounts().iter().flatten().filter_map(bind_mount_preopen));

    let memory_limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|limit| u64::try_from(limit).ok())
        .filter(|limit| *limit > 0);

    let mut env: Vec<(String, String)> = process
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // A function may want to know who it is (logs, replies); the image's
    // own settings win.
    for (key, value) in
        [("CWASI_FUNCTION", &function.name), ("CWASI_NODE", &function.node), ("CWASI_NAMESPACE", &function.namespace)]
    {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_owned(), value.clone()));
        }
    }

    let embedded = function
        .embed
        .iter()
        .map(|(name, path)| {
            let module = resolve_in_rootfs(&rootfs, Path::new("/"), &path.to_string_lossy())
                .with_context(|| format!("embedded peer {name} (cwasi.io/embed)"))?;
            anyhow::ensure!(is_wasm(&module)?, "embedded peer {name}: {} is not a WebAssembly module", path.display());
            let settings = function.embedded_settings.get(name).cloned().unwrap_or_default();
            let dirs = settings
                .dirs
                .iter()
                .map(|dir| peer_preopen(&preopens, dir))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("embedded peer {name} (cwasi.io/embed.{name}.dirs)"))?;
            Ok(EmbeddedModule { name: name.clone(), module, env: settings.env, preopens: dirs })
        })
        .collect::<anyhow::Result<_>>()?;

    let mut guest_args = args.clone();
    guest_args[0] = module_arg.to_owned();
    Ok(Workload::Function {
        guest: GuestSpec {
            module,
            entry,
            args: guest_args,
            env,
            preopens,
            memory_limit,
            shared_memory: None,
            cache_dir: Some(settings.cache_dir.clone()),
            embedded,
        },
        function,
    })
}

/// Resolves `path` (absolute, or relative to `cwd`) inside `rootfs`, refusing
/// anything that would leave it, through `..` or through a symlink.
fn resolve_in_rootfs(rootfs: &Path, cwd: &Path, path: &str) -> anyhow::Result<PathBuf> {
    let in_container = Path::new(cwd).join(path);
    if in_container.components().any(|c| c == Component::ParentDir) {
        bail!("{path:?} must not contain '..'");
    }
    let relative: PathBuf = in_container.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let candidate = rootfs.join(relative);
    let resolved = candidate
        .canonicalize()
        .with_context(|| format!("{} not found in the container's rootfs", in_container.display()))?;
    let rootfs = rootfs.canonicalize().with_context(|| format!("rootfs {} is missing", rootfs.display()))?;
    if !resolved.starts_with(&rootfs) {
        bail!("{} points outside the container's rootfs", in_container.display());
    }
    Ok(resolved)
}

/// A directory of the container (`dir`, as the guest sees it) as a
/// read-only preopen for an embedded peer: found through the container's
/// own preopens (the deepest that holds it), so a peer never sees more than
/// its container, and resolved like a module path (no way out through `..`
/// or a symlink).
fn peer_preopen(container: &[Preopen], dir: &Path) -> anyhow::Result<Preopen> {
    let (holder, rest) = container
        .iter()
        .filter_map(|p| Some((p, dir.strip_prefix(&p.guest_path).ok()?)))
        .max_by_key(|(p, _)| p.guest_path.len())
        .with_context(|| format!("{} is not a directory the container sees", dir.display()))?;
    let host_path = resolve_in_rootfs(&holder.host_path, Path::new("/"), &rest.to_string_lossy())
        .with_context(|| format!("{} (under {})", dir.display(), holder.guest_path))?;
    anyhow::ensure!(host_path.is_dir(), "{} is not a directory", dir.display());
    Ok(Preopen { host_path, guest_path: dir.to_string_lossy().into_owned(), read_only: true })
}

fn is_wasm(path: &Path) -> anyhow::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(file.read_exact(&mut magic).is_ok() && magic == *b"\0asm")
}

/// Bind-mounted directories become preopens; other mounts (proc, sysfs, tmpfs
/// on /dev) mean nothing to a WASI guest, and WASI cannot preopen a single file.
fn bind_mount_preopen(mount: &Mount) -> Option<Preopen> {
    let options = mount.options().clone().unwrap_or_default();
    let is_bind = mount.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    let source = mount.source().as_ref()?;
    if !is_bind || !source.is_dir() {
        return None;
    }
    Some(Preopen {
        host_path: source.clone(),
        guest_path: mount.destination().to_string_lossy().into_owned(),
        read_only: options.iter().any(|o| o == "ro"),
    })
}

fn host_name() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_directories_are_read_only_and_within_what_the_container_sees() {
        let root = tempfile::tempdir().unwrap();
        let (rootfs, mount) = (root.path().join("rootfs"), root.path().join("mount"));
        fs::create_dir_all(rootfs.join("data/inner")).unwrap();
        fs::create_dir_all(mount.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("data/evil")).unwrap();
        let container = [
            Preopen { host_path: rootfs.clone(), guest_path: "/".into(), read_only: false },
            Preopen { host_path: mount.clone(), guest_path: "/mnt/m".into(), read_only: false },
        ];
        let data = peer_preopen(&container, Path::new("/data/inner")).unwrap();
        assert_eq!(
            (data.host_path, data.guest_path, data.read_only),
            (rootfs.join("data/inner"), "/data/inner".into(), true)
        );
        // The deepest preopen that holds it: the mount, not the rootfs.
        assert_eq!(peer_preopen(&container, Path::new("/mnt/m/sub")).unwrap().host_path, mount.join("sub"));
        assert!(peer_preopen(&container, Path::new("/data/evil")).is_err());
        assert!(peer_preopen(&container, Path::new("/data/missing")).is_err());
        assert!(peer_preopen(&container[1..], Path::new("/data")).is_err());
    }

    #[test]
    fn resolves_inside_rootfs_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path().join("rootfs");
        fs::create_dir_all(rootfs.join("app")).unwrap();
        fs::write(rootfs.join("app/f.wasm"), b"\0asm").unwrap();
        fs::write(root.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("evil")).unwrap();

        let found = resolve_in_rootfs(&rootfs, Path::new("/"), "/app/f.wasm").unwrap();
        assert!(found.ends_with("rootfs/app/f.wasm"));
        assert_eq!(found, resolve_in_rootfs(&rootfs, Path::new("/app"), "f.wasm").unwrap());
        assert!(resolve_in_rootfs(&rootfs, Path::new("/"), "/../secret").is_err());
        assert!(resolve_in_rootfs(&rootfs, Path::new("/"), "/evil/hostname").is_err());
        assert!(resolve_in_rootfs(&rootfs, Path::new("/"), "/missing.wasm").is_err());
        assert!(is_wasm(&found).unwrap());
    }
}
