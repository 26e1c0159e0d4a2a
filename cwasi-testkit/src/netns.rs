//! Nodes on a real network: network namespaces joined by veth pairs to a
//! bridge, all made for one test and deleted after it.
//!
//! A "hub" namespace holds the bridge; every node (and Redis) gets its own
//! namespace with `lo` and an `eth0` whose peer is a port of the bridge in
//! the hub. Nothing is created in the host's own network namespace, so the
//! host's interfaces and routes never change; the addresses exist only
//! inside the test's namespaces.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

use crate::teardown::{Piece, Registered, register_piece};

/// The name of the namespace that [`TestNetwork::new`] adds for Redis.
pub const REDIS_NODE: &str = "redis";

static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);

/// A network namespace a process or a thread can be put into.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file under `/var/run/netns` (what `setns` opens).
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Makes `command` run in this namespace (`setns` in the child before
    /// exec); only the network namespace changes, mounts stay the host's.
    pub fn apply(&self, command: &mut Command) -> anyhow::Result<()> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setns(2), which is async-signal-safe; `file` was opened
        // (O_CLOEXEC) before the fork, so nothing is allocated here.
        unsafe {
            command.pre_exec(move || setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
        }
        Ok(())
    }

    /// Runs `f` on a thread of its own that joined this namespace (a network
    /// namespace is per thread), e.g. to probe a TCP port only it can reach.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns into the test network")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in netns panicked"))?
    }
}

/// One node of a [`TestNetwork`].
#[derive(Debug)]
struct Member {
    node: String,
    netns: Netns,
    address: String,
    /// The bridge-side end of its veth pair, in the hub.
    port: String,
}

/// A bridge in a hub namespace and one namespace per node, plus one for
/// Redis ([`REDIS_NODE`]); dropping it deletes every namespace it made.
#[derive(Debug)]
pub struct TestNetwork {
    hub: Netns,
    members: Vec<Member>,
    subnet: String,
    /// In the live list that [`crate::on_interrupt`] tears down.
    _registered: Registered,
}

impl TestNetwork {
    /// Creates the network of `nodes` (and [`REDIS_NODE`]) on a private /24
    /// in 10.0.0.0/8. The subnet differs per network of this process; as
    /// every network is in namespaces of its own, two could even share one.
    pub fn new(nodes: &[&str]) -> anyhow::Result<Self> {
        // Unlike processes, namespaces outlive an interrupted test run.
        crate::on_interrupt()?;
        delete_stale();
        let counter = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("cwasi{pid}n{counter}");
        let subnet = format!("10.{}.{}", 100 + pid % 150, counter % 256);
        let mut all: Vec<&str> = nodes.to_vec();
        all.push(REDIS_NODE);
        if all.len() > 250 {
            bail!("a test network has at most 250 nodes");
        }
        let hub = Netns { name: format!("{prefix}-hub") };
        let members: Vec<Member> = all
            .iter()
            .enumerate()
            .map(|(i, node)| Member {
                node: (*node).to_owned(),
                netns: Netns { name: format!("{prefix}-{node}") },
                address: format!("{subnet}.{}", i + 2),
                port: format!("port{i}"),
            })
            .collect();
        // Registered before anything exists: a failure half-way (or Ctrl-C)
        // still deletes whatever was made.
        let mut names = vec![hub.name.clone()];
        names.extend(members.iter().map(|m| m.netns.name.clone()));
        let registered = register_piece(Piece::Netns(names));
        let network = Self { hub, members, subnet, _registered: registered };
        network.create().context("creating the test network")?;
        Ok(network)
    }

    fn create(&self) -> anyhow::Result<()> {
        let hub = self.hub.name();
        ip(&["netns", "add", hub])?;
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for member in &self.members {
            let ns = member.netns.name();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Made in the hub with its peer moved straight into the node: no
            // interface ever appears in the host's namespace.
            ip(&["-n", hub, "link", "add", &member.port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["-n", hub, "link", "set", &member.port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", member.address), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn member(&self, node: &str) -> &Member {
        self.members.iter().find(|m| m.node == node).unwrap_or_else(|| panic!("no node {node:?} in the test network"))
    }

    /// The node's address (IPv4, dotted).
    pub fn address(&self, node: &str) -> &str {
        &self.member(node).address
    }

    /// The network's subnet, `10.x.y.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.subnet)
    }

    /// The node's network namespace.
    pub fn netns(&self, node: &str) -> &Netns {
        &self.member(node).netns
    }

    /// Every namespace of this network, the hub first.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.hub.name.clone()).chain(self.members.iter().map(|m| m.netns.name.clone())).collect()
    }

    /// Cuts the node off (its bridge port goes down): a partition. Packets
    /// are dropped, not refused, as on a real cut link.
    pub fn link_down(&self, node: &str) -> anyhow::Result<()> {
        ip(&["-n", self.hub.name(), "link", "set", &self.member(node).port, "down"])
    }

    /// Joins the node again after [`TestNetwork::link_down`].
    pub fn link_up(&self, node: &str) -> anyhow::Result<()> {
        ip(&["-n", self.hub.name(), "link", "set", &self.member(node).port, "up"])
    }

    /// `program` ready to run in the node's namespace.
    pub fn command(&self, node: &str, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        self.netns(node).apply(&mut command)?;
        Ok(command)
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        delete_netns(&self.namespaces());
    }
}

/// Deletes the namespaces of test networks whose process is gone (killed
/// before it could clean up): `cwasi<pid>n<k>-…` with no process `<pid>`.
fn delete_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    let stale: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            let pid = name.strip_prefix("cwasi").and_then(|rest| rest.split_once('n')).map(|(pid, _)| pid);
            pid.and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    delete_netns(&stale);
}

/// `ip netns del` of each of `names` (those that exist). A namespace lives
/// on while a process is in it; the rig's pieces in it are dropped first.
pub(crate) fn delete_netns(names: &[String]) {
    for name in names.iter().rev() {
        if std::path::Path::new(&format!("/var/run/netns/{name}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `ip ARGS`, failing with what it said.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (Debian package `iproute2`)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
