//! Functions on different nodes calling each other through a real Redis:
//! two private containerd instances play two nodes, each in a network
//! namespace of its own, with Redis in another: remote traffic crosses
//! veths and a bridge, and Redis is reachable only across that network.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, Node, RedisServer, TestImage, TestNetwork, test_image, test_image_with_peers};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

/// Nodes A and B (and C for the TLS test) and Redis, each in its namespace.
fn network() -> TestNetwork {
    TestNetwork::new(&["node-a", "node-b", "node-c"]).unwrap()
}

fn node(network: &TestNetwork, name: &str, redis_url: &str, images: &[&TestImage]) -> Node {
    Node::start_on(network, SHIM.as_ref(), name, Some(redis_url), &[], images)
}

/// `env` goes to containerd and so to the shim (e.g. `CWASI_REDIS_CA_FILE`).
fn node_with_env(
    network: &TestNetwork,
    name: &str,
    redis_url: &str,
    images: &[&TestImage],
    env: &[(&str, &str)],
) -> Node {
    Node::start_on(network, SHIM.as_ref(), name, Some(redis_url), env, images)
}

#[test]
fn producer_on_node_a_gets_every_digest_right_from_sha256_on_node_b() {
    let network = network();
    let redis = RedisServer::start_on(&network).unwrap();
    let (server, producer) = (test_image("sha256-server").unwrap(), test_image("producer").unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&server]);
    node_b.serve(&server, "sha256", &[]);
    let node_a = node(&network, "node-a", &redis.url(), &[&producer]);
    let sizes = cwasi_testkit::digest_sizes(SHIM.as_ref());
    let mut command = vec!["/producer.wasm", "sha256"];
    command.extend(sizes.iter().copied());
    let out = node_a
        .run("producer-remote", &producer, &["--rm", "--annotation", "cwasi.io/peers=sha256"], &command)
        .unwrap()
        .ok()
        .unwrap();
    for &size in sizes {
        assert!(out.stdout.contains(&format!("ok size={size} sha256=")), "{size}: {out:?}");
    }
    let log = node_a.containerd.log();
    assert!(node_a.containerd.logged_call("sha256", "remote"), "no mode=remote in node A's log:\n{log}");
    // The password-free URL is what the log shows.
    assert!(log.contains(&redis.url()), "{log}");
}

/// An embedded peer is a function of its own: it calls a function on its
/// node (local mode) and one on another node (remote mode) and combines
/// their replies; it calls only what its own allow-list names, and its calls
/// end by the deadline of the call it serves.
#[test]
fn an_embedded_peer_calls_a_local_and_a_remote_function() {
    let network = network();
    let redis = RedisServer::start_on(&network).unwrap();
    let (echo, caller) = (test_image("echo-server").unwrap(), test_image_with_peers("caller", &["relay"]).unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&echo]);
    node_b.serve(&echo, "echo-remote", &["--env", "REPLICA=remote"]);
    let node_a = node(&network, "node-a", &redis.url(), &[&echo, &caller]);
    node_a.serve(&echo, "echo-local", &["--env", "REPLICA=local"]);
    let flags = [
        "--rm",
        "--annotation",
        "cwasi.io/embed=combine=/relay.wasm",
        "--annotation",
        "cwasi.io/peers=combine",
        "--annotation",
        "cwasi.io/embed.combine.peers=echo-local,echo-remote",
        "--annotation",
        "cwasi.io/timeout=1s",
        "--annotation",
        "cwasi.io/log=debug",
    ];
    let started = Instant::now();
    let out = node_a
        .run(
            "embedded-calls-out",
            &caller,
            &flags,
            &[
                "/caller.wasm",
                "combine",
                "+echo-local,echo-remote:whoami",
                "+echo-remote,echo-local:hello",
                "+caller:x",
                "+echo-local:sleep:8000",
                "+echo-remote:after",
            ],
        )
        .unwrap();
    let took = started.elapsed();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{out:?}");
    assert_eq!(lines[..3], ["reply: local|remote", "reply: hello|hello", "reply: error Forbidden"], "{out:?}");
    // The peer's call to a function that sleeps 8 s ends at the outer call's 1 s deadline.
    assert!(lines[3].contains("Timeout"), "{out:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}: {out:?}");
    assert_eq!(lines[4], "reply: after", "{out:?}");
    let ctd = &node_a.containerd;
    assert!(ctd.logged_call("combine", "embedded"), "{}", ctd.log());
    assert!(ctd.logged_call("echo-local", "local"), "{}", ctd.log());
    assert!(ctd.logged_call("echo-remote", "remote"), "{}", ctd.log());
    // The peer serves the call as a child span of it; its own calls are children of that.
    let log = ctd.log();
    let field = |line: &str, key: &str| {
        line.split_whitespace().find_map(|f| f.strip_prefix(&format!("{key}="))).map(str::to_owned)
    };
    let outer =
        log.lines().find(|l| l.contains("msg=call") && l.contains("peer=combine")).expect("the outer call logged");
    let (trace_id, span_id) = (field(outer, "trace_id").unwrap(), field(outer, "span_id").unwrap());
    let child_of = |msg: &str, parent: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("msg={msg}")))
            .find(|l| field(l, "parent_id").as_deref() == Some(parent))
            .unwrap_or_else(|| panic!("no {msg} with parent {parent}:\n{log}"))
    };
    let served = child_of("served", &span_id);
    assert_eq!(field(served, "trace_id").as_ref(), Some(&trace_id), "{served}");
    let inner = child_of("call", &field(served, "span_id").unwrap());
    assert!(inner.contains("peer=echo-local"), "{inner}");
    assert_eq!(field(inner, "trace_id"), Some(trace_id), "{inner}");
}

