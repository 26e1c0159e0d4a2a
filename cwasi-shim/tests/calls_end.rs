//! Every call ends: calls in flight, deadlines, self-calls and cycles,
//! restarts, replicas and concurrency, hostile or slow callers — through a
//! real containerd.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, TestImage, process, test_image_with_peers};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");
const READY: Duration = Duration::from_secs(30);
const THREE_MIB: &str = "3145728";

fn containerd_with(functions: &[&str]) -> (Containerd, Vec<TestImage>) {
    Containerd::with_functions(SHIM.as_ref(), functions).expect("private containerd with the test images")
}

/// Starts another container serving `function` (container id `id`).
fn serve_replica(ctd: &Containerd, image: &TestImage, function: &str, id: &str, flags: &[&str]) {
    let name = format!("cwasi.io/function={function}");
    let mut all = vec!["--annotation", "cwasi.io/serve=true", "--annotation", &name];
    all.extend_from_slice(flags);
    ctd.start_detached(id, image, &all, &[]).unwrap();
    ctd.wait_for_log(&["serving", &format!("container={id} ")], READY).unwrap();
}

/// Runs a caller container in the background, its output piped.
fn spawn_caller(ctd: &Containerd, id: &str, image: &TestImage, flags: &[&str], command: &[&str]) -> Child {
    let mut all = vec!["--rm", "--annotation", "cwasi.io/peers=*"];
    all.extend_from_slice(flags);
    ctd.ctr_command(&Containerd::run_args(id, image, &all, command))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_caller(ctd: &Containerd, id: &str, image: &TestImage, flags: &[&str], command: &[&str]) -> String {
    let mut all = vec!["--rm", "--annotation", "cwasi.io/peers=*"];
    all.extend_from_slice(flags);
    ctd.run(id, image, &all, command).unwrap().ok().unwrap().stdout
}

/// `call-load` output lines for `peer`: (ok, milliseconds, reply or status).
fn outcomes<'a>(stdout: &'a str, peer: &str) -> Vec<(bool, u64, &'a str)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let kind = parts.next()?;
            (parts.next()? == peer).then_some(())?;
            let ms = parts.next()?.parse().ok()?;
            Some((kind == "ok", ms, parts.next().unwrap_or("")))
        })
        .collect()
}

fn summary(stdout: &str) -> (u64, u64) {
    let line = stdout.lines().find(|l| l.starts_with("summary ")).unwrap_or_else(|| panic!("no summary in {stdout}"));
    let number = |key: &str| line.split(' ').find_map(|kv| kv.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap();
    (number("ok="), number("err="))
}

#[test]
fn large_calls_in_flight_to_one_local_function_all_complete() {
    let (ctd, images) = containerd_with(&["echo-server", "inflight"]);
    ctd.serve(&images[0], "echo", &[]).unwrap();
    for n in ["2", "8"] {
        let out =
            run_caller(&ctd, &format!("inflight-{n}"), &images[1], &[], &["/inflight.wasm", "echo", n, THREE_MIB]);
        assert!(out.contains(&format!("inflight ok n={n}")), "{out}");
    }
    assert!(ctd.logged_call("echo", "local"), "{}", ctd.log());
}

#[test]
fn large_calls_in_flight_to_an_embedded_peer_all_complete() {
    let image = test_image_with_peers("inflight", &["echo-server"]).unwrap();
    let ctd = Containerd::start(SHIM.as_ref(), &[]).unwrap();
    ctd.import(&image).unwrap();
    for n in ["2", "8"] {
        let out = run_caller(
            &ctd,
            &format!("inflight-embedded-{n}"),
            &image,
            &["--annotation", "cwasi.io/embed=echo=/echo-server.wasm"],
            &["/inflight.wasm", "echo", n, THREE_MIB],
        );
        assert!(out.contains(&format!("inflight ok n={n}")), "{out}");
    }
    assert!(ctd.logged_call("echo", "embedded"), "{}", ctd.log());
}

#[test]
fn a_call_past_its_deadline_times_out_and_the_next_call_succeeds() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load"]);
    ctd.serve(&images[0], "slow", &[]).unwrap();
    ctd.serve(&images[0], "healthy", &[]).unwrap();
    // A per-call deadline (the SDK's call_with_timeout) ...
    let out = run_caller(
        &ctd,
        "deadline-call",
        &images[1],
        &[],
        &["/call-load.wasm", "--timeout-ms", "1000", "slow=sleep:3000", "healthy=hi"],
    );
    let slow = outcomes(&out, "slow");
    assert_eq!(slow.len(), 1, "{out}");
    let (ok, ms, status) = slow[0];
    assert!(!ok && status == "Timeout", "{out}");
    assert!((800..=1200).contains(&ms), "timed out after {ms} ms, deadline 1000 ms: {out}");
    assert_eq!(outcomes(&out, "healthy"), vec![(true, outcomes(&out, "healthy")[0].1, "hi")], "{out}");

    // ... and the function's own (cwasi.io/timeout), once the slow one is free.
    sleep(Duration::from_secs(3));
    let out = run_caller(
        &ctd,
        "deadline-function",
        &images[1],
        &["--annotation", "cwasi.io/timeout=1500ms"],
        &["/call-load.wasm", "slow=sleep:4000"],
    );
    let (ok, ms, status) = outcomes(&out, "slow")[0];
    assert!(!ok && status == "Timeout" && (1200..=1800).contains(&ms), "{out}");
}

