use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cni::{CNI_BIN_DIR, CniNetwork};
use crate::images::TestImage;
use crate::netns::Netns;
use crate::teardown::{Registered, Teardown, register};

/// The runtime type of the cwasi shim.
pub const RUNTIME: &str = "io.containerd.cwasi.v1";
const NAMESPACE: &str = "cwasi-test";

/// A private containerd (Debian's package) with its own root, state and
/// socket, the CRI plugin disabled, and the cwasi shim on its `PATH`.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    socket: PathBuf,
    /// In the live list that [`crate::on_interrupt`] tears down.
    registered: Option<Registered>,
    /// The pods' CNI network, if this containerd has one; dropped after the
    /// daemon and its pods are gone.
    network: Option<CniNetwork>,
}

/// What one `ctr` command did.
#[derive(Debug)]
pub struct CtrOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtrOutput {
    /// Fails with everything `ctr` said unless it exited 0.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.code != Some(0) {
            bail!("ctr exited with {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr);
        }
        Ok(self)
    }
}

impl Containerd {
    /// Starts containerd with `shim` (the `containerd-shim-cwasi-v1` binary)
    /// on its `PATH`; `env` is added to the daemon's (and so the shims') environment.
    pub fn start(shim: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with_shims(&[("containerd-shim-cwasi-v1", shim)], env)
    }

    /// Like [`Containerd::start`] with several shims: (binary name on the
    /// daemon's PATH, path of the binary).
    pub fn start_with_shims(shims: &[(&str, &Path)], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = rig_dir()?;
        Self::launch(dir, None, None, shims, env, r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#, "")
    }

    /// Like [`Containerd::start`], the daemon in network namespace `netns`
    /// (a node of a [`TestNetwork`](crate::TestNetwork)): its shims inherit
    /// it, and so do guests, which run with `--net-host`. Only the network
    /// namespace differs; files and mounts are the host's.
    pub fn start_in(shim: &Path, env: &[(&str, &str)], netns: &Netns) -> anyhow::Result<Self> {
        let dir = rig_dir()?;
        let shims = [("containerd-shim-cwasi-v1", shim)];
        Self::launch(dir, Some(netns), None, &shims, env, r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#, "")
    }

    /// containerd with its CRI plugin, as a Kubernetes node runs it:
    /// `runtime_config` is appended to the config (it registers runtimes,
    /// e.g. `deploy/containerd/cwasi-runtime-1.6.toml`), `sandbox_image` must
    /// be imported into the `k8s.io` namespace before pods start; no CNI
    /// network is configured (pods use the host network).
    pub fn start_cri(shim: &Path, sandbox_image: &str, runtime_config: &str) -> anyhow::Result<Self> {
        Self::start_cri_with(shim, sandbox_image, runtime_config, false)
    }

    /// Like [`Containerd::start_cri`], and pods that do not use the host
    /// network get their own network namespace on the rig's CNI network (a
    /// bridge without a host address on [`crate::POD_SUBNET`]).
    pub fn start_cri_with_network(shim: &Path, sandbox_image: &str, runtime_config: &str) -> anyhow::Result<Self> {
        Self::start_cri_with(shim, sandbox_image, runtime_config, true)
    }

    fn start_cri_with(shim: &Path, sandbox_image: &str, runtime_config: &str, network: bool) -> anyhow::Result<Self> {
        let dir = rig_dir()?;
        let network = network.then(|| CniNetwork::write(dir.path())).transpose()?;
        let conf_dir = network
            .as_ref()
            .map_or_else(|| "/nonexistent/cwasi-test-cni".to_owned(), |n| n.conf_dir().display().to_string());
        // Network namespaces are pinned under the rig's state directory (not
        // /var/run/netns), so the rig's teardown unmounts them with the rest.
        let cri = format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf_dir}"
  # What `containerd config default` has: runc stays the default runtime.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

{runtime_config}"#
        );
        Self::launch(dir, None, network, &[("containerd-shim-cwasi-v1", shim)], &[], "", &cri)
    }

