//! Peers shipped in the caller's image, run inside the caller's engine,
//! under a real containerd.

use std::io::{BufRead, BufReader};

use cwasi_testkit::{Containerd, TestImage, process, test_image_with_peers};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

fn containerd_with(image: TestImage) -> (Containerd, TestImage) {
    let containerd = Containerd::start(SHIM.as_ref(), &[]).expect("private containerd starts");
    containerd.import(&image).expect("image imports");
    (containerd, image)
}

#[test]
fn producer_gets_every_digest_right_from_an_embedded_sha256_peer() {
    let (ctd, image) = containerd_with(test_image_with_peers("producer", &["sha256-server"]).unwrap());
    let sizes = cwasi_testkit::digest_sizes(SHIM.as_ref());
    let mut command = vec!["/producer.wasm", "sha256"];
    command.extend(sizes.iter().copied());
    let out = ctd
        .run(
            "producer-embedded",
            &image,
            &[
                "--rm",
                "--annotation",
                "cwasi.io/embed=sha256=/sha256-server.wasm",
                "--annotation",
                "cwasi.io/peers=sha256",
            ],
            &command,
        )
        .unwrap()
        .ok()
        .unwrap();
    for &size in sizes {
        assert!(out.stdout.contains(&format!("ok size={size} sha256=")), "{size}: {out:?}");
    }
    assert!(ctd.logged_call("sha256", "embedded"), "no mode=embedded in the log:\n{}", ctd.log());
}

#[test]
fn a_trapping_peer_is_an_error_and_the_next_call_succeeds() {
    let (ctd, image) = containerd_with(test_image_with_peers("caller", &["echo-server"]).unwrap());
    let out = ctd
        .run(
            "caller-embedded",
            &image,
            &["--rm", "--annotation", "cwasi.io/embed=echo=/echo-server.wasm", "--annotation", "cwasi.io/peers=echo"],
            &["/caller.wasm", "echo", "before", "panic:boom", "after", "fail:nope", "again"],
        )
        .unwrap();
    // The first error (the trap) sets the exit status; every call is answered.
    assert_eq!(out.code, Some(6), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{out:?}");
    assert_eq!(lines[0], "reply: before");
    assert!(lines[1].starts_with("error: PeerFailed"), "{out:?}");
    assert_eq!(lines[2], "reply: after");
    assert!(lines[3].starts_with("error: PeerFailed"), "{out:?}");
    assert_eq!(lines[4], "reply: again");
    assert!(out.stderr.contains("boom"), "the peer's panic message reaches the container's stderr: {out:?}");
    assert!(ctd.log().contains("trapped"), "{}", ctd.log());
}

/// Embedded peers call each other: the caller's peer calls a second
/// embedded peer (a nested run in the same process), a peer's call to
/// itself is refused at once, and one outside its allow-list is forbidden.
#[test]
fn an_embedded_peer_calls_another_embedded_peer() {
    let (ctd, image) = containerd_with(test_image_with_peers("caller", &["relay", "echo-server"]).unwrap());
    let out = ctd
        .run(
            "embedded-nested",
            &image,
            &[
                "--rm",
                "--annotation",
                "cwasi.io/embed=combine=/relay.wasm,echo=/echo-server.wasm",
                "--annotation",
                "cwasi.io/peers=combine",
                "--annotation",
                "cwasi.io/embed.combine.peers=echo,combine",
            ],
            &["/caller.wasm", "combine", "+echo,echo:nested", "+combine:x", "@echo:direct", "+echo:again"],
        )
        .unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["reply: nested|nested", "reply: error SelfCall", lines[2], "reply: again"], "{out:?}");
    // The caller itself may call only `combine`.
    assert!(lines[2].starts_with("error: Forbidden"), "{out:?}");
    assert!(ctd.logged_call("echo", "embedded"), "{}", ctd.log());
}

/// Two embedded peers allowed to call each other recurse as deep as their
/// request asks: past 64 live instances of a peer the next call fails with
/// `PeerFailed` instead of making instances until the deadline, and the
/// peers go on serving.
#[test]
fn peers_calling_each_other_in_a_cycle_stop_at_the_instance_limit() {
    let (ctd, image) = containerd_with(test_image_with_peers("caller", &["relay"]).unwrap());
    let route = ["b", "a"].repeat(70).join(",");
    let deep = format!("{route}:x");
    let started = std::time::Instant::now();
    let out = ctd
        .run(
            "embedded-cycle",
            &image,
            &[
                "--rm",
                "--annotation",
                "cwasi.io/embed=a=/relay.wasm,b=/relay.wasm",
                "--annotation",
                "cwasi.io/peers=a",
                "--annotation",
                "cwasi.io/embed.a.peers=b",
                "--annotation",
                "cwasi.io/embed.b.peers=a",
            ],
            &["/caller.wasm", "a", &deep, "b:after"],
        )
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{out:?}");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["reply: error PeerFailed", "reply: after"], "{out:?}");
    assert!(ctd.log().contains("already has 64 instances"), "{}", ctd.log());
}