#[test]
fn an_embedded_peer_still_running_at_the_deadline_is_stopped_and_replaced() {
    let image = test_image_with_peers("call-load", &["echo-server"]).unwrap();
    let ctd = Containerd::start(SHIM.as_ref(), &[]).unwrap();
    ctd.import(&image).unwrap();
    let out = run_caller(
        &ctd,
        "embedded-deadline",
        &image,
        &["--annotation", "cwasi.io/embed=echo=/echo-server.wasm"],
        // Two rounds; between them the idle epoch ticker parks, and must wake.
        &[
            "/call-load.wasm",
            "--count",
            "2",
            "--pause-ms",
            "1500",
            "--timeout-ms",
            "500",
            "echo=spin:5000",
            "echo=after",
        ],
    );
    let calls = outcomes(&out, "echo");
    assert_eq!(calls.len(), 4, "{out}");
    for round in calls.chunks(2) {
        let (ok, ms, status) = round[0];
        assert!(!ok && status == "Timeout" && (400..=800).contains(&ms), "{out}");
        assert_eq!((round[1].0, round[1].2), (true, "after"), "{out}");
    }
}

#[test]
fn an_embedded_peer_waiting_in_a_host_call_at_the_deadline_is_stopped_and_replaced() {
    // A sleep is a WASI host call: no code runs that could notice the
    // deadline, so the caller has to stop it.
    let image = test_image_with_peers("call-load", &["echo-server"]).unwrap();
    let ctd = Containerd::start(SHIM.as_ref(), &[]).unwrap();
    ctd.import(&image).unwrap();
    let started = std::time::Instant::now();
    let out = run_caller(
        &ctd,
        "embedded-host-call-deadline",
        &image,
        &["--annotation", "cwasi.io/embed=echo=/echo-server.wasm"],
        &["/call-load.wasm", "--timeout-ms", "500", "echo=sleep:20000", "echo=after", "echo=sleep:100"],
    );
    let calls = outcomes(&out, "echo");
    assert_eq!(calls.len(), 3, "{out}");
    let (ok, ms, status) = calls[0];
    assert!(!ok && status == "Timeout" && (400..=900).contains(&ms), "{out}");
    assert_eq!((calls[1].0, calls[1].2), (true, "after"), "{out}");
    // A sleep inside the deadline still ends normally.
    assert_eq!((calls[2].0, calls[2].2), (true, "sleep:100"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "the container outlived the sleep: {out}");
}

#[test]
fn a_function_calling_itself_is_refused_at_once_and_a_cycle_ends_by_the_deadline() {
    let (ctd, images) = containerd_with(&["relay", "call-load"]);
    for name in ["relay-a", "relay-b"] {
        ctd.serve(&images[0], name, &["--annotation", "cwasi.io/peers=*", "--annotation", "cwasi.io/timeout=2s"])
            .unwrap();
    }
    let out = run_caller(&ctd, "self-call", &images[1], &[], &["/call-load.wasm", "relay-a=relay-a:x"]);
    let (ok, ms, reply) = outcomes(&out, "relay-a")[0];
    assert!(ok && reply == "error SelfCall" && ms < 1000, "{out}");

    // relay-a calls relay-b, which calls relay-a, busy waiting for relay-b.
    let out = run_caller(
        &ctd,
        "cycle",
        &images[1],
        &[],
        &["/call-load.wasm", "--timeout-ms", "10000", "relay-a=relay-b,relay-a:x"],
    );
    let (_, ms, reply) = outcomes(&out, "relay-a")[0];
    assert!(reply.contains("Timeout"), "{out}");
    assert!(ms <= 2600, "the cycle ended after {ms} ms, the functions' deadline is 2 s: {out}");
}

#[test]
fn two_thousand_calls_across_a_replacement_of_the_serving_container_all_succeed() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load"]);
    serve_replica(&ctd, &images[0], "echo", "echo-v1", &[]);
    let caller = spawn_caller(
        &ctd,
        "steady-caller",
        &images[1],
        &[],
        &["/call-load.wasm", "--count", "2000", "--pause-ms", "2", "echo=x"],
    );
    ctd.wait_for_log(&["calling peer", "peer=echo"], READY).unwrap();
    sleep(Duration::from_millis(500));
    // A rolling restart: the new container starts, then the old one stops.
    serve_replica(&ctd, &images[0], "echo", "echo-v2", &[]);
    sleep(Duration::from_millis(300));
    ctd.ctr(&["task", "kill", "echo-v1"]).unwrap().ok().unwrap();
    let out = caller.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        summary(&stdout),
        (2000, 0),
        "{}",
        stdout.lines().filter(|l| l.starts_with("err")).collect::<Vec<_>>().join("\n")
    );
    // It drained (left the registry, finished its requests) rather than died.
    ctd.wait_for_log(&["stopped serving", "finished=true", "container=echo-v1 "], READY).unwrap();
    ctd.wait_for_log(&["guest process exited", "exit_code=143"], READY).unwrap();
}

