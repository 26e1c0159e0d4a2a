//! Remote mode where it runs in production: nodes on a network (each in a
//! network namespace, Redis in another, joined by a bridge) and on a Redis
//! Cluster, each beside a raw SET+GET of the same bytes from node A's
//! network, measured in the same run.

use cwasi_testkit::{RedisBackend, Topology, TwoNodes};

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
            let (raw_median_ns, raw_p99_ns) = raw_set_get(&nodes, payload, iterations.min(500))?;
            rows.push(TopologyRow { topology, payload, sequential, round_trip, raw_median_ns, raw_p99_ns });
        }
    }
    Ok(rows)
}

/// A raw SET+GET from where node A runs: its network namespace, if any;
/// through a cluster client on a cluster.
fn raw_set_get(nodes: &TwoNodes, payload: usize, runs: usize) -> anyhow::Result<(u64, u64)> {
    let url = nodes.redis.url();
    let cluster = matches!(nodes.redis, RedisBackend::Cluster(_));
    let measure = move || {
        if cluster {
            baseline::cluster_set_get_ns(&url, payload, runs)
        } else {
            baseline::redis_set_get_ns(&url, payload, runs)
        }
    };
    match &nodes.network {
        Some(network) => network.netns("node-a").run_in(measure)?,
        None => measure(),
    }
}
