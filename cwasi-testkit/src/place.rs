//! Where a rig server listens: the host's loopback, or an address of a
//! [`TestNetwork`](crate::TestNetwork) namespace that only that network reaches.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::netns::{Netns, REDIS_NODE, TestNetwork};

#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub host: String,
    pub netns: Option<Netns>,
}

impl Place {
    pub fn loopback() -> Self {
        Self { host: "127.0.0.1".to_owned(), netns: None }
    }

    /// The Redis namespace of `network`, at its address.
    pub fn redis_of(network: &TestNetwork) -> Self {
        Self { host: network.address(REDIS_NODE).to_owned(), netns: Some(network.netns(REDIS_NODE).clone()) }
    }

    /// Runs `f` where the server listens (the host, or a thread in its namespace).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        match &self.netns {
            None => Ok(f()),
            Some(netns) => netns.run_in(f),
        }
    }

    /// `program`, to run where the server listens.
    pub fn command(&self, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        if let Some(netns) = &self.netns {
            netns.apply(&mut command)?;
        }
        Ok(command)
    }

    /// A port free on this address now.
    pub fn free_port(&self) -> anyhow::Result<u16> {
        let host = self.host.clone();
        Ok(self.run(move || TcpListener::bind((host.as_str(), 0))?.local_addr().map(|a| a.port()))??)
    }

    /// A port free with `port + 10000` free too (a cluster node's bus port).
    pub fn free_port_pair(&self) -> anyhow::Result<u16> {
        let host = self.host.clone();
        self.run(move || {
            for _ in 0..200 {
                let Ok(port) = TcpListener::bind((host.as_str(), 0)).and_then(|l| l.local_addr()).map(|a| a.port())
                else {
                    continue;
                };
                if port < 55000
                    && TcpListener::bind((host.as_str(), port)).is_ok()
                    && TcpListener::bind((host.as_str(), port + 10000)).is_ok()
                {
                    return Ok(port);
                }
            }
            anyhow::bail!("no free port pair on {host}")
        })?
    }

    /// True when the port accepts TCP connections.
    pub fn listening(&self, port: u16) -> bool {
        let host = self.host.clone();
        self.run(move || TcpStream::connect((host.as_str(), port)).is_ok()).unwrap_or(false)
    }

    /// True when the port answers a RESP `PING` (any answer: a
    /// password-protected server answers NOAUTH).
    pub fn answers_ping(&self, port: u16) -> bool {
        let host = self.host.clone();
        self.run(move || {
            let Ok(mut stream) = TcpStream::connect((host.as_str(), port)) else { return false };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 1];
            stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok()
        })
        .unwrap_or(false)
    }
}
