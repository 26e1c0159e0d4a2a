use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::TestNetwork;
use crate::place::Place;
use crate::teardown::{Registered, Teardown, register};

/// A private `redis-server` (Debian package) on a free loopback port (or on
/// the Redis address of a [`TestNetwork`]), with its data in a temporary
/// directory; plain, with a password, or TLS only.
pub struct RedisServer {
    dir: tempfile::TempDir,
    place: Place,
    port: u16,
    durable: bool,
    password: Option<String>,
    tls: Option<TlsFiles>,
    /// The running server, in the live list that [`crate::on_interrupt`] tears down.
    process: Option<(Child, Registered)>,
}

impl RedisServer {
    /// A durable server (append-only file, fsync on every write): a restart loses nothing.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// `durable: false` is a plain in-memory Redis, as benchmarks want.
    pub fn start_with(durable: bool) -> anyhow::Result<Self> {
        Self::start_at(Place::loopback(), durable, None, false)
    }

    /// A durable server in the Redis namespace of `network`, bound to its
    /// address there: only the network's nodes reach it.
    pub fn start_on(network: &TestNetwork) -> anyhow::Result<Self> {
        Self::start_on_with(network, true)
    }

    /// [`RedisServer::start_on`], durable or not as in [`RedisServer::start_with`].
    pub fn start_on_with(network: &TestNetwork, durable: bool) -> anyhow::Result<Self> {
        Self::start_at(Place::redis_of(network), durable, None, false)
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> anyhow::Result<Self> {
        Self::start_at(Place::loopback(), false, Some(password), false)
    }

    /// Like [`RedisServer::start_with_password`], on `network` as [`RedisServer::start_on`].
    pub fn start_with_password_on(network: &TestNetwork, password: &str) -> anyhow::Result<Self> {
        Self::start_at(Place::redis_of(network), false, Some(password), false)
    }

    /// A server that speaks TLS only (`--tls-port`, no plain port), with a
    /// certificate for `127.0.0.1` and `localhost` from a CA made for it
    /// ([`RedisServer::tls_files`]); clients need no certificate.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_at(Place::loopback(), false, None, true)
    }

    /// Like [`RedisServer::start_tls`], on `network` as [`RedisServer::start_on`]:
    /// the certificate names the network address too.
    pub fn start_tls_on(network: &TestNetwork) -> anyhow::Result<Self> {
        Self::start_at(Place::redis_of(network), false, None, true)
    }

    fn start_at(place: Place, durable: bool, password: Option<&str>, tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cwasi-redis-").tempdir()?;
        let port = place.free_port()?;
        let tls = tls.then(|| TlsFiles::create_for(dir.path(), &[&place.host])).transpose()?;
        let password = password.map(str::to_owned);
        let mut server = Self { dir, place, port, durable, password, tls, process: None };
        server.launch()?;
        Ok(server)
    }

    /// `redis://<address>:<port>` (`rediss://` with TLS), with
    /// `:<password>@` when it has one; the address is 127.0.0.1 or, on a
    /// test network, the Redis namespace's.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let host = &self.place.host;
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@{host}:{}", self.port),
            None => format!("{scheme}://{host}:{}", self.port),
        }
    }

    /// `host:port` the server listens on.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.place.host, self.port)
    }

    /// The CA and server certificate of a TLS server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("redis.log"))?;
        let child = self
            .place
            .command("redis-server")?
            .args(["--bind", self.place.host.as_str()])
            .args(match &self.tls {
                None => vec!["--port".into(), self.port.to_string()],
                Some(tls) => {
                    let path = |p: &Path| p.to_string_lossy().into_owned();
                    vec![
                        "--port".into(),
                        "0".into(),
                        "--tls-port".into(),
                        self.port.to_string(),
                        "--tls-cert-file".into(),
                        path(&tls.server_cert),
                        "--tls-key-file".into(),
                        path(&tls.server_key),
                        "--tls-ca-cert-file".into(),
                        path(&tls.ca_cert),
                        "--tls-auth-clients".into(),
                        "no".into(),
                    ]
                }
            })
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
        let registered = register(Teardown { pid: child.id(), dir: self.dir.path().to_owned() });
        self.process = Some((child, registered));
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
        if self.tls.is_some() {
            // Listening is as far as plain TCP gets; the log says when it is ready.
            let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            return log.contains("Ready to accept connections") && self.place.listening(self.port);
        }
        self.place.answers_ping(self.port)
    }

    /// Stops the server as an operator would (SIGTERM: it flushes its data).
    pub fn stop(&mut self) {
        if let Some((mut child, registered)) = self.process.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            drop(registered);
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
        if let Some((mut child, registered)) = self.process.take() {
            let _ = child.kill();
            drop(registered);
            let _ = child.wait();
        }
    }
}

/// A CA and a server certificate signed by it, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate: what clients trust (`CWASI_REDIS_CA_FILE`).
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        Self::create_for(dir, &[])
    }

    /// Like [`TlsFiles::create`], the certificate naming `hosts` too.
    pub fn create_for(dir: &Path, hosts: &[&str]) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "cwasi test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        for host in hosts {
            if !names.iter().any(|n| n == host) {
                names.push((*host).to_owned());
            }
        }
        let mut server = CertificateParams::new(names)?;
        server.distinguished_name.push(DnType::CommonName, "localhost");
        let server = server.signed_by(&server_key, &ca)?;
        let files = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&files.ca_cert, ca.pem())?;
        std::fs::write(&files.server_cert, server.pem())?;
        std::fs::write(&files.server_key, server_key.serialize_pem())?;
        Ok(files)
    }
}
