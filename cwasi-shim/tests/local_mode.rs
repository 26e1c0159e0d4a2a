//! Functions on one node calling each other through shared memory, under a
//! real containerd.

use std::os::fd::AsRawFd;
use std::thread::sleep;
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, TestImage};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");
const READY: Duration = Duration::from_secs(20);

fn containerd_with(functions: &[&str]) -> (Containerd, Vec<TestImage>) {
    Containerd::with_functions(SHIM.as_ref(), functions).expect("private containerd with the test images")
}

fn serve(ctd: &Containerd, image: &TestImage, name: &str) {
    ctd.serve(image, name, &[]).unwrap();
}

#[test]
fn producer_gets_every_digest_right_from_a_local_sha256_server() {
    let (ctd, images) = containerd_with(&["sha256-server", "producer"]);
    serve(&ctd, &images[0], "sha256");
    let sizes = cwasi_testkit::digest_sizes(SHIM.as_ref());
    let mut command = vec!["/producer.wasm", "sha256"];
    command.extend(sizes.iter().copied());
    let out = ctd
        .run("producer-1", &images[1], &["--rm", "--annotation", "cwasi.io/peers=sha256"], &command)
        .unwrap()
        .ok()
        .unwrap();
    for &size in sizes {
        assert!(out.stdout.contains(&format!("ok size={size} sha256=")), "{size}: {out:?}");
    }
    assert!(ctd.logged_call("sha256", "local"), "no mode=local in the log:\n{}", ctd.log());
}

#[test]
fn fan_out_calls_four_local_functions_in_parallel_and_combines_their_replies() {
    let (ctd, images) = containerd_with(&["sha256-server", "fan-out"]);
    for name in ["fn-a", "fn-b", "fn-c", "fn-d"] {
        serve(&ctd, &images[0], name);
    }
    let out = ctd
        .run(
            "fan-out-1",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=fn-a,fn-b,fn-c,fn-d"],
            &["/fan-out.wasm", "1048576", "fn-a", "fn-b", "fn-c", "fn-d"],
        )
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("fan-in of 4 replies ok"), "{out:?}");
}