    /// `top_level` keys go before the first table, `tables` at the end.
    fn launch(
        dir: tempfile::TempDir,
        netns: Option<&Netns>,
        network: Option<CniNetwork>,
        shims: &[(&str, &Path)],
        env: &[(&str, &str)],
        top_level: &str,
        tables: &str,
    ) -> anyhow::Result<Self> {
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin)?;
        for (name, shim) in shims {
            std::os::unix::fs::symlink(shim, bin.join(name)).context("linking a shim into the daemon's PATH")?;
        }
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
{top_level}
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"

{tables}
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("containerd");
        if let Some(netns) = netns {
            netns.apply(&mut command)?;
        }
        let daemon = command
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            // Each test rig compiles modules into its own cache.
            .env("CWASI_CACHE_DIR", dir.path().join("cache"))
            .env("CWASI_RUN_DIR", dir.path().join("run"))
            // CWASI_REDIS_URL stays unset, as on a node without Redis: remote
            // mode is off unless a test names a Redis (env or cwasi.io/redis).
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (Debian package `containerd`)")?;
        let registered = Some(register(Teardown { pid: daemon.id(), dir: dir.path().to_owned() }));
        let containerd = Self { dir, daemon, socket, registered, network };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// The pods' CNI network (with [`Containerd::start_cri_with_network`]).
    pub fn network(&self) -> Option<&CniNetwork> {
        self.network.as_ref()
    }

    /// The daemon's gRPC socket (for CRI clients).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket.exists() && self.ctr(&["version"]).is_ok_and(|o| o.code == Some(0)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd did not come up; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temporary directory holding everything of this containerd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's own output, where shim logs are copied too.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The pid of the running task `id` (its guest process), from `ctr task ls`.
    pub fn task_pid(&self, id: &str) -> anyhow::Result<u32> {
        let tasks = self.ctr(&["task", "ls"])?.ok()?.stdout;
        tasks
            .lines()
            .find_map(|line| {
                let mut cols = line.split_whitespace();
                (cols.next()? == id).then(|| cols.next()?.parse().ok())?
            })
            .with_context(|| format!("no task {id} in {tasks}"))
    }

