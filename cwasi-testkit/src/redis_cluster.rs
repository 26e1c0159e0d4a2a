//! A real Redis Cluster for tests: six `redis-server` processes (Debian
//! package), three masters with a replica each, persistence on, created with
//! `redis-cli --cluster create`; and what an operator does to it (kill a
//! master, watch its replica take over, restart the old one).

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::TestNetwork;
use crate::place::Place;
use crate::teardown::{Registered, Teardown, register};

/// Masters and replicas: three of each.
const NODES: usize = 6;
/// How long a node may be unreachable before it counts as failed: short, so
/// a failover takes a couple of seconds in tests.
const NODE_TIMEOUT_MS: &str = "1000";
const SLOTS: usize = 16384;

/// A 6-process Redis Cluster on loopback ports or on the Redis address of a
/// [`TestNetwork`]; dropping it kills every process and removes its data.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    place: Place,
    /// `requirepass` (and `masterauth`, so replicas sync) of every node.
    password: Option<String>,
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    dir: PathBuf,
    id: String,
    /// Its replicas when it was last killed (the candidates for promotion).
    replicas_at_kill: Vec<usize>,
    /// The running server, in the live list that [`crate::on_interrupt`] tears down.
    process: Option<(Child, Registered)>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    flags: Vec<String>,
    master_id: String,
    slots: Vec<(usize, usize)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: fields[3].to_owned(),
            slots,
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn failed(&self) -> bool {
        self.has("fail") || self.has("fail?")
    }

    fn owns(&self, slot: usize) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