#[test]
fn a_redis_restart_in_the_middle_of_1000_calls_loses_nothing_and_handles_nothing_twice() {
    let network = network();
    let mut redis = RedisServer::start_on(&network).unwrap();
    let (server, caller) = (test_image("counter-server").unwrap(), test_image("call-sequence").unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&server]);
    node_b.serve(&server, "counter", &[]);
    let node_a = node(&network, "node-a", &redis.url(), &[&caller]);
    let mut run = node_a
        .containerd
        .ctr_command(&Containerd::run_args(
            "sequence-1",
            &caller,
            &node_a.flags(&["--rm", "--annotation", "cwasi.io/peers=counter"]),
            &["/call-sequence.wasm", "counter", "1000"],
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut restarted = false;
    let mut last_line = String::new();
    for line in BufReader::new(run.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "progress 300" && !restarted {
            redis.restart().unwrap();
            restarted = true;
        }
        last_line = line;
    }
    let status = run.wait().unwrap();
    assert!(restarted, "the sequence never reached 300 calls: {last_line}");
    assert!(status.success(), "{status:?}: {last_line}");
    assert_eq!(last_line, "sequence ok: 1000 calls");
}

#[test]
fn requests_queued_while_the_server_restarts_are_answered_after_it() {
    let network = network();
    let redis = RedisServer::start_on(&network).unwrap();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("call-sequence").unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node(&network, "node-a", &redis.url(), &[&caller]);
    let mut run = node_a
        .containerd
        .ctr_command(&Containerd::run_args(
            "sequence-2",
            &caller,
            &node_a.flags(&["--rm", "--annotation", "cwasi.io/peers=echo"]),
            &["/call-sequence.wasm", "echo", "400", "echo"],
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the caller stopped early").unwrap();
        if line == "progress 100" {
            break;
        }
    }
    // Kill the server mid-stream; calls queue in Redis while it is away.
    let ctd = &node_b.containerd;
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "echo"]).unwrap().ok().unwrap();
    let stopped = Instant::now();
    while ctd.ctr(&["task", "delete", "echo"]).unwrap().code != Some(0) {
        assert!(stopped.elapsed() < Duration::from_secs(10), "the killed server never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    ctd.ctr(&["container", "delete", "echo"]).unwrap().ok().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    node_b.serve(&server, "echo", &[]);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(run.wait().unwrap().success(), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("sequence ok: 400 calls"), "{rest:?}");
}

#[test]
fn redis_down_is_a_typed_error_and_serving_recovers_when_it_returns() {
    let network = network();
    let mut redis = RedisServer::start_on(&network).unwrap();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node(&network, "node-a", &redis.url(), &[&caller]);
    let call = |id: &str| {
        node_a
            .run(
                id,
                &caller,
                &["--rm", "--annotation", "cwasi.io/peers=echo,nobody"],
                &["/caller.wasm", "echo", "hello"],
            )
            .unwrap()
    };
    assert!(call("call-up").ok().unwrap().stdout.contains("reply: hello"));
    let unknown = node_a
        .run(
            "call-nobody",
            &caller,
            &["--rm", "--annotation", "cwasi.io/peers=nobody"],
            &["/caller.wasm", "nobody", "x"],
        )
        .unwrap();
    assert_eq!(unknown.code, Some(5), "{unknown:?}");

    redis.stop();
    let down = call("call-down");
    assert_eq!(down.code, Some(2), "{down:?}");
    assert!(down.stdout.contains("Transport"), "{down:?}");
    assert!(node_a.containerd.log().contains("unreachable"), "{}", node_a.containerd.log());

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = call("call-again");
        if out.code == Some(0) {
            assert!(out.stdout.contains("reply: hello"), "{out:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {out:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_password_protected_redis_works_and_the_password_stays_out_of_logs() {
    let network = network();
    let redis = RedisServer::start_with_password_on(&network, "s3cret-pw").unwrap();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let node_b = node(&network, "node-b", &redis.url(), &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node(&network, "node-a", &redis.url(), &[&caller]);
    let out = node_a
        .run("call-auth", &caller, &["--rm", "--annotation", "cwasi.io/peers=echo"], &["/caller.wasm", "echo", "hello"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: hello"), "{out:?}");
    assert!(node_a.containerd.logged_call("echo", "remote"), "{}", node_a.containerd.log());
    for log in [node_a.containerd.log(), node_b.containerd.log()] {
        // cwasi's own lines (shim and guest process) name a container and a function.
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(" container=") && l.contains(" function=")).collect();
        let expected = ["msg=\"calling peer\"", "msg=\"remote serving ready\""];
        assert!(ours.iter().any(|l| expected.iter().any(|e| l.contains(e))), "no cwasi lines in the log:\n{log}");
        assert!(
            !ours.iter().any(|l| l.contains("s3cret-pw")),
            "the password leaked into the log:\n{}",
            ours.join("\n")
        );
    }
}

#[test]
fn rediss_works_with_the_ca_named_in_cwasi_redis_ca_file_and_fails_without_it() {
    let network = network();
    // The certificate names the Redis namespace's address too.
    let redis = RedisServer::start_tls_on(&network).unwrap();
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let ca = redis.tls_files().unwrap().ca_cert.to_string_lossy().into_owned();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let trusting = [("CWASI_REDIS_CA_FILE", ca.as_str())];
    let node_b = node_with_env(&network, "node-b", &redis.url(), &[&server], &trusting);
    node_b.serve(&server, "echo", &[]);
    let node_a = node_with_env(&network, "node-a", &redis.url(), &[&caller], &trusting);
    let flags = node_a.flags(&["--rm", "--annotation", "cwasi.io/peers=echo"]);
    let out = node_a
        .containerd
        .run("call-tls", &caller, &flags, &["/caller.wasm", "echo", "over", "tls"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: over") && out.stdout.contains("reply: tls"), "{out:?}");
    assert!(node_a.containerd.logged_call("echo", "remote"), "{}", node_a.containerd.log());

    // Without the CA the server's certificate is refused (the system store
    // does not know the test CA): the call fails instead of trusting it.
    let node_c = node_with_env(&network, "node-c", &redis.url(), &[&caller], &[("CWASI_REDIS_RETRY_MS", "300")]);
    let flags = node_c.flags(&["--rm", "--annotation", "cwasi.io/peers=echo"]);
    let out = node_c.containerd.run("call-untrusted", &caller, &flags, &["/caller.wasm", "echo", "hello"]).unwrap();
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("Transport"), "{out:?}");
    let log = node_c.containerd.log();
    assert!(log.contains("certificate") || log.contains("UnknownIssuer"), "no certificate error in the log:\n{log}");
}
