//! Remote mode on a real Redis Cluster (six redis-server processes: three
//! masters, three replicas, persistence on), with each node and the cluster
//! in network namespaces of their own: digests of every size, a master
//! killed mid-series (its replica promoted) and the killed one restarted.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use cwasi_testkit::{Node, RedisCluster, TestNetwork, test_image};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");
/// The containerd namespace of the rig's functions (the key layout's namespace).
const NAMESPACE: &str = "cwasi-test";

/// A key of `function`'s queue in the cluster layout: its hash tag is
/// `{<namespace>/<function>}`, so every key of the function is on one slot.
fn queue_key(function: &str) -> String {
    format!("cwasi:{{{NAMESPACE}/{function}}}:req")
}

/// A 1000-call series from `call-sequence` on node A to `counter` on node B,
/// which also appends each request it handles to a file: a count that does
/// not depend on the replies.
struct CounterSeries {
    node_a: Node,
    node_b: Node,
    _shared: tempfile::TempDir,
    count_file: std::path::PathBuf,
    run: std::process::Child,
}

impl CounterSeries {
    fn start(network: &TestNetwork, url: &str, id: &str) -> Self {
        let (server, caller) = (test_image("counter-server").unwrap(), test_image("call-sequence").unwrap());
        let node_b = Node::start_on(network, SHIM.as_ref(), "node-b", Some(url), &[], &[&server]);
        let shared = tempfile::tempdir().unwrap();
        let count_file = shared.path().join("count");
        let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", shared.path().display());
        node_b.serve(&server, "counter", &["--mount", &mount, "--env", "COUNT_FILE=/data/count", "--env", "REPLICA=b"]);
        let node_a = Node::start_on(network, SHIM.as_ref(), "node-a", Some(url), &[], &[&caller]);
        let run = node_a.spawn(
            id,
            &caller,
            &["--rm", "--annotation", "cwasi.io/peers=counter"],
            &["/call-sequence.wasm", "counter", "1000"],
        );
        Self { node_a, node_b, _shared: shared, count_file, run }
    }

    /// Reads the series' lines, calling `at_progress` with each, until it
    /// ends; its exit status and last line.
    fn follow(&mut self, mut at_progress: impl FnMut(&str)) -> (std::process::ExitStatus, String) {
        let mut last_line = String::new();
        for line in BufReader::new(self.run.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            at_progress(&line);
            last_line = line;
        }
        (self.run.wait().unwrap(), last_line)
    }

    /// The request numbers the server handled, sorted (duplicates kept).
    fn handled(&self) -> Vec<u64> {
        let handled = std::fs::read_to_string(&self.count_file).unwrap();
        let mut requests: Vec<u64> = handled.lines().map(|l| l.trim_start_matches("b ").parse().unwrap()).collect();
        requests.sort_unstable();
        requests
    }
}

#[test]
fn producer_on_node_a_gets_every_digest_right_through_the_cluster() {
    let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
    let cluster = RedisCluster::start_on(&network).unwrap();
    let url = cluster.url();
    let (server, producer) = (test_image("sha256-server").unwrap(), test_image("producer").unwrap());
    let node_b = Node::start_on(&network, SHIM.as_ref(), "node-b", Some(&url), &[], &[&server]);
    node_b.serve(&server, "sha256", &[]);
    let node_a = Node::start_on(&network, SHIM.as_ref(), "node-a", Some(&url), &[], &[&producer]);
    // 0 B to 64 MiB (the matrix; the single-Redis test goes further).
    let sizes: Vec<&str> = cwasi_testkit::digest_sizes(SHIM.as_ref())
        .iter()
        .copied()
        .filter(|s| s.parse::<u64>().is_ok_and(|n| n <= 64 << 20))
        .collect();
    let mut command = vec!["/producer.wasm", "sha256"];
    command.extend(sizes.iter().copied());
    let out = node_a
        .run("producer-cluster", &producer, &["--rm", "--annotation", "cwasi.io/peers=sha256"], &command)
        .unwrap()
        .ok()
        .unwrap();
    for size in &sizes {
        assert!(out.stdout.contains(&format!("ok size={size} sha256=")), "{size}: {out:?}");
    }
    assert!(
        node_a.containerd.logged_call("sha256", "remote"),
        "no mode=remote in node A's log:\n{}",
        node_a.containerd.log()
    );
    // The function's keys are where the layout says: on their slot's master.
    let owner = cluster.master_of_key(&queue_key("sha256")).unwrap();
    let slot = cluster.cli(owner, &["CLUSTER", "KEYSLOT", &queue_key("sha256")]).unwrap();
    let keys = cluster.cli(owner, &["CLUSTER", "COUNTKEYSINSLOT", slot.trim()]).unwrap();
    assert_ne!(keys.trim(), "0", "no key of sha256 on slot {} of node {owner}", slot.trim());
}