impl RedisCluster {
    /// A cluster on free loopback ports.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at(Place::loopback(), None)
    }

    /// A cluster in the Redis namespace of `network`, bound (and announced)
    /// at its address: only the network's nodes reach it.
    pub fn start_on(network: &TestNetwork) -> anyhow::Result<Self> {
        Self::start_at(Place::redis_of(network), None)
    }

    /// Like [`RedisCluster::start_on`] (`network` `None`: loopback), every
    /// node requiring `password`.
    pub fn start_with_password(network: Option<&TestNetwork>, password: &str) -> anyhow::Result<Self> {
        Self::start_at(network.map_or_else(Place::loopback, Place::redis_of), Some(password))
    }

    fn start_at(place: Place, password: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cwasi-rcluster-").tempdir()?;
        let password = password.map(str::to_owned);
        let mut cluster = Self { dir, place, password, nodes: Vec::new() };
        for i in 0..NODES {
            let port = loop {
                let port = cluster.place.free_port_pair()?;
                if cluster.nodes.iter().all(|n| n.port != port && n.port + 10000 != port && n.port != port + 10000) {
                    break port;
                }
            };
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            cluster.nodes.push(ClusterNode {
                port,
                dir: node_dir,
                id: String::new(),
                replicas_at_kill: Vec::new(),
                process: None,
            });
            cluster.launch(i)?;
        }
        for i in 0..NODES {
            cluster.nodes[i].id = cluster.cli(i, &["CLUSTER", "MYID"])?.trim().to_owned();
        }
        cluster.create()?;
        cluster.wait_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let port = node.port.to_string();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("redis.log"))?;
        let host = self.place.host.as_str();
        let child = self
            .place
            .command("redis-server")?
            .args(["--bind", host, "--port", &port, "--cluster-announce-ip", host])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            // A replica's first sync starts at once (the default waits 5 s
            // for more replicas); until it is done, it cannot take over.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args(self.password.iter().flat_map(|p| ["--requirepass", p, "--masterauth", p]))
            .arg("--dir")
            .arg(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server (Debian package `redis-server`)")?;
        let registered = register(Teardown { pid: child.id(), dir: node.dir.clone() });
        self.nodes[i].process = Some((child, registered));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.place.answers_ping(self.nodes[i].port) {
            if Instant::now() > deadline {
                bail!("cluster node {i} did not come up on {}:{}; its log:\n{}", host, self.nodes[i].port, self.log(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn create(&self) -> anyhow::Result<()> {
        let endpoints: Vec<String> = (0..NODES).map(|i| self.endpoint(i)).collect();
        let out = self
            .place
            .command("redis-cli")?
            .args(self.auth())
            .args(["--cluster", "create"])
            .args(&endpoints)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || !said.contains("All 16384 slots covered") {
            bail!("redis-cli --cluster create failed ({}):\n{said}", out.status);
        }
        Ok(())
    }

    /// `host:port` of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{}", self.place.host, self.nodes[i].port)
    }

    /// Number of nodes (masters and replicas).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has its six nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `redis+cluster://H1:P1,H2:P2,H3:P3`: the current masters as seeds;
    /// with a password, `redis+cluster://:PASSWORD@H1:P1,H2:P2,H3:P3`.
    pub fn url(&self) -> String {
        let masters = self.masters().unwrap_or_else(|_| (0..3).collect());
        let seeds: Vec<String> = masters.iter().map(|&i| self.endpoint(i)).collect();
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("redis+cluster://{auth}{}", seeds.join(","))
    }

    /// The seeds alone, `H1:P1,H2:P2,H3:P3`, for URLs of another form.
    pub fn seeds(&self) -> Vec<String> {
        let masters = self.masters().unwrap_or_else(|_| (0..3).collect());
        masters.iter().map(|&i| self.endpoint(i)).collect()
    }

    /// redis-cli's password arguments, if any.
    fn auth(&self) -> Vec<&str> {
        match &self.password {
            Some(password) => vec!["-a", password, "--no-auth-warning"],
            None => Vec::new(),
        }
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("redis.log")).unwrap_or_default()
    }

    /// `redis-cli` against node `i`; fails with what it said when it
    /// failed or the reply is an error.
    pub fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let port = self.nodes[i].port.to_string();
        let out = self
            .place
            .command("redis-cli")?
            .args(["-h", self.place.host.as_str(), "-p", &port])
            .args(self.auth())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let first = stdout.split_whitespace().next().unwrap_or("");
        let error = matches!(
            first,
            "ERR"
                | "MOVED"
                | "ASK"
                | "CLUSTERDOWN"
                | "TRYAGAIN"
                | "LOADING"
                | "READONLY"
                | "NOAUTH"
                | "WRONGPASS"
                | "NOPERM"
        ) || first.starts_with("(error)");
        if !out.status.success() || error {
            bail!(
                "redis-cli -p {port} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// `CLUSTER NODES` as some live node sees it.
    fn view(&self) -> anyhow::Result<Vec<NodeLine>> {
        let mut last = None;
        for i in (0..NODES).filter(|&i| self.alive(i)) {
            match self.cli(i, &["CLUSTER", "NODES"]) {
                Ok(out) => return Ok(out.lines().filter_map(NodeLine::parse).collect()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node is running")))
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The nodes that are masters owning slots now (as a live node sees it).
    pub fn masters(&self) -> anyhow::Result<Vec<usize>> {
        let mut masters: Vec<usize> = self
            .view()?
            .iter()
            .filter(|l| l.has("master") && !l.failed() && !l.slots.is_empty())
            .filter_map(|l| self.index_of(&l.id))
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// The node that is master of the slot of `key` now.
    pub fn master_of_key(&self, key: &str) -> anyhow::Result<usize> {
        let slot = self.slot_of(key)?;
        let view = self.view()?;
        let owner = view
            .iter()
            .find(|l| l.has("master") && !l.failed() && l.owns(slot))
            .with_context(|| format!("no live master owns slot {slot} of {key:?}: {view:?}"))?;
        self.index_of(&owner.id).with_context(|| format!("slot {slot} is owned by an unknown node {}", owner.id))
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> anyhow::Result<usize> {
        let live = (0..NODES).find(|&i| self.alive(i)).context("no cluster node is running")?;
        self.cli(live, &["CLUSTER", "KEYSLOT", key])?.trim().parse().context("CLUSTER KEYSLOT")
    }

    /// Moves the slot of `key` to master `to` as `redis-cli --cluster
    /// reshard` does: IMPORTING on `to`, MIGRATING on the owner, MIGRATE of
    /// its keys `batch` at a time (redis-cli's `--cluster-pipeline` is 10),
    /// then SETSLOT NODE on every master. Clients meet ASK (and TRYAGAIN for
    /// multi-key commands) while it moves, MOVED after. Returns the former
    /// owner and how many keys moved.
    pub fn migrate_slot_of(&self, key: &str, to: usize, batch: usize) -> anyhow::Result<(usize, usize)> {
        let slot = self.slot_of(key)?.to_string();
        let from = self.master_of_key(key)?;
        if from == to {
            bail!("node {to} owns slot {slot} already");
        }
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        self.cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        self.cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        let (port, count) = (self.nodes[to].port.to_string(), batch.max(1).to_string());
        let mut moved = 0;
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, &count])?;
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", self.place.host.as_str(), &port, "", "0", "5000"];
            if let Some(password) = &self.password {
                migrate.extend(["AUTH", password.as_str()]);
            }
            migrate.push("KEYS");
            migrate.extend(&keys);
            let out = self.cli(from, &migrate)?;
            if !matches!(out.trim(), "OK" | "NOKEY") {
                bail!("MIGRATE of {keys:?} from node {from} to {to}: {}", out.trim());
            }
            moved += keys.len();
        }
        // The new owner first, then the old one, then the other masters.
        self.cli(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        self.cli(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        for other in self.masters()?.into_iter().filter(|&m| m != to && m != from) {
            self.cli(other, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        }
        Ok((from, moved))
    }

    /// SIGKILL of node `i` (no shutdown: what a crash does).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let id = self.nodes[i].id.clone();
        let replicas: Vec<usize> =
            self.view()?.iter().filter(|l| l.master_id == id).filter_map(|l| self.index_of(&l.id)).collect();
        self.nodes[i].replicas_at_kill = replicas;
        if let Some((mut child, registered)) = self.nodes[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(registered);
        }
        Ok(())
    }

    /// Waits until a replica of the killed master `old` is master (with
    /// slots) and every live node says `cluster_state:ok`; returns it.
    pub fn wait_for_promotion(&self, old: usize) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let promoted = self.nodes[old].replicas_at_kill.iter().copied().find(|&r| {
                self.alive(r)
                    && self.cli(r, &["CLUSTER", "NODES"]).is_ok_and(|out| {
                        out.lines()
                            .filter_map(NodeLine::parse)
                            .any(|l| l.has("myself") && l.has("master") && !l.slots.is_empty())
                    })
            });
            if let Some(new) = promoted
                && self.all_ok()
            {
                return Ok(new);
            }
            if Instant::now() > deadline {
                bail!(
                    "no replica of node {old} (candidates {:?}) was promoted within 30 s; the cluster:\n{}",
                    self.nodes[old].replicas_at_kill,
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts node `i` again on its port and data; it rejoins (a former
    /// master as a replica of the one promoted in its place). Waits until it
    /// is in sync and every node says `cluster_state:ok`.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.alive(i) {
            bail!("node {i} is running");
        }
        self.launch(i)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self.cli(i, &["INFO", "replication"]).is_ok_and(|out| {
                out.contains("role:master") || (out.contains("role:slave") && out.contains("master_link_status:up"))
            });
            if synced && self.all_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {i} did not rejoin within 30 s; the cluster:\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when node `i` is a replica (as it sees itself).
    pub fn is_replica(&self, i: usize) -> bool {
        self.cli(i, &["ROLE"]).is_ok_and(|out| out.lines().next().is_some_and(|l| l.trim() == "slave"))
    }

    /// Every live node says `cluster_state:ok` with all slots served, and
    /// every live replica is in sync with a live master (else it could not
    /// take over when its master dies).
    fn all_ok(&self) -> bool {
        let live_ports: Vec<String> =
            (0..NODES).filter(|&i| self.alive(i)).map(|i| format!("master_port:{}", self.nodes[i].port)).collect();
        (0..NODES).filter(|&i| self.alive(i)).all(|i| {
            let ok = self.cli(i, &["CLUSTER", "INFO"]).is_ok_and(|out| {
                out.contains("cluster_state:ok") && out.contains(&format!("cluster_slots_ok:{SLOTS}"))
            });
            ok && self.cli(i, &["INFO", "replication"]).is_ok_and(|out| {
                out.contains("role:master")
                    || (out.contains("master_link_status:up") && live_ports.iter().any(|p| out.contains(p.as_str())))
            })
        })
    }

    /// Waits until every node is up, ok, knows all the others and all slots are served.
    fn wait_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let known = format!("cluster_known_nodes:{NODES}");
        loop {
            let all_known = (0..NODES).all(|i| self.cli(i, &["CLUSTER", "INFO"]).is_ok_and(|out| out.contains(&known)));
            if all_known && self.all_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not become ok within {timeout:?}:\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What each live node says of the cluster (for failure messages).
    fn describe(&self) -> String {
        (0..NODES)
            .map(|i| {
                if !self.alive(i) {
                    return format!("node {i} ({}): not running\n", self.endpoint(i));
                }
                let info = self.cli(i, &["CLUSTER", "INFO"]).unwrap_or_else(|e| e.to_string());
                let state =
                    info.lines().filter(|l| l.starts_with("cluster_state") || l.starts_with("cluster_slots_ok"));
                let nodes = self.cli(i, &["CLUSTER", "NODES"]).unwrap_or_else(|e| e.to_string());
                format!("node {i} ({}): {}\n{nodes}", self.endpoint(i), state.collect::<Vec<_>>().join(" "))
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some((mut child, registered)) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
                drop(registered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NodeLine;

    #[test]
    fn cluster_nodes_lines_parse() {
        let line = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004,host myself,slave \
                    e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected";
        let l = NodeLine::parse(line).unwrap();
        assert!(l.has("myself") && l.has("slave") && l.slots.is_empty());
        assert_eq!(l.master_id, "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca");
        let line = "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 \
                    connected 5461-10922 10925 [10923->-abc]";
        let l = NodeLine::parse(line).unwrap();
        assert!(l.owns(5461) && l.owns(10922) && l.owns(10925) && !l.owns(10923) && !l.owns(0));
    }
}
