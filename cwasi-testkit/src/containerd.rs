use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::images::TestImage;
use crate::mounts::unmount_below;

/// The runtime type of the cwasi shim.
pub const RUNTIME: &str = "io.containerd.cwasi.v1";
const NAMESPACE: &str = "cwasi-test";

/// A private containerd (Debian's package) with its own root, state and
/// socket, the CRI plugin disabled, and the cwasi shim on its `PATH`.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    socket: PathBuf,
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
        let dir = tempfile::Builder::new().prefix("cwasi-ctd-").tempdir()?;
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(shim, bin.join("containerd-shim-cwasi-v1"))
            .context("linking the shim into the daemon's PATH")?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )?;
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            // Each test rig compiles modules into its own cache.
            .env("CWASI_CACHE_DIR", dir.path().join("cache"))
            .env("CWASI_RUN_DIR", dir.path().join("run"))
            // No remote mode unless a test names a Redis (env or cwasi.io/redis).
            .env("CWASI_REDIS_URL", "none")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (Debian package `containerd`)")?;
        let containerd = Self { dir, daemon, socket };
        containerd.wait_ready()?;
        Ok(containerd)
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

    /// Runs `ctr` against this containerd, in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr_command(args)
            .output()
            .context("running ctr")
            .map(|out| CtrOutput {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
    }

    /// A `ctr` command ready to be spawned (for commands that run in the background).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    pub fn import(&self, image: &TestImage) -> anyhow::Result<()> {
        self.ctr(&["images", "import", "--all-platforms", &image.tar.to_string_lossy()])?
            .ok()
            .map(drop)
    }

    /// `ctr run --rm` of `image` through the cwasi runtime; `flags` go before
    /// the image, `command` (if any) replaces the image's entrypoint.
    pub fn run(&self, id: &str, image: &TestImage, flags: &[&str], command: &[&str]) -> anyhow::Result<CtrOutput> {
        self.ctr(&Self::run_args(id, image, flags, command))
    }

    pub fn run_args<'a>(id: &'a str, image: &'a TestImage, flags: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--runtime", RUNTIME, "--platform", "wasip1/wasm"];
        args.extend_from_slice(flags);
        args.push(&image.reference);
        args.push(id);
        args.extend_from_slice(command);
        args
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

    fn shim_pids(&self) -> Vec<Pid> {
        let needle = self.socket.to_string_lossy().into_owned();
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .map(Pid::from_raw)
            .filter(|pid| pid.as_raw() as u32 != self.daemon.id())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd by design: find them by our socket in their
        // command line. Their guest processes die with them (PDEATHSIG).
        for pid in self.shim_pids() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let daemon = Pid::from_raw(self.daemon.id() as i32);
        let _ = kill(daemon, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.daemon.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.daemon.kill();
                let _ = self.daemon.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unmount_below(self.dir.path());
    }
}
