//! Payloads given up (`call_start_owned`, `serve_reply_owned`) under a real
//! containerd: their pages move to the receiver, both ways, in embedded and
//! local mode, and after the call neither side sees the other's writes.

use std::io::{BufRead, BufReader};

use cwasi_testkit::{Containerd, process};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

/// What `page-giver` printed, checked key by key.
fn assert_saw(stdout: &str, expected: &[(&str, bool)]) {
    let line = stdout.lines().find(|l| l.starts_with("given_zeroed=")).unwrap_or_else(|| panic!("{stdout}"));
    for (key, value) in expected {
        assert!(line.split_whitespace().any(|kv| kv == format!("{key}={value}")), "{key}={value}: {line}");
    }
}

/// What `page-giver` prints when every page moved both ways and neither
/// side saw the other's later writes.
const MOVED_BOTH_WAYS: [(&str, bool); 5] = [
    // The request's pages moved: the caller's buffer reads zeros...
    ("given_zeroed", true),
    ("kept_match", true),
    // ...and its later writes do not reach the keeper's pages.
    ("kept_intact", true),
    // The reply's pages moved the other way.
    ("reply_ok", true),
    ("reply_zeroed", true),
];

const EMBEDDED: [&str; 5] =
    ["--rm", "--annotation", "cwasi.io/embed=keeper=/page-keeper.wasm", "--annotation", "cwasi.io/peers=keeper"];

fn containerd_with_giver() -> (Containerd, cwasi_testkit::TestImage) {
    let image = cwasi_testkit::test_image_with_peers("page-giver", &["page-keeper"]).unwrap();
    let ctd = Containerd::start(SHIM.as_ref(), &[]).expect("private containerd starts");
    ctd.import(&image).expect("image imports");
    (ctd, image)
}

fn give_embedded(mib: usize) {
    let (ctd, image) = containerd_with_giver();
    let id = format!("page-giver-embedded-{mib}");
    let out = ctd.run(&id, &image, &EMBEDDED, &["/page-giver.wasm", "keeper", &mib.to_string()]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_saw(&out.stdout, &MOVED_BOTH_WAYS);
    assert!(ctd.logged_call("keeper", "embedded"), "no mode=embedded in the log:\n{}", ctd.log());
}

#[test]
fn sixty_four_mib_given_to_an_embedded_peer_move_by_pages_both_ways() {
    give_embedded(64);
}

#[test]
fn two_hundred_fifty_six_mib_given_to_an_embedded_peer_move_by_pages_both_ways() {
    give_embedded(256);
}

/// Every move may split the receiver's mappings: 250 given calls, each way,
/// into buffers the allocators place anew, leave the process's map count
/// and resident memory flat (the receivers' old pages are freed off the
/// call's path, by a thread that must keep up).
#[test]
fn five_hundred_moves_leave_the_map_count_and_resident_memory_flat() {
    let (ctd, image) = containerd_with_giver();
    let mut run = ctd
        .ctr_command(&Containerd::run_args("page-rounds", &image, &EMBEDDED, &["/page-giver.wasm", "keeper", "4", "5"]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut pid, mut after_round) = (None, Vec::new());
    for line in BufReader::new(run.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match pid {
            // The giver pauses after each round: read it then.
            Some(pid) if line.starts_with("round ") => {
                after_round.push((process::map_count(pid).unwrap(), process::resident_kib(pid).unwrap()))
            }
            _ => {
                assert!(line.starts_with("given_zeroed=true"), "{line}");
                pid = Some(ctd.task_pid("page-rounds").unwrap());
            }
        }
    }
    assert!(run.wait().unwrap().success());
    assert_eq!(after_round.len(), 5, "{after_round:?}");
    let ((maps_first, rss_first), (maps_last, rss_last)) = (after_round[0], after_round[4]);
    assert!(maps_last <= maps_first + 16, "mappings grew from {maps_first} to {maps_last}: {after_round:?}");
    // A few 4 MiB buffers may be in flight to the reaper when sampled.
    assert!(
        rss_last <= rss_first + 32 * 1024,
        "resident memory grew from {rss_first} KiB to {rss_last} KiB: {after_round:?}"
    );
}

/// Local mode: the pages of a given request, and of the reply given back,
/// travel to the other container as a sealed file it maps.
fn give_local(mib: usize) {
    let (ctd, images) = Containerd::with_functions(SHIM.as_ref(), &["page-keeper", "page-giver"]).unwrap();
    ctd.serve(&images[0], "keeper", &[]).unwrap();
    let flags = ["--rm", "--annotation", "cwasi.io/peers=keeper"];
    let id = format!("page-giver-local-{mib}");
    let out = ctd.run(&id, &images[1], &flags, &["/page-giver.wasm", "keeper", &mib.to_string()]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_saw(&out.stdout, &MOVED_BOTH_WAYS);
    assert!(ctd.logged_call("keeper", "local"), "no mode=local in the log:\n{}", ctd.log());
}

#[test]
fn sixty_four_mib_given_to_a_local_peer_move_by_pages_both_ways() {
    give_local(64);
}

#[test]
fn two_hundred_fifty_six_mib_given_to_a_local_peer_move_by_pages_both_ways() {
    give_local(256);
}
