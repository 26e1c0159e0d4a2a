//! Two nodes and a Redis, as the demo and the benchmarks use them: node A
//! runs the caller and local servers, node B (a second private containerd)
//! the remote ones; every server function runs on both nodes, named with a
//! prefix per [`Route`], so one caller image reaches the same function by
//! every route.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::netns::REDIS_NODE;
use crate::{Containerd, RedisCluster, RedisServer, TestImage, TestNetwork, test_image, test_image_with_peers};

/// Where the two nodes and their Redis run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Both nodes in the host's network, one in-memory redis-server on loopback.
    Loopback,
    /// Each node in a network namespace of its own and the redis-server in
    /// another, joined by a bridge ([`TestNetwork`]).
    Netns,
    /// Both nodes in the host's network, a 6-process Redis Cluster on loopback.
    Cluster,
    /// [`Topology::Netns`] with a Redis Cluster in the Redis namespace.
    ClusterNetns,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Loopback => "loopback",
            Topology::Netns => "netns",
            Topology::Cluster => "cluster",
            Topology::ClusterNetns => "cluster-netns",
        }
    }

    fn netns(self) -> bool {
        matches!(self, Topology::Netns | Topology::ClusterNetns)
    }

    fn cluster(self) -> bool {
        matches!(self, Topology::Cluster | Topology::ClusterNetns)
    }
}

/// The Redis of a [`TwoNodes`]: one server or a cluster.
pub enum RedisBackend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl RedisBackend {
    /// The URL the nodes use (`redis://…` or `redis+cluster://…`).
    pub fn url(&self) -> String {
        match self {
            RedisBackend::Single(server) => server.url(),
            RedisBackend::Cluster(cluster) => cluster.url(),
        }
    }
}

/// How a call reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The peer's module ships in the caller's image.
    Embedded,
    /// The peer runs in another container on the caller's node.
    Local,
    /// The peer runs on the other node, through Redis.
    Remote,
    /// Co-located, forced through Redis (`cwasi.io/mode: peer=remote`): what functions do without cwasi.
    RedisBaseline,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::Embedded, Route::Local, Route::Remote, Route::RedisBaseline];

    pub fn name(self) -> &'static str {
        match self {
            Route::Embedded => "embedded",
            Route::Local => "local",
            Route::Remote => "remote",
            Route::RedisBaseline => "redis-baseline",
        }
    }

    /// Prefix of the peer names this route calls.
    fn prefix(self) -> &'static str {
        match self {
            Route::Embedded => "e",
            Route::Local | Route::RedisBaseline => "l",
            Route::Remote => "r",
        }
    }

    /// The name under which a caller reaches `function` by this route.
    pub fn peer(self, function: &str) -> String {
        format!("{}{function}", self.prefix())
    }
}

/// Timings a `bench-caller` guest printed.
#[derive(Debug, Clone, Copy)]
pub struct CallTimings {
    pub median_ns: u64,
    pub p99_ns: u64,
    pub samples: usize,
}

/// One `bench-caller` run: its timings and the mode cwasi's router chose
/// for the first peer, as node A's log shows it.
#[derive(Debug, Clone)]
pub struct Measured {
    pub timings: CallTimings,
    pub mode: Option<String>,
}

pub struct TwoNodes {
    pub redis: RedisBackend,
    pub node_a: Containerd,
    pub node_b: Containerd,
    caller: TestImage,
    /// (function name, test function that serves it)
    servers: Vec<(String, String)>,
    annotations_a: Vec<String>,
    /// With [`Topology::Netns`]: the network (dropped last, after the
    /// processes in it). A client that must reach Redis as node A does runs
    /// in `network.netns("node-a")` ([`crate::Netns::run_in`]).
    pub network: Option<TestNetwork>,
}

impl TwoNodes {
    /// Starts Redis and both nodes, imports the images, and serves each
    /// `(function, test function, extra annotations)` of `servers` on node A
    /// as `l<function>` and on node B as `r<function>`. The caller is the `bench-caller`
    /// test function, shipping every server module for embedded calls.
    pub fn start(shim: &Path, servers: &[(&str, &str, &[&str])]) -> anyhow::Result<Self> {
        Self::start_with(shim, servers, Topology::Loopback)
    }

