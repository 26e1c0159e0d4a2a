//! Remote mode across a real network: each node (its containerd, shims and
//! guests) in a network namespace of its own, Redis in another, joined by
//! veth pairs to a bridge; a cut link is a partition.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cwasi_testkit::{Node, REDIS_NODE, RedisServer, TestNetwork, test_image};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

/// PID of the running task `id` (`ctr task ls`).
fn running_pid(node: &Node, id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = node.containerd.ctr(&["task", "ls"]).unwrap().ok().unwrap();
        let running = tasks.stdout.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3 && cols[0] == id && cols[2] == "RUNNING").then(|| cols[1].parse::<u32>().ok()).flatten()
        });
        if let Some(pid) = running {
            return pid;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {tasks:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inode of the network namespace of process `pid`.
fn netns_of(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

#[test]
fn guests_run_in_their_nodes_namespace_and_call_across_the_bridge() {
    let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
    let redis = RedisServer::start_on(&network).unwrap();
    assert!(redis.url().contains(network.address(REDIS_NODE)), "{}", redis.url());
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let node_b = Node::start_on(&network, SHIM.as_ref(), "node-b", Some(&redis.url()), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = Node::start_on(&network, SHIM.as_ref(), "node-a", Some(&redis.url()), &[], &[&caller]);

    // The serving guest is in node B's namespace, not the host's.
    let guest = running_pid(&node_b, "echo");
    let node_b_netns = std::fs::metadata(network.netns("node-b").path()).unwrap().ino();
    assert_eq!(netns_of(guest), node_b_netns, "guest {guest} is not in node B's network namespace");
    assert_ne!(netns_of(guest), netns_of(std::process::id()));

    let out = node_a
        .run("call-net", &caller, &["--rm", "--annotation", "cwasi.io/peers=echo"], &["/caller.wasm", "echo", "hello"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: hello"), "{out:?}");
    assert!(node_a.containerd.logged_call("echo", "remote"), "{}", node_a.containerd.log());
}

/// One line of call-paced: (call number, outcome, microseconds).
fn parse(line: &str) -> Option<(u64, String, u64)> {
    // "call <i> ok after <us> us" | "call <i> error <Status> after <us> us"
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.get(1)?.parse().ok()?;
    let outcome = match *words.get(2)? {
        "ok" => "ok".to_owned(),
        other => format!("{other} {}", words.get(3)?),
    };
    let after = words.iter().position(|w| *w == "after")?;
    Some((i, outcome, words.get(after + 1)?.parse().ok()?))
}

#[test]
fn a_cut_link_at_the_caller_fails_calls_with_a_typed_error_within_the_deadline_and_they_recover() {
    cut_mid_series("node-a");
}

#[test]
fn a_cut_link_at_the_server_fails_calls_with_a_typed_error_within_the_deadline_and_they_recover() {
    cut_mid_series("node-b");
}

/// Node A calls echo on node B every 200 ms; `cut` loses its link after
/// five good calls and gets it back after three failed ones.
fn cut_mid_series(cut: &str) {
    const DEADLINE_S: u64 = 3;
    let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
    let redis = RedisServer::start_on(&network).unwrap();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("call-paced").unwrap());
    let node_b = Node::start_on(&network, SHIM.as_ref(), "node-b", Some(&redis.url()), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = Node::start_on(&network, SHIM.as_ref(), "node-a", Some(&redis.url()), &[], &[&caller]);
    let timeout = format!("cwasi.io/timeout={DEADLINE_S}s");
    let mut run = node_a.spawn(
        "paced",
        &caller,
        &["--rm", "--annotation", "cwasi.io/peers=echo", "--annotation", &timeout],
        &["/call-paced.wasm", "echo", "60", "200"],
    );
    let (tx, lines) = mpsc::channel();
    let stdout = run.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Nothing may hang: every line comes within the deadline plus a margin.
    let bound = Duration::from_secs(DEADLINE_S + 30);
    let next =
        |what: &str| lines.recv_timeout(bound).unwrap_or_else(|e| panic!("no line ({what}) within {bound:?}: {e}"));

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = next("before the cut");
        let (_, outcome, _) = parse(&line).unwrap_or_else(|| panic!("{line}"));
        assert_eq!(outcome, "ok", "before the cut: {line}");
        seen.push(line);
    }
    network.link_down(cut).unwrap();
    let cut_at = Instant::now();
    let mut errors = Vec::new();
    while errors.len() < 3 {
        let line = next("while cut");
        eprintln!("{cut} cut {:?} ago: {line}", cut_at.elapsed());
        let (_, outcome, us) = parse(&line).unwrap_or_else(|| panic!("{line}"));
        if outcome == "ok" {
            // A call in flight when the link went down may still have made it.
            assert!(
                errors.is_empty() && cut_at.elapsed() < Duration::from_secs(1),
                "a call got through a cut link: {line}"
            );
            continue;
        }
        assert!(
            ["error Transport", "error Timeout"].contains(&outcome.as_str()),
            "not a Transport/Timeout error: {line}"
        );
        assert!(us <= (DEADLINE_S + 2) * 1_000_000, "the error took longer than the deadline plus 2 s: {line}");
        errors.push(line);
    }
    network.link_up(cut).unwrap();
    let restored = Instant::now();
    let mut after = Vec::new();
    let mut last = None;
    while let Ok(line) = lines.recv_timeout(bound) {
        let (i, outcome, _) = parse(&line).unwrap_or_else(|| panic!("{line}"));
        if outcome == "ok" {
            after.push(line.clone());
        } else {
            assert!(after.is_empty(), "a call failed after calls had recovered: {line}");
        }
        last = Some((i, outcome));
    }
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(last, Some((59, "ok".to_owned())), "the series did not end with a good call");
    assert!(after.len() >= 3, "too few calls after the link returned: {after:?}");
    eprintln!(
        "cut link of {cut}: {} errors, e.g. {:?}; {} calls ok after the link returned ({:?} after it)",
        errors.len(),
        errors.first(),
        after.len(),
        restored.elapsed()
    );
}

#[test]
fn the_two_node_rig_of_demo_and_bench_runs_on_the_test_network() {
    use cwasi_testkit::{Route, Topology, TwoNodes};
    let nodes = TwoNodes::start_with(SHIM.as_ref(), &[("echo", "echo-server", &[])], Topology::Netns).unwrap();
    let network = nodes.network.as_ref().unwrap();
    assert!(nodes.redis.url().contains(network.address(REDIS_NODE)), "{}", nodes.redis.url());
    let measured = nodes.bench_call("bench-netns", Route::Remote, &["echo"], 1024, 200, 5.0).unwrap();
    assert_eq!(measured.mode.as_deref(), Some("remote"), "{measured:?}");
    assert!(measured.timings.samples > 0, "{measured:?}");
    eprintln!(
        "remote 1 KiB over the test network: median {} ns, p99 {} ns ({} calls)",
        measured.timings.median_ns, measured.timings.p99_ns, measured.timings.samples
    );
}
