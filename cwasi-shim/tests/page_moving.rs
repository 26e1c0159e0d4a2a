//! Payloads given up (`call_start_owned`, `serve_reply_owned`) under a real
//! containerd: in embedded mode their pages move to the receiver, and after
//! the call neither side sees the other's writes; in local mode they are
//! copied, correctly.

use cwasi_testkit::Containerd;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

/// What `page-giver` printed, checked key by key.
fn assert_saw(stdout: &str, expected: &[(&str, bool)]) {
    let line = stdout.lines().find(|l| l.starts_with("given_zeroed=")).unwrap_or_else(|| panic!("{stdout}"));
    for (key, value) in expected {
        assert!(line.split_whitespace().any(|kv| kv == format!("{key}={value}")), "{key}={value}: {line}");
    }
}

fn give_embedded(mib: usize) {
    let image = cwasi_testkit::test_image_with_peers("page-giver", &["page-keeper"]).unwrap();
    let ctd = Containerd::start(SHIM.as_ref(), &[]).expect("private containerd starts");
    ctd.import(&image).expect("image imports");
    let id = format!("page-giver-embedded-{mib}");
    let annotations = ["cwasi.io/embed=keeper=/page-keeper.wasm", "cwasi.io/peers=keeper"];
    let flags = ["--rm", "--annotation", annotations[0], "--annotation", annotations[1]];
    let out = ctd.run(&id, &image, &flags, &["/page-giver.wasm", "keeper", &mib.to_string()]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_saw(
        &out.stdout,
        &[
            // The request's pages moved: the caller's buffer reads zeros...
            ("given_zeroed", true),
            ("kept_match", true),
            // ...and its later writes do not reach the keeper's pages.
            ("kept_intact", true),
            // The reply's pages moved the other way.
            ("reply_ok", true),
            ("reply_zeroed", true),
        ],
    );
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

/// Local mode copies given payloads (moving pages across processes is not
/// built yet): the bytes arrive right and the giver's buffer is left as it was.
#[test]
fn a_payload_given_to_a_local_peer_is_copied_right() {
    let (ctd, images) = Containerd::with_functions(SHIM.as_ref(), &["page-keeper", "page-giver"]).unwrap();
    ctd.serve(&images[0], "keeper", &[]).unwrap();
    let flags = ["--rm", "--annotation", "cwasi.io/peers=keeper"];
    let out = ctd.run("page-giver-local", &images[1], &flags, &["/page-giver.wasm", "keeper", "64"]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_saw(
        &out.stdout,
        &[
            ("given_zeroed", false),
            ("kept_match", true),
            ("kept_intact", true),
            ("reply_ok", true),
            ("reply_zeroed", false),
        ],
    );
    assert!(ctd.logged_call("keeper", "local"), "no mode=local in the log:\n{}", ctd.log());
}