    /// Like [`TwoNodes::start`], on `topology`. A single redis-server is
    /// in-memory (as benchmarks want); a cluster has persistence on.
    pub fn start_with(shim: &Path, servers: &[(&str, &str, &[&str])], topology: Topology) -> anyhow::Result<Self> {
        anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
        let network = topology.netns().then(|| TestNetwork::new(&["node-a", "node-b"])).transpose()?;
        let redis = match (&network, topology.cluster()) {
            (None, false) => RedisBackend::Single(RedisServer::start_with(false)?),
            (Some(network), false) => RedisBackend::Single(RedisServer::start_on_with(network, false)?),
            (None, true) => RedisBackend::Cluster(RedisCluster::start()?),
            (Some(network), true) => RedisBackend::Cluster(RedisCluster::start_on(network)?),
        };
        debug_assert!(network.as_ref().is_none_or(|n| redis.url().contains(n.address(REDIS_NODE))));
        let mut modules: Vec<&str> = servers.iter().map(|(_, module, _)| *module).collect();
        modules.sort_unstable();
        modules.dedup();
        let caller = test_image_with_peers("bench-caller", &modules)?;
        let server_images = modules.iter().map(|m| Ok((*m, test_image(m)?))).collect::<anyhow::Result<Vec<_>>>()?;
        let node = |name: &str| -> anyhow::Result<(Containerd, Vec<String>)> {
            let containerd = match &network {
                Some(network) => Containerd::start_in(shim, &[], network.netns(name))?,
                None => Containerd::start(shim, &[])?,
            };
            containerd.import(&caller)?;
            for (_, image) in &server_images {
                containerd.import(image)?;
            }
            Ok((containerd, vec![format!("cwasi.io/node={name}"), format!("cwasi.io/redis={}", redis.url())]))
        };
        let (node_a, annotations_a) = node("node-a")?;
        let (node_b, annotations_b) = node("node-b")?;
        for (containerd, annotations, route) in
            [(&node_a, &annotations_a, Route::Local), (&node_b, &annotations_b, Route::Remote)]
        {
            for (function, module, extra) in servers {
                let image = &server_images.iter().find(|(m, _)| m == module).expect("image built above").1;
                let name = route.peer(function);
                let flags: Vec<&str> = annotations
                    .iter()
                    .map(String::as_str)
                    .chain(extra.iter().copied())
                    .flat_map(|a| ["--annotation", a])
                    .collect();
                containerd.serve(image, &name, &flags).with_context(|| format!("starting {name}"))?;
            }
            for (function, _, _) in servers {
                let name = format!("function={}", route.peer(function));
                containerd.wait_for_log(&["remote serving ready", &name], Duration::from_secs(30))?;
            }
        }
        let servers = servers.iter().map(|(f, m, _)| (f.to_string(), m.to_string())).collect();
        Ok(Self { redis, node_a, node_b, caller, servers, annotations_a, network })
    }

    /// Runs one `bench-caller` on node A as container `id`: `functions` are
    /// called at once (fan-out) by `route`, `iterations` times with a
    /// `size`-byte payload, for at most about `max_seconds`.
    pub fn bench_call(
        &self,
        id: &str,
        route: Route,
        functions: &[&str],
        size: usize,
        iterations: usize,
        max_seconds: f64,
    ) -> anyhow::Result<Measured> {
        self.bench_run(id, route, functions, &[&size.to_string(), &iterations.to_string(), &max_seconds.to_string()])
    }

    /// Like [`TwoNodes::bench_call`] to one function, with each request
    /// given up (`call_start_owned`): its pages move where the mode can.
    pub fn bench_call_given(
        &self,
        id: &str,
        route: Route,
        function: &str,
        size: usize,
        iterations: usize,
        max_seconds: f64,
    ) -> anyhow::Result<Measured> {
        let (size, iterations, seconds) = (size.to_string(), iterations.to_string(), max_seconds.to_string());
        self.bench_run(id, route, &[function], &[&size, &iterations, &seconds, "given"])
    }

    /// Runs `bench-caller` on node A with the peers `functions` reached by
    /// `route` and its other arguments `args`.
    fn bench_run(&self, id: &str, route: Route, functions: &[&str], args: &[&str]) -> anyhow::Result<Measured> {
        let peers: Vec<String> = functions.iter().map(|f| route.peer(f)).collect();
        let peers = peers.join(",");
        let mut annotations = self.annotations_a.clone();
        annotations.push(format!("cwasi.io/peers={peers}"));
        match route {
            Route::Embedded => {
                let embed: Vec<String> =
                    self.servers.iter().map(|(f, module)| format!("{}=/{module}.wasm", route.peer(f))).collect();
                annotations.push(format!("cwasi.io/embed={}", embed.join(",")));
            }
            Route::RedisBaseline => {
                let forced: Vec<String> = peers.split(',').map(|p| format!("{p}=remote")).collect();
                annotations.push(format!("cwasi.io/mode={}", forced.join(",")));
            }
            Route::Local | Route::Remote => {}
        }
        let mut flags = vec!["--rm"];
        flags.extend(annotations.iter().flat_map(|a| ["--annotation", a.as_str()]));
        let mut command = vec!["/bench-caller.wasm", &peers];
        command.extend(args);
        let out =
            self.node_a.run(id, &self.caller, &flags, &command)?.ok().with_context(|| format!("bench-caller {id}"))?;
        let line = out.stdout.lines().find(|l| l.starts_with("bench ")).context("no timings printed")?;
        let timings = parse_timings(line)?;
        let first_peer = peers.split(',').next().unwrap_or_default();
        Ok(Measured { timings, mode: self.node_a.logged_mode(id, first_peer) })
    }
}

/// `bench … n=20 median_ns=… p99_ns=…` as `bench-caller` prints it.
fn parse_timings(line: &str) -> anyhow::Result<CallTimings> {
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("{name} missing in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok(CallTimings { median_ns: field("median_ns")?, p99_ns: field("p99_ns")?, samples: field("n")? as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_read_from_the_bench_line() {
        let t =
            parse_timings("bench peers=lsink size=1024 n=20 min_ns=1 median_ns=2500 p99_ns=9000 max_ns=9100").unwrap();
        assert_eq!((t.median_ns, t.p99_ns, t.samples), (2500, 9000, 20));
        assert!(parse_timings("bench peers=lsink n=20").is_err());
    }

    #[test]
    fn each_route_names_its_own_peer() {
        let peers: Vec<String> = Route::ALL.iter().map(|r| r.peer("sha256")).collect();
        assert_eq!(peers, ["esha256", "lsha256", "rsha256", "lsha256"]);
    }
}
