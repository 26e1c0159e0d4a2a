//! Remote mode where it runs in production: nodes on a network (each in a
//! network namespace, Redis in another, joined by a bridge) and on a Redis
//! Cluster, each beside a raw SET+GET and the broker floor of the same
//! bytes from node A's network, measured in the same run.

use cwasi_testkit::{Topology, TwoNodes};

use crate::baseline;
use crate::rig::{BenchMode, CallTimings, SERVERS, Shape, functions};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// One topology's figures.
#[derive(Debug, Clone)]
pub struct TopologyRow {
    pub topology: Topology,
    pub payload: usize,
    pub sequential: CallTimings,
    pub round_trip: Option<CallTimings>,
    pub raw_median_ns: u64,
    pub raw_p99_ns: u64,
    /// The broker floor of the same bytes from node A's network
    /// ([`baseline::broker_floor_ns`]).
    pub floor_median_ns: u64,
    pub floor_p99_ns: u64,
}

pub fn run(quick: bool) -> anyhow::Result<Vec<TopologyRow>> {
    let shim = cwasi_testkit::workspace_root().join("target/release/containerd-shim-cwasi-v1");
    let (calls, seconds) = if quick { (200, 1.0) } else { (2000, 8.0) };
    let mut rows = Vec::new();
    for topology in [Topology::Loopback, Topology::Netns, Topology::Cluster, Topology::ClusterNetns] {
        eprintln!("starting the rig on {}", topology.name());
        let nodes = TwoNodes::start_with(&shim, &SERVERS, topology)?;
        for payload in [KIB, MIB] {
            let iterations = if payload == KIB { calls } else { calls / 10 };
            let measure = |shape: Shape| -> anyhow::Result<CallTimings> {
                let id = format!("topology-{}-{}-{payload}", topology.name(), shape.name().replace(' ', ""));
                Ok(nodes.bench_call(&id, BenchMode::Remote, functions(shape), payload, iterations, seconds)?.timings)
            };
            let sequential = measure(Shape::Sequential)?;
            let round_trip = (payload == KIB).then(|| measure(Shape::RoundTrip)).transpose()?;
            let runs = iterations.min(500);
            let (raw_median_ns, raw_p99_ns) =
                from_node_a(&nodes, move |url| baseline::redis_set_get_ns(url, payload, runs))?;
            let (floor_median_ns, floor_p99_ns) =
                from_node_a(&nodes, move |url| baseline::broker_floor_ns(url, payload, runs))?;
            rows.push(TopologyRow {
                topology,
                payload,
                sequential,
                round_trip,
                raw_median_ns,
                raw_p99_ns,
                floor_median_ns,
                floor_p99_ns,
            });
        }
    }
    Ok(rows)
}

/// A reference measured from where node A runs: in its network namespace,
/// if any (threads it starts stay there too); through a cluster client on
/// a cluster (the URL says which).
fn from_node_a(
    nodes: &TwoNodes,
    measure: impl FnOnce(&str) -> anyhow::Result<(u64, u64)> + Send + 'static,
) -> anyhow::Result<(u64, u64)> {
    let url = nodes.redis.url();
    match &nodes.network {
        Some(network) => network.netns("node-a").run_in(move || measure(&url))?,
        None => measure(&url),
    }
}
