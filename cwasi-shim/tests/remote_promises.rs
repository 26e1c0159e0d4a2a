//! What remote mode promises beyond delivery: poison requests end, long
//! handlers run once, Redis does not grow without bound, namespaces and
//! endpoints are kept apart. Private containerds play nodes, with a real
//! redis-server; `redis-cli` looks inside it.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, Node, RedisServer, TestImage, test_image};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

fn node(name: &str, redis_url: Option<&str>, env: &[(&str, &str)], images: &[&TestImage]) -> Node {
    Node::start(SHIM.as_ref(), name, redis_url, env, images)
}

/// `redis-cli` as `url`'s user; raw output, one reply element a line.
fn cli(url: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["--no-auth-warning", "-u", url]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stdout_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_request_whose_handler_traps_is_dead_lettered_after_3_deliveries_and_the_next_is_served() {
    let redis = RedisServer::start().unwrap();
    let (server, load) = (test_image("echo-server").unwrap(), test_image("call-load").unwrap());
    let node_b = node("node-b", Some(&redis.url()), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node("node-a", Some(&redis.url()), &[], &[&load]);
    let peers = ["--rm", "--annotation", "cwasi.io/peers=echo"];
    let mut call =
        node_a.spawn("poison", &load, &peers, &["/call-load.wasm", "--timeout-ms", "120000", "echo=panic:boom"]);

    // Kubernetes restarts a container that died; so does this loop.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(110);
    while call.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the caller never got an answer:\n{}", node_b.containerd.log());
        if node_b.task_stopped("echo") {
            node_b.remove("echo");
            node_b.serve(&server, "echo", &[]);
            restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = stdout_of(call);
    assert!(out.contains("err echo") && out.contains("PeerFailed"), "{out}");
    let traps = node_b.log_lines(&["guest trapped"]);
    assert_eq!(traps, 3, "the handler should have run 3 times ({restarts} restarts):\n{}", node_b.containerd.log());

    let dead = cli(&redis.url(), &["XRANGE", "cwasi:{cwasi-test/echo}:dead", "-", "+"]);
    assert!(dead.contains("panic:boom") && dead.contains("in 3 deliveries"), "{dead}");
    assert_eq!(cli(&redis.url(), &["XLEN", "cwasi:{cwasi-test/echo}:req"]).trim(), "0");

    // The function serves the next request (restarted if it was still down).
    if node_b.task_stopped("echo") {
        node_b.remove("echo");
        node_b.serve(&server, "echo", &[]);
    }
    let next = node_a.spawn("after", &load, &peers, &["/call-load.wasm", "echo=after"]);
    let out = stdout_of(next);
    assert!(out.contains("ok echo") && out.contains("after") && out.contains("summary ok=1 err=0"), "{out}");
}

/// Lines of the shared count file naming `request`, in order: `<replica> <request>`.
fn handled(count_file: &Path, request: &str) -> Vec<String> {
    std::fs::read_to_string(count_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_once(' ').is_some_and(|(_, r)| r == request))
        .map(|l| l.split_once(' ').unwrap().0.to_owned())
        .collect()
}

#[test]
fn a_12_s_handler_runs_once_across_two_instances_and_moves_only_when_its_instance_dies() {
    let redis = RedisServer::start().unwrap();
    let (server, load) = (test_image("counter-server").unwrap(), test_image("call-load").unwrap());
    let shared = tempfile::tempdir().unwrap();
    let count_file = shared.path().join("count");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", shared.path().display());
    let nodes: Vec<Node> = ["b", "c"]
        .iter()
        .map(|replica| {
            let node = node(&format!("node-{replica}"), Some(&redis.url()), &[], &[&server]);
            let env = format!("REPLICA={replica}");
            node.serve(&server, "counter", &["--mount", &mount, "--env", "COUNT_FILE=/data/count", "--env", &env]);
            node
        })
        .collect();
    let node_a = node("node-a", Some(&redis.url()), &[], &[&load]);
    let peers = ["--rm", "--annotation", "cwasi.io/peers=counter"];

    let out = stdout_of(node_a.spawn(
        "long-1",
        &load,
        &peers,
        &["/call-load.wasm", "--timeout-ms", "60000", "counter=sleep:12000"],
    ));
    assert!(out.contains("ok counter") && out.contains("1:sleep:12000"), "{out}");
    assert_eq!(
        handled(&count_file, "sleep:12000").len(),
        1,
        "handled more than once: {:?}",
        std::fs::read_to_string(&count_file)
    );
    for node in &nodes {
        assert_eq!(
            node.log_lines(&["claimed a request"]),
            0,
            "claimed while its handler lived:\n{}",
            node.containerd.log()
        );
    }

    // Now the instance handling it dies: the other one takes it.
    let call =
        node_a.spawn("long-2", &load, &peers, &["/call-load.wasm", "--timeout-ms", "60000", "counter=sleep:12001"]);
    let started = Instant::now();
    let first = loop {
        if let Some(replica) = handled(&count_file, "sleep:12001").first() {
            break replica.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "nobody took the second request");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (dying, survivor) = if first == "b" { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    dying.kill("counter");
    let out = stdout_of(call);
    assert!(out.contains("ok counter") && out.contains(":sleep:12001"), "{out}");
    let runs = handled(&count_file, "sleep:12001");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_ne!(runs[0], runs[1], "{runs:?}");
    assert!(survivor.log_lines(&["claimed a request"]) >= 1, "{}", survivor.containerd.log());
}

/// Polls `check` every 50 ms for up to `limit`; its last value.
fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_request_redis_brings_back_after_its_answer_was_read_is_answered_again_not_handled_twice() {
    // What a failover or a restart that lost Redis's last writes looks like
    // to a server: the request it answered is in the stream again,
    // undelivered, in the state its send left it; its caller has moved on.
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let (server, load) = (test_image("counter-server").unwrap(), test_image("call-load").unwrap());
    let shared = tempfile::tempdir().unwrap();
    let count_file = shared.path().join("count");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", shared.path().display());
    let node_b = node("node-b", Some(&url), &[], &[&server]);
    node_b.serve(&server, "counter", &["--mount", &mount, "--env", "COUNT_FILE=/data/count", "--env", "REPLICA=b"]);
    let node_a = node("node-a", Some(&url), &[], &[&load]);
    let peers = ["--rm", "--annotation", "cwasi.io/peers=counter"];
    let stream = "cwasi:{cwasi-test/counter}:req";

    let call =
        node_a.spawn("first", &load, &peers, &["/call-load.wasm", "--timeout-ms", "30000", "counter=sleep:1500"]);
    // The entry and the request's state while its handler sleeps.
    let entry: Vec<String> = wait_for(Duration::from_secs(20), || {
        let range = cli(&url, &["XRANGE", stream, "-", "+"]);
        let lines: Vec<String> = range.lines().map(str::to_owned).collect();
        (lines.len() > 1).then_some(lines)
    })
    .expect("the request never reached the stream");
    let fields = &entry[1..];
    let field = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone()).unwrap();
    let id = field("id");
    let state_key = format!("cwasi:{{cwasi-test/counter}}:state:{id}");
    let state = cli(&url, &["GET", &state_key]);
    let out = stdout_of(call);
    assert!(out.contains("ok counter") && out.contains("1:sleep:1500"), "{out}");
    assert_eq!(cli(&url, &["XLEN", stream]).trim(), "0", "answered entries are deleted");

    cli(&url, &["SET", &state_key, state.trim()]);
    let mut xadd = vec!["XADD", stream, "*"];
    xadd.extend(fields.iter().map(String::as_str));
    cli(&url, &xadd);
    let reply_list = field("reply");
    let again = wait_for(Duration::from_secs(10), || {
        let reply = cli(&url, &["LRANGE", &reply_list, "0", "-1"]);
        (!reply.trim().is_empty()).then_some(reply)
    })
    .unwrap_or_else(|| panic!("the request brought back was not answered:\n{}", node_b.containerd.log()));
    assert!(again.contains("1:sleep:1500"), "not the first answer: {again:?}");
    assert_eq!(handled(&count_file, "sleep:1500"), ["b"], "handled twice");
    assert_eq!(node_b.log_lines(&["answering it again, not handling it twice"]), 1, "{}", node_b.containerd.log());
    assert_eq!(cli(&url, &["XLEN", stream]).trim(), "0", "the entry brought back stays in the stream");
    assert_eq!(cli(&url, &["XPENDING", stream, "servers"]).lines().next(), Some("0"), "left pending");

    // The count goes on from one: the server handled one request so far.
    let out = stdout_of(node_a.spawn("second", &load, &peers, &["/call-load.wasm", "counter=next"]));
    assert!(out.contains("ok counter") && out.contains("2:next"), "{out}");
}

#[test]
fn after_10000_calls_the_stream_is_empty_and_every_key_left_expires() {
    let redis = RedisServer::start_with(false).unwrap();
    let (server, load) = (test_image("echo-server").unwrap(), test_image("call-load").unwrap());
    let node_b = node("node-b", Some(&redis.url()), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node("node-a", Some(&redis.url()), &[], &[&load]);
    let out = stdout_of(node_a.spawn(
        "ten-thousand",
        &load,
        &["--rm", "--annotation", "cwasi.io/peers=echo"],
        &["/call-load.wasm", "--count", "10000", "echo=x"],
    ));
    assert!(out.contains("summary ok=10000 err=0"), "{}", out.lines().last().unwrap_or_default());

    let url = redis.url();
    // Answered entries are deleted: the stream holds only unanswered requests.
    assert_eq!(cli(&url, &["XLEN", "cwasi:{cwasi-test/echo}:req"]).trim(), "0");
    let count = |pattern: &str| {
        let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + 1 end return n";
        cli(&url, &["EVAL", script, "0", pattern]).trim().parse::<u64>().unwrap()
    };
    assert_eq!(count("cwasi:{cwasi-test/echo}:state:*"), 10_000);
    // Callers delete the reply lists they read.
    assert_eq!(count("cwasi:{cwasi-test/echo}:rep:*"), 0);
    // Every key expires: none without a TTL, none longer than a day.
    let ttls = "local none, longest = 0, 0 for _, k in ipairs(redis.call('KEYS', '*')) do \
                local t = redis.call('TTL', k) if t < 0 then none = none + 1 elseif t > longest then longest = t end end \
                return {none, longest}";
    let reply = cli(&url, &["EVAL", ttls, "0"]);
    let numbers: Vec<u64> = reply.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(numbers[0], 0, "keys without a TTL: {reply}");
    assert!(numbers[1] <= 86_400, "{reply}");
    let done_ttl: i64 = cli(
        &url,
        &["EVAL", "return redis.call('TTL', redis.call('KEYS', ARGV[1])[1])", "0", "cwasi:{cwasi-test/echo}:state:*"],
    )
    .trim()
    .parse()
    .unwrap();
    assert!((1..=3600).contains(&done_ttl), "{done_ttl}");
}

#[test]
fn a_request_whose_body_expired_is_answered_as_failed_not_left_to_its_deadline() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let server = test_image("echo-server").unwrap();
    let node_b = node("node-b", Some(&url), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    // The entry names its own body key, which expired (was never written).
    let reply = "cwasi:{cwasi-test/echo}:rep:late-1";
    cli(
        &url,
        &[
            "XADD",
            "cwasi:{cwasi-test/echo}:req",
            "*",
            "id",
            "late-1",
            "reply",
            reply,
            "bodykey",
            "cwasi:{cwasi-test/echo}:body:late-1",
            "caller",
            "slow",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&url, &["LLEN", reply]).trim() != "1" {
        assert!(Instant::now() < deadline, "no answer for the expired request:\n{}", node_b.containerd.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = cli(&url, &["LRANGE", reply, "0", "-1"]);
    assert!(answer.contains("expired"), "{answer}");
    assert_eq!(cli(&url, &["XLEN", "cwasi:{cwasi-test/echo}:dead"]).trim(), "1");
}

#[test]
fn a_forged_entry_naming_another_namespaces_keys_is_refused_and_they_stay_untouched() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let node_b = node("node-b", Some(&url), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let stream = "cwasi:{cwasi-test/echo}:req";
    cli(&url, &["SET", "cwasi:{other/echo}:rep:victim", "precious"]);
    cli(&url, &["SET", "victim-body", "also precious"]);
    // A reply list in another namespace; a body key outside this request's own.
    cli(
        &url,
        &[
            "XADD",
            stream,
            "*",
            "id",
            "forged-1",
            "reply",
            "cwasi:{other/echo}:rep:victim",
            "caller",
            "evil",
            "body",
            "x",
        ],
    );
    cli(
        &url,
        &[
            "XADD",
            stream,
            "*",
            "id",
            "forged-2",
            "reply",
            "cwasi:{cwasi-test/echo}:rep:forged-2",
            "bodykey",
            "victim-body",
            "caller",
            "evil",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&url, &["XLEN", "cwasi:{cwasi-test/echo}:dead"]).trim() != "2" {
        assert!(Instant::now() < deadline, "not dead-lettered:\n{}", node_b.containerd.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cli(&url, &["GET", "cwasi:{other/echo}:rep:victim"]).trim(), "precious");
    assert_eq!(cli(&url, &["TTL", "cwasi:{other/echo}:rep:victim"]).trim(), "-1");
    assert_eq!(cli(&url, &["GET", "victim-body"]).trim(), "also precious");
    assert_eq!(cli(&url, &["XLEN", stream]).trim(), "0");
    let dead = cli(&url, &["XRANGE", "cwasi:{cwasi-test/echo}:dead", "-", "+"]);
    assert!(dead.contains("refused") && dead.contains("forged-1") && dead.contains("forged-2"), "{dead}");
    // The second named its own reply list: its sender hears why.
    let answer = cli(&url, &["LRANGE", "cwasi:{cwasi-test/echo}:rep:forged-2", "0", "-1"]);
    assert!(answer.contains("refused: body key"), "{answer}");

    // And the function still serves.
    let node_a = node("node-a", Some(&url), &[], &[&caller]);
    let out = node_a
        .run("call", &caller, &["--rm", "--annotation", "cwasi.io/peers=echo"], &["/caller.wasm", "echo", "hello"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: hello"), "{out:?}");
}

/// What a namespace's Redis user may run: the README's ACL rule.
const ACL_COMMANDS: &str = "+ping +time +eval +evalsha +multi +exec +script|load +exists +get +set +del +expire +rpush +blmove \
     +zadd +zrange +zremrangebyscore +xadd +xlen +xdel +xack +xreadgroup +xautoclaim +xclaim +xpending \
     +xgroup|create +xgroup|delconsumer +xinfo|consumers +client|id +client|unblock";

#[test]
fn with_acl_users_per_namespace_a_function_works_with_its_own_credentials_and_cannot_read_another_namespace() {
    let redis = RedisServer::start().unwrap();
    let admin = redis.url();
    let port = admin.rsplit(':').next().unwrap().to_owned();
    for (user, password, namespace) in [("ns-test", "pw-a", "cwasi-test"), ("ns-other", "pw-b", "other")] {
        let mut args = vec!["ACL", "SETUSER", user, "on", "resetkeys", "resetchannels", "-@all"];
        let (secret, keys) = (format!(">{password}"), format!("~cwasi:{{{namespace}/*"));
        args.extend([secret.as_str(), keys.as_str()]);
        args.extend(ACL_COMMANDS.split_whitespace());
        assert_eq!(cli(&admin, &args).trim(), "OK");
    }
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let url_a = format!("redis://ns-test:pw-a@127.0.0.1:{port}");
    std::fs::write(
        &credentials,
        format!("# namespace url\ncwasi-test {url_a}\nother redis://ns-other:pw-b@127.0.0.1:{port}\n"),
    )
    .unwrap();
    let credentials = credentials.to_string_lossy().into_owned();
    // Without the file's URL, calls would go to the default Redis, which does not run here.
    let env = [("CWASI_REDIS_CREDENTIALS", credentials.as_str())];
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    cli(&admin, &["ACL", "LOG", "RESET"]);

    let node_b = node("node-b", None, &env, &[&server]);
    node_b.serve(&server, "echo", &[]);
    node_b.containerd.import_in("other", &server).unwrap();
    node_b
        .containerd
        .ctr_in(
            "other",
            &Containerd::run_args(
                "echo",
                &server,
                &node_b.flags(&["-d", "--annotation", "cwasi.io/serve=true", "--annotation", "cwasi.io/function=echo"]),
                &[],
            ),
        )
        .unwrap()
        .ok()
        .unwrap();
    let node_a = node("node-a", None, &env, &[&caller]);
    let out = node_a
        .run("call", &caller, &["--rm", "--annotation", "cwasi.io/peers=echo"], &["/caller.wasm", "echo", "hello"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: hello"), "{out:?}");
    // Every command cwasi ran was allowed (the ACL rule above is complete).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&admin, &["EXISTS", "cwasi:{other/echo}:req"]).trim() != "1" {
        assert!(Instant::now() < deadline, "namespace other's echo never served:\n{}", node_b.containerd.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let denied = cli(&admin, &["ACL", "LOG"]);
    assert!(denied.trim().is_empty(), "denied commands:\n{denied}");

    // Namespace cwasi-test's credentials cannot read, write or claim namespace other's requests.
    for args in [
        &["XLEN", "cwasi:{other/echo}:req"][..],
        &["XREADGROUP", "GROUP", "servers", "thief", "STREAMS", "cwasi:{other/echo}:req", ">"],
        &["XADD", "cwasi:{other/echo}:req", "*", "id", "x"],
        &["XAUTOCLAIM", "cwasi:{other/echo}:req", "servers", "thief", "0", "0-0"],
    ] {
        let out = Command::new("redis-cli").args(["--no-auth-warning", "-u", &url_a]).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NOPERM"), "{args:?}: {text}");
    }
}

#[test]
fn a_redis_outside_the_operators_allow_list_is_refused_at_create() {
    let redis = RedisServer::start().unwrap();
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let allowed = format!("127.0.0.1:{port}");
    let caller = test_image("caller").unwrap();
    let env = [("CWASI_REDIS_ALLOW", allowed.as_str())];
    let node = node("node-a", None, &env, &[&caller]);
    let run = |id: &str, url: &str| {
        let annotation = format!("cwasi.io/redis={url}");
        node.run(
            id,
            &caller,
            &["--rm", "--annotation", &annotation, "--annotation", "cwasi.io/peers=nobody"],
            &["/caller.wasm", "nobody", "x"],
        )
        .unwrap()
    };
    let refused = run("elsewhere", "redis://:pw@10.1.2.3:6379");
    assert_ne!(refused.code, Some(0));
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("cwasi.io/redis") && said.contains("10.1.2.3:6379") && said.contains("CWASI_REDIS_ALLOW"),
        "{said}"
    );
    assert!(!said.contains(":pw@"), "{said}");
    let insecure = run("insecure", &format!("rediss://127.0.0.1:{port}#insecure"));
    let said = format!("{}{}", insecure.stdout, insecure.stderr);
    assert!(said.contains("cwasi.io/redis") && said.contains("insecure"), "{said}");
    // The allowed endpoint gets through create: the call itself runs (nobody serves `nobody`).
    let ok = run("allowed", &redis.url());
    assert_eq!(ok.code, Some(5), "{ok:?}");
}

#[test]
fn a_function_without_servers_for_30_s_answers_callers_unknown_peer_and_one_back_in_time_keeps_its_queue() {
    let redis = RedisServer::start().unwrap();
    let (server, caller) = (test_image("echo-server").unwrap(), test_image("caller").unwrap());
    let node_b = node("node-b", Some(&redis.url()), &[], &[&server]);
    node_b.serve(&server, "echo", &[]);
    let node_a = node("node-a", Some(&redis.url()), &[], &[&caller]);
    let peers = ["--rm", "--annotation", "cwasi.io/peers=echo"];
    // Down for a few seconds: the request waits in the queue and is answered.
    node_b.kill("echo");
    let call = node_a.spawn("queued", &caller, &peers, &["/caller.wasm", "echo", "queued"]);
    std::thread::sleep(Duration::from_secs(3));
    node_b.serve(&server, "echo", &[]);
    let out = stdout_of(call);
    assert!(out.contains("reply: queued"), "{out}");

    // Gone for good: a caller that was waiting gets UnknownPeer within the
    // 30 s rule (plus a check interval), and a later caller at once.
    node_b.kill("echo");
    let gone = Instant::now();
    let waiting = node_a.spawn("waiting", &caller, &peers, &["/caller.wasm", "echo", "never"]);
    let out = stdout_of(waiting);
    assert!(out.contains("UnknownPeer"), "{out}");
    assert!(gone.elapsed() < Duration::from_secs(45), "{:?}", gone.elapsed());
    assert_eq!(
        cli(&redis.url(), &["XLEN", "cwasi:{cwasi-test/echo}:req"]).trim(),
        "0",
        "the request was not withdrawn"
    );
    let started = Instant::now();
    let later = node_a.run("later", &caller, &peers, &["/caller.wasm", "echo", "x"]).unwrap();
    assert_eq!(later.code, Some(5), "{later:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
