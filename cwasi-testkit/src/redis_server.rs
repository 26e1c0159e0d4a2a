use std::net::TcpStream;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A private `redis-server` (Debian package) on a free loopback port, with
/// its data in a temporary directory.
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    durable: bool,
    password: Option<String>,
    process: Option<Child>,
}

impl RedisServer {
    /// A durable server (append-only file, fsync on every write): a restart loses nothing.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// `durable: false` is a plain in-memory Redis, as benchmarks want.
    pub fn start_with(durable: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cwasi-redis-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self { dir, port, durable, password: None, process: None };
        server.launch()?;
        Ok(server)
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cwasi-redis-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self { dir, port, durable: false, password: Some(password.to_owned()), process: None };
        server.launch()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`, with `:<password>@` when it has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(if self.durable {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .args(["--save", ""])
            .args(self.password.as_ref().map(|p| ["--requirepass", p.as_str()]).into_iter().flatten())
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server (Debian package `redis-server`)")?;
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            if Instant::now() > deadline {
                bail!("redis-server did not come up on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        // Any answer will do (a password-protected server answers NOAUTH).
        let mut reply = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok()
    }

    /// Stops the server as an operator would (SIGTERM: it flushes its data).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