/// An embedded peer sees the environment and, read-only, the directories
/// its settings give it, and nothing of its container's beyond them.
#[test]
fn an_embedded_peer_sees_its_environment_and_reads_its_directories_only() {
    let (ctd, image) = containerd_with(test_image_with_peers("caller", &["echo-server"]).unwrap());
    let flags = [
        "--rm",
        "--annotation",
        "cwasi.io/embed=echo=/echo-server.wasm",
        "--annotation",
        "cwasi.io/peers=echo",
        "--annotation",
        "cwasi.io/embed.echo.env=GREETING=hello there, MODE=test",
        "--annotation",
        "cwasi.io/embed.echo.dirs=/data",
    ];
    let out = ctd
        .run(
            "embedded-settings",
            &image,
            &flags,
            &[
                "/caller.wasm",
                "echo",
                "env:GREETING",
                "env:MODE",
                "env:CWASI_FUNCTION",
                "read:/data/greeting.txt",
                "write:/data/planted.txt",
                "read:/caller.wasm",
                "after",
            ],
        )
        .unwrap();
    assert_eq!(out.code, Some(6), "{out:?}");
    // (The file's own newline makes an empty line.)
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 7, "{out:?}");
    assert_eq!(
        lines[..4],
        ["reply: hello there", "reply: test", "reply: unset", "reply: greetings from inside the image"]
    );
    // Read-only, and nothing outside its directories.
    assert!(lines[4].starts_with("error: PeerFailed") && lines[5].starts_with("error: PeerFailed"), "{out:?}");
    assert_eq!(lines[6], "reply: after");
    let log = ctd.log();
    assert!(log.contains("cannot write /data/planted.txt"), "{log}");
    assert!(log.contains("cannot read /caller.wasm"), "{log}");

    // A guest that swaps its /data for a symlink out of the rootfs before
    // the peer's first instance is made: the peer still sees the /data that
    // was checked at start (held open since: emptied now), nothing of the host.
    let out = ctd
        .run(
            "embedded-swapped-dir",
            &image,
            &flags,
            &["/caller.wasm", "echo", "!swap-data", "read:/data/etc/hostname", "read:/data/usr/bin"],
        )
        .unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    // libwasmedge refuses a symlink that climbs out of its preopen; wasmtime makes it.
    let swap = if cfg!(feature = "wasmedge") { "cannot link /data" } else { "swapped /data" };
    assert!(lines[0].starts_with(swap), "{out:?}");
    assert!(lines[1].starts_with("error: PeerFailed") && lines[2].starts_with("error: PeerFailed"), "{out:?}");
    let log = ctd.log();
    assert!(log.contains("cannot read /data/etc/hostname"), "{log}");

    // A directory the container does not have fails the start, by name.
    let out = ctd
        .run(
            "embedded-bad-dir",
            &image,
            &[
                "--rm",
                "--annotation",
                "cwasi.io/embed=echo=/echo-server.wasm",
                "--annotation",
                "cwasi.io/embed.echo.dirs=/nowhere",
            ],
            &["/caller.wasm", "echo", "x"],
        )
        .unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("cwasi.io/embed.echo.dirs"), "{out:?}");
}

/// The container's memory limit is one budget for its guest and all its
/// embedded peers: two peers holding 24 MiB each fit under 64 MiB, a third
/// is refused (its growth fails, it traps) with a message that says why, and
/// the caller and the other peers go on.
#[test]
fn embedded_peers_share_the_containers_memory_limit() {
    let (ctd, image) = containerd_with(test_image_with_peers("caller", &["echo-server"]).unwrap());
    let limit = (64u64 << 20).to_string();
    let embed = "cwasi.io/embed=p1=/echo-server.wasm,p2=/echo-server.wasm,p3=/echo-server.wasm";
    let out = ctd
        .run(
            "embedded-budget",
            &image,
            &["--rm", "--memory-limit", &limit, "--annotation", embed, "--annotation", "cwasi.io/peers=p1,p2,p3"],
            &["/caller.wasm", "p1", "hold:24", "@p2:hold:24", "@p3:hold:24", "@p3:small", "after", "@p2:after"],
        )
        .unwrap();
    assert_eq!(out.code, Some(6), "the third peer fails, nothing else: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{out:?}");
    assert_eq!(lines[..2], ["reply: holding 24 MiB", "reply: holding 24 MiB"], "{out:?}");
    assert!(lines[2].starts_with("error: PeerFailed"), "{out:?}");
    // The refused peer was replaced; the others kept their memory and serve.
    assert_eq!(lines[3..], ["reply: small", "reply: after", "reply: after"], "{out:?}");
    let log = ctd.log();
    assert!(log.contains("embedded peer p3 exceeded its memory limit"), "{log}");
    assert!(log.contains(&format!("of its {limit}-byte limit")), "{log}");
}

#[test]
fn ten_thousand_small_calls_leave_resident_memory_flat() {
    let (ctd, image) = containerd_with(test_image_with_peers("call-loop", &["echo-server"]).unwrap());
    let mut run = ctd
        .ctr_command(&Containerd::run_args(
            "loop-embedded",
            &image,
            &["--rm", "--annotation", "cwasi.io/embed=echo=/echo-server.wasm", "--annotation", "cwasi.io/peers=echo"],
            // One warm-up round, then 10 000 calls in four rounds.
            &["/call-loop.wasm", "echo", "1024", "2500", "5"],
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rss_after_round = Vec::new();
    for line in BufReader::new(run.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        assert!(line.starts_with("round "), "{line}");
        rss_after_round.push(process::resident_kib(ctd.task_pid("loop-embedded").unwrap()).unwrap());
    }
    assert!(run.wait().unwrap().success());
    assert_eq!(rss_after_round.len(), 5, "{rss_after_round:?}");
    let (warm, last) = (rss_after_round[0] as f64, rss_after_round[4] as f64);
    assert!(last <= warm * 1.05, "resident memory grew from {warm} KiB to {last} KiB: {rss_after_round:?}");
}