#[test]
fn eight_concurrent_callers_each_get_their_own_reply() {
    let (ctd, images) = containerd_with(&["sha256-server", "fan-out", "producer"]);
    serve(&ctd, &images[0], "sha256");
    // Eight calls in flight from one guest, plus two other guests at once.
    let mut command = vec!["/fan-out.wasm", "65536"];
    command.extend(["sha256"; 8]);
    let others: Vec<_> = (0..2)
        .map(|i| {
            ctd.ctr_command(&Containerd::run_args(
                ["producer-a", "producer-b"][i],
                &images[2],
                &["--rm", "--annotation", "cwasi.io/peers=*"],
                &["/producer.wasm", "sha256", "1", "1000", "100000", "3000000"],
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let out = ctd
        .run("fan-out-8", &images[1], &["--rm", "--annotation", "cwasi.io/peers=sha256"], &command)
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("fan-in of 8 replies ok"), "{out:?}");
    for other in others {
        let other = other.wait_with_output().unwrap();
        assert!(other.status.success(), "{other:?}");
        assert_eq!(String::from_utf8_lossy(&other.stdout).matches("ok size=").count(), 4, "{other:?}");
    }
}

#[test]
fn a_peer_outside_the_allow_list_is_forbidden() {
    let (ctd, images) = containerd_with(&["echo-server", "caller"]);
    serve(&ctd, &images[0], "echo");
    for (id, flags) in
        [("caller-other", vec!["--rm", "--annotation", "cwasi.io/peers=someone-else"]), ("caller-none", vec!["--rm"])]
    {
        let out = ctd.run(id, &images[1], &flags, &["/caller.wasm", "echo", "hi"]).unwrap();
        assert_eq!(out.code, Some(3), "{id}: {out:?}");
        assert!(out.stdout.contains("Forbidden"), "{id}: {out:?}");
    }
    let out = ctd
        .run(
            "caller-unknown",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=*"],
            &["/caller.wasm", "nobody", "hi"],
        )
        .unwrap();
    assert_eq!(out.code, Some(5), "{out:?}");
    let out = ctd
        .run(
            "caller-echo",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=echo"],
            &["/caller.wasm", "echo", "hi"],
        )
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: hi"), "{out:?}");
    let out = ctd
        .run(
            "caller-fail",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=echo"],
            &["/caller.wasm", "echo", "fail:no thanks"],
        )
        .unwrap();
    assert_eq!(out.code, Some(6), "{out:?}");
}

#[test]
fn a_guest_looping_on_a_refused_call_cannot_flood_the_node_log() {
    let (ctd, images) = containerd_with(&["call-load"]);
    let started = std::time::Instant::now();
    let flags = ["--rm", "--annotation", "cwasi.io/function=flooder", "--annotation", "cwasi.io/peers=echo"];
    let out =
        ctd.run("flooder", &images[0], &flags, &["/call-load.wasm", "--count", "3000", "--pause-ms", "1", "nobody=x"]);
    let out = out.unwrap();
    assert!(out.stdout.contains("summary ok=0 err=3000"), "{}", out.stdout.lines().last().unwrap_or_default());
    let seconds = started.elapsed().as_secs() + 1;
    let log = ctd.log();
    let refused: Vec<&str> =
        log.lines().filter(|l| l.contains("container=flooder") && l.contains("may not call")).collect();
    // 10 lines a second at most, and what was left out is counted.
    assert!(!refused.is_empty() && refused.len() as u64 <= 10 * seconds, "{} lines in {seconds} s", refused.len());
    let counted: u64 = refused
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("suppressed=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert!(counted > 0 && counted + refused.len() as u64 <= 3000, "{counted} counted as left out");
}

#[test]
fn without_a_redis_a_misspelt_peer_is_unknown_at_once() {
    // The rig leaves CWASI_REDIS_URL unset, as on an edge node without Redis:
    // remote mode is off, so nothing waits for a Redis that is not there.
    let (ctd, images) = containerd_with(&["echo-server", "caller"]);
    serve(&ctd, &images[0], "echo");
    let out = ctd
        .run(
            "caller-misspelt",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=*"],
            &["/caller.wasm", "ehco", "hi"],
        )
        .unwrap();
    assert_eq!(out.code, Some(5), "{out:?}");
    let line = out.stdout.lines().find(|l| l.starts_with("error: UnknownPeer")).unwrap_or_else(|| panic!("{out:?}"));
    let micros: u64 = line
        .rsplit_once("(after ")
        .and_then(|(_, rest)| rest.strip_suffix(" us)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line:?}"));
    assert!(micros < 100_000, "UnknownPeer took {micros} µs: {line}");
    assert!(!ctd.log().contains("unreachable"), "a Redis was tried:\n{}", ctd.log());
}

#[test]
fn killing_the_server_mid_call_fails_the_caller_within_a_second() {
    let (ctd, images) = containerd_with(&["echo-server", "caller"]);
    serve(&ctd, &images[0], "echo");
    let caller = ctd
        .ctr_command(&Containerd::run_args(
            "caller-1",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=echo"],
            &["/caller.wasm", "echo", "sleep:30000"],
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ctd.wait_for_log(&["calling peer", "peer=echo"], READY).unwrap();
    sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "echo"]).unwrap().ok().unwrap();
    let out = caller.wait_with_output().unwrap();
    let elapsed = killed_at.elapsed();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("PeerGone"), "{out:?}");
    assert!(elapsed < Duration::from_secs(1), "the caller noticed after {elapsed:?}");
}

#[test]
fn garbage_on_a_function_socket_is_dropped_and_the_function_keeps_serving() {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, send, socket};

    let (ctd, images) = containerd_with(&["echo-server", "caller"]);
    serve(&ctd, &images[0], "echo");
    let sockets = ctd.registered_sockets("echo");
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    let connect_raw = || {
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::empty(), None).unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&sockets[0]).unwrap()).unwrap();
        fd
    };
    // Random bytes; a hello without its segment; a hang-up; a silent client.
    let random = connect_raw();
    send(random.as_raw_fd(), b"\x00\xffGET / HTTP/1.1\r\n\r\n", MsgFlags::empty()).unwrap();
    let no_fd = connect_raw();
    let mut hello = b"cwasiHI\0".to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&0u32.to_le_bytes());
    send(no_fd.as_raw_fd(), &hello, MsgFlags::empty()).unwrap();
    drop(connect_raw());
    let _silent = connect_raw();

    ctd.wait_for_log(&["dropping a connection that failed the handshake"], READY).unwrap();
    let out = ctd
        .run(
            "caller-after",
            &images[1],
            &["--rm", "--annotation", "cwasi.io/peers=echo"],
            &["/caller.wasm", "echo", "still serving"],
        )
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("reply: still serving"), "{out:?}");
}