#[test]
fn a_master_killed_and_restarted_during_1000_calls_loses_nothing_and_handles_nothing_twice() {
    let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
    let mut cluster = RedisCluster::start_on(&network).unwrap();
    let mut series = CounterSeries::start(&network, &cluster.url(), "sequence-cluster");
    let started = Instant::now();
    let (mut victim, mut promoted, mut restarted) = (None, None, false);
    let (status, last_line) = series.follow(|line| {
        if line == "progress 300" && victim.is_none() {
            // The master holding the callee's keys: its requests and replies.
            let key = queue_key("counter");
            let master = cluster.master_of_key(&key).unwrap();
            let slot = cluster.cli(master, &["CLUSTER", "KEYSLOT", &key]).unwrap();
            let keys = cluster.cli(master, &["CLUSTER", "COUNTKEYSINSLOT", slot.trim()]).unwrap();
            assert_ne!(keys.trim(), "0", "node {master} holds no key of counter: not the key layout expected");
            cluster.kill(master).unwrap();
            let new = cluster.wait_for_promotion(master).unwrap();
            eprintln!("killed master {master} at call 300; replica {new} promoted after {:?}", started.elapsed());
            victim = Some(master);
            promoted = Some(new);
        }
        if line == "progress 600" && !restarted {
            let old = victim.expect("killed at 300");
            cluster.restart(old).unwrap();
            assert!(cluster.is_replica(old), "the restarted master did not rejoin as a replica");
            restarted = true;
        }
    });
    assert!(victim.is_some() && promoted.is_some(), "the sequence never reached 300 calls: {last_line}");
    assert!(restarted, "the sequence never reached 600 calls: {last_line}");
    assert!(status.success(), "{status:?}: {last_line}\nnode A:\n{}", series.node_a.containerd.log());
    assert_eq!(last_line, "sequence ok: 1000 calls");
    assert_eq!(series.handled(), (0..1000).collect::<Vec<u64>>(), "not every request handled exactly once");
    assert_eq!(cluster.master_of_key(&queue_key("counter")).unwrap(), promoted.unwrap());
    eprintln!("1000 calls across a failover and a restart in {:?}", started.elapsed());
    // Within a bound so a stuck retry loop shows, with a wide margin.
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
}

#[test]
fn the_two_node_rig_of_demo_and_bench_runs_on_a_cluster_in_the_test_network() {
    use cwasi_testkit::{Route, Topology, TwoNodes};
    let nodes = TwoNodes::start_with(SHIM.as_ref(), &[("echo", "echo-server", &[])], Topology::ClusterNetns).unwrap();
    assert!(nodes.redis.url().starts_with("redis+cluster://"), "{}", nodes.redis.url());
    let measured = nodes.bench_call("bench-cluster", Route::Remote, &["echo"], 1024, 200, 5.0).unwrap();
    assert_eq!(measured.mode.as_deref(), Some("remote"), "{measured:?}");
    assert!(measured.timings.samples > 0, "{measured:?}");
    eprintln!(
        "remote 1 KiB on the cluster over the test network: median {} ns, p99 {} ns ({} calls)",
        measured.timings.median_ns, measured.timings.p99_ns, measured.timings.samples
    );
}

#[test]
fn the_callees_slot_moving_between_masters_during_1000_calls_loses_nothing_and_handles_nothing_twice() {
    let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
    let cluster = RedisCluster::start_on(&network).unwrap();
    let mut series = CounterSeries::start(&network, &cluster.url(), "sequence-reshard");
    let key = queue_key("counter");
    let (mut moved_from, mut moved_back) = (None, false);
    let (status, last_line) = series.follow(|line| {
        // As `redis-cli --cluster reshard` moves a slot (10 keys a step):
        // calls meet ASK and TRYAGAIN while it moves and MOVED after.
        if line == "progress 300" && moved_from.is_none() {
            let owner = cluster.master_of_key(&key).unwrap();
            let to = *cluster.masters().unwrap().iter().find(|&&m| m != owner).unwrap();
            let (from, keys) = cluster.migrate_slot_of(&key, to, 10).unwrap();
            eprintln!("moved the slot of counter ({keys} keys) from node {from} to node {to}");
            assert_eq!(cluster.master_of_key(&key).unwrap(), to);
            moved_from = Some(from);
        }
        if line == "progress 600" && !moved_back {
            let home = moved_from.expect("moved at 300");
            let (_, keys) = cluster.migrate_slot_of(&key, home, 10).unwrap();
            eprintln!("moved it back ({keys} keys)");
            moved_back = true;
        }
    });
    let warnings = |node: &Node| -> String {
        let log = node.containerd.log();
        log.lines().filter(|l| l.contains("level=warning") || l.contains("level=error")).collect::<Vec<_>>().join("\n")
    };
    assert!(
        moved_from.is_some() && moved_back,
        "the sequence stopped early: {last_line}\nnode A:\n{}\nnode B:\n{}",
        warnings(&series.node_a),
        warnings(&series.node_b)
    );
    let requests = series.handled();
    let twice: Vec<u64> = requests.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(
        status.success(),
        "{status:?}: {last_line}\nhandled twice: {twice:?}\nnode A:\n{}\nnode B:\n{}",
        warnings(&series.node_a),
        warnings(&series.node_b)
    );
    assert_eq!(last_line, "sequence ok: 1000 calls");
    assert_eq!(requests, (0..1000).collect::<Vec<u64>>(), "not every request handled exactly once");
}