#[test]
fn replicas_share_calls_and_a_killed_one_fails_only_the_call_it_had_started() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load"]);
    serve_replica(&ctd, &images[0], "echo", "echo-a", &["--env", "REPLICA=a"]);
    serve_replica(&ctd, &images[0], "echo", "echo-b", &["--env", "REPLICA=b"]);
    let out = run_caller(&ctd, "share", &images[1], &[], &["/call-load.wasm", "--count", "20", "echo=whoami"]);
    let replies: Vec<&str> = outcomes(&out, "echo").into_iter().map(|(_, _, r)| r).collect();
    let (a, b) = (replies.iter().filter(|r| **r == "a").count(), replies.iter().filter(|r| **r == "b").count());
    assert!(a >= 5 && b >= 5 && a + b == 20, "a={a} b={b}: {out}");

    let caller = spawn_caller(
        &ctd,
        "under-load",
        &images[1],
        &[],
        &["/call-load.wasm", "--count", "1500", "--pause-ms", "2", "echo=whoami"],
    );
    ctd.wait_for_log(&["calling peer", "peer=echo", "container=under-load"], READY).unwrap();
    sleep(Duration::from_millis(1000));
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "echo-a"]).unwrap().ok().unwrap();
    let out = caller.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ok, err) = summary(&stdout);
    assert!(err <= 1 && ok + err == 1500, "ok={ok} err={err}");
    let tail: Vec<_> = outcomes(&stdout, "echo").into_iter().rev().take(200).collect();
    assert!(tail.iter().all(|(ok, _, r)| *ok && *r == "b"), "after the kill every call goes to b: {tail:?}");
}