    /// Runs `ctr` against this containerd, in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` in `namespace` (`k8s.io` is the CRI plugin's).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr_command_in(namespace, args).output().context("running ctr").map(|out| CtrOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A `ctr` command ready to be spawned (for commands that run in the background).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.socket).args(["--namespace", namespace]).args(args).stdin(Stdio::null());
        command
    }

    pub fn import(&self, image: &TestImage) -> anyhow::Result<()> {
        self.import_in(NAMESPACE, image)
    }

    pub fn import_in(&self, namespace: &str, image: &TestImage) -> anyhow::Result<()> {
        self.ctr_in(namespace, &["images", "import", "--all-platforms", &image.tar.to_string_lossy()])?.ok().map(drop)
    }

    /// `ctr run --rm` of `image` through the cwasi runtime; `flags` go before
    /// the image, `command` (if any) replaces the image's entrypoint.
    pub fn run(&self, id: &str, image: &TestImage, flags: &[&str], command: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr(&Self::run_args(id, image, flags, command))
    }

    ///
    /// The guest shares the host's network (`--net-host`): a cwasi guest is
    /// in its container's network namespace, and the test functions reach
    /// the rig's Redis on the host's loopback.
    pub fn run_args<'a>(id: &'a str, image: &'a TestImage, flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--net-host"];
        all.extend_from_slice(flags);
        Self::run_args_with(RUNTIME, id, image, &all, command)
    }

    /// `ctr run` arguments for another runtime type (e.g. a reference shim).
    pub fn run_args_with<'a>(
        runtime: &'a str,
        id: &'a str,
        image: &'a TestImage,
        flags: &[&'a str],
        command: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec!["run", "--runtime", runtime, "--platform", "wasip1/wasm"];
        // ctr's default cgroup, /<namespace>/<id>, is the same for every rig's
        // "echo": tests running at once would share (and delete) each other's
        // cgroups. Each container gets its own, ending in its id, unless the
        // test names one.
        if !flags.contains(&"--cgroup") {
            static CONTAINERS: AtomicU64 = AtomicU64::new(0);
            let n = CONTAINERS.fetch_add(1, Ordering::Relaxed);
            // Leaked: the arguments borrow for 'a; a few bytes per container a test starts.
            let path: &'a str = String::leak(format!("/{NAMESPACE}/{}-{n}-{id}", std::process::id()));
            args.extend(["--cgroup", path]);
        }
        args.extend_from_slice(flags);
        args.push(&image.reference);
        args.push(id);
        args.extend_from_slice(command);
        args
    }

    /// A private containerd with the shim and the images of `functions` imported.
    pub fn with_functions(shim: &Path, functions: &[&str]) -> anyhow::Result<(Self, Vec<TestImage>)> {
        let containerd = Self::start(shim, &[])?;
        let images = functions
            .iter()
            .map(|function| {
                let image = crate::test_image(function)?;
                containerd.import(&image)?;
                Ok(image)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((containerd, images))
    }

    /// True when the log shows the router sending calls to `peer` in `mode`.
    pub fn logged_call(&self, peer: &str, mode: &str) -> bool {
        let (peer, mode) = (format!("peer={peer}"), format!("mode={mode}"));
        self.log().lines().any(|l| l.contains("calling peer") && l.contains(&peer) && l.contains(&mode))
    }

    /// The mode the router of container `id` chose for `peer`, from its
    /// first-call log line (`calling peer peer=… mode=…`).
    pub fn logged_mode(&self, id: &str, peer: &str) -> Option<String> {
        let (container, peer) = (format!("container={id}"), format!("peer={peer}"));
        self.log().lines().filter(|l| l.contains("calling peer")).find_map(|line| {
            let fields = || line.split(|c: char| c.is_whitespace() || matches!(c, '{' | '}' | ':' | '"'));
            let ours = fields().any(|f| f == container) && fields().any(|f| f == peer);
            ours.then(|| fields().find_map(|f| f.strip_prefix("mode=")).map(str::to_owned)).flatten()
        })
    }

    /// Starts `image` detached (`ctr run -d`): for functions that serve.
    pub fn start_detached(&self, id: &str, image: &TestImage, flags: &[&str], command: &[&str]) -> anyhow::Result<()> {
        let mut flags = flags.to_vec();
        flags.push("-d");
        self.run(id, image, &flags, command)?.ok().map(drop)
    }

    /// Starts `image` as the serving function `name` (container id `name`)
    /// and waits until it listens. `flags` add annotations and the like.
    pub fn serve(&self, image: &TestImage, name: &str, flags: &[&str]) -> anyhow::Result<()> {
        let function = format!("cwasi.io/function={name}");
        let mut all = vec!["--annotation", "cwasi.io/serve=true", "--annotation", &function];
        all.extend_from_slice(flags);
        self.start_detached(name, image, &all, &[])?;
        self.wait_for_log(&["serving", &format!("function={name}")], Duration::from_secs(30))
    }

    /// Waits until containerd's log has a line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(|line| needles.iter().all(|n| line.contains(n))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no log line with {needles:?} within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sockets of the registered instances of `function` (any node, any namespace).
    pub fn registered_sockets(&self, function: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.path().join("run")];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "sock")
                    && path.parent().and_then(Path::file_name).is_some_and(|n| n == function)
                {
                    found.push(path);
                }
            }
        }
        found
    }
}

/// The temporary directory of one rig.
fn rig_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("cwasi-ctd-").tempdir()?)
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The daemon first, so it starts no cleanup shims while we work; it
        // is reaped last, so its pid stays ours while it is in the live list.
        let teardown = Teardown { pid: self.daemon.id(), dir: self.dir.path().to_owned() };
        let _ = self.daemon.kill();
        teardown.sweep();
        self.registered.take();
        let _ = self.daemon.wait();
    }
}