#[test]
fn with_concurrency_four_four_slow_calls_finish_together() {
    let (ctd, images) = containerd_with(&["echo-server", "inflight"]);
    ctd.serve(&images[0], "slow", &["--annotation", "cwasi.io/concurrency=4"]).unwrap();
    let out = run_caller(&ctd, "four-at-once", &images[1], &[], &["/inflight.wasm", "slow", "4", "sleep:1000"]);
    let ms: u64 = out.split("ms=").nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!((1000..2000).contains(&ms), "four 1 s handlers took {ms} ms with concurrency 4: {out}");
}

#[test]
fn a_caller_killed_while_streaming_a_large_request_costs_the_server_nothing() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load", "inflight"]);
    ctd.serve(&images[0], "echo", &[]).unwrap();
    // Keep the function busy so that the large request fills the ring and waits.
    let busy = spawn_caller(&ctd, "busy", &images[1], &[], &["/call-load.wasm", "echo=sleep:1500"]);
    ctd.wait_for_log(&["calling peer", "container=busy"], READY).unwrap();
    let streamer = spawn_caller(&ctd, "streamer", &images[2], &[], &["/inflight.wasm", "echo", "1", "67108864"]);
    // Its request cannot be taken before the busy call ends: kill it mid-way.
    ctd.wait_for_log(&["started guest", "streamer"], READY).unwrap();
    sleep(Duration::from_millis(400));
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "streamer"]).unwrap().ok().unwrap();
    drop(streamer.wait_with_output());
    assert!(busy.wait_with_output().unwrap().status.success());

    let pid = ctd.task_pid("echo").unwrap();
    let before = process::cpu_ticks(pid).unwrap();
    sleep(Duration::from_secs(3));
    let used = process::cpu_ticks(pid).unwrap() - before;
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    assert!(used * 100 < 5 * 3 * ticks_per_second, "the server used {used} ticks in 3 s after the caller died");
    let out = run_caller(&ctd, "after", &images[1], &[], &["/call-load.wasm", "echo=still here"]);
    assert_eq!(outcomes(&out, "echo")[0].2, "still here", "{out}");
}

#[test]
fn a_caller_killed_while_its_request_is_handled_costs_the_server_nothing() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load"]);
    ctd.serve(&images[0], "echo", &[]).unwrap();
    let caller = spawn_caller(&ctd, "doomed", &images[1], &[], &["/call-load.wasm", "echo=sleep:4000"]);
    ctd.wait_for_log(&["calling peer", "container=doomed "], READY).unwrap();
    sleep(Duration::from_millis(300));
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "doomed"]).unwrap().ok().unwrap();
    drop(caller.wait_with_output());
    // The handler sleeps on: the function has nothing to do until it returns.
    let pid = ctd.task_pid("echo").unwrap();
    let before = process::cpu_ticks(pid).unwrap();
    sleep(Duration::from_secs(2));
    let used = process::cpu_ticks(pid).unwrap() - before;
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    assert!(used * 100 < 5 * 2 * ticks_per_second, "the server used {used} ticks in 2 s while its caller was gone");
    let out = run_caller(&ctd, "after-doomed", &images[1], &[], &["/call-load.wasm", "echo=still here"]);
    assert_eq!(outcomes(&out, "echo")[0].2, "still here", "{out}");
}

#[test]
fn a_caller_holding_an_unread_reply_does_not_stall_other_callers() {
    let (ctd, images) = containerd_with(&["echo-server", "call-load", "hold"]);
    ctd.serve(&images[0], "echo", &[]).unwrap();
    let mut holder = spawn_caller(&ctd, "holder", &images[2], &[], &["/hold.wasm", "echo", THREE_MIB, "20"]);
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "holding");
    let started = Instant::now();
    let out = run_caller(&ctd, "others", &images[1], &[], &["/call-load.wasm", "--count", "10", "echo=small"]);
    let elapsed = started.elapsed();
    assert_eq!(summary(&out), (10, 0), "{out}");
    let slowest = outcomes(&out, "echo").iter().map(|(_, ms, _)| *ms).max().unwrap();
    assert!(slowest < 500, "a small call took {slowest} ms while another caller held its reply: {out}");
    assert!(elapsed < Duration::from_secs(10), "ten small calls took {elapsed:?} (the holder holds for 20 s)");
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "holder"]).unwrap().ok().unwrap();
    drop(holder.wait());
}
