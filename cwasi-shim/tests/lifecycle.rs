//! The shim under a real containerd, driven through `ctr`.

use std::thread::sleep;
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, TestImage};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

fn containerd_with(functions: &[&str]) -> (Containerd, Vec<TestImage>) {
    Containerd::with_functions(SHIM.as_ref(), functions).expect("private containerd with the test images")
}

#[test]
fn hello_prints_its_args_and_env() {
    let (ctd, images) = containerd_with(&["hello"]);
    let out = ctd
        .run("hello-1", &images[0], &["--rm", "--env", "GREETING=hi there"], &["/hello.wasm", "alpha", "beta gamma"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("Hello from a WebAssembly function"), "{out:?}");
    assert!(out.stdout.contains("arg[0]=/hello.wasm"), "{out:?}");
    assert!(out.stdout.contains("arg[1]=alpha"), "{out:?}");
    assert!(out.stdout.contains("arg[2]=beta gamma"), "{out:?}");
    assert!(out.stdout.contains("env GREETING=hi there"), "{out:?}");
}

#[test]
fn exit_code_reaches_ctr() {
    let (ctd, images) = containerd_with(&["exit-code"]);
    let out = ctd.run("exit-1", &images[0], &["--rm"], &[]).unwrap();
    assert_eq!(out.code, Some(7), "{out:?}");
    assert!(out.stdout.contains("exiting with 7"), "{out:?}");
    let out = ctd.run("exit-2", &images[0], &["--rm"], &["/exit-code.wasm", "0"]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
}

/// Polls `ctr task ls` until `id` is running.
fn wait_running(ctd: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = ctd.ctr(&["task", "ls"]).unwrap().ok().unwrap();
        if tasks.stdout.lines().any(|l| l.starts_with(id) && l.contains("RUNNING")) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {tasks:?}");
        sleep(Duration::from_millis(20));
    }
}

/// Runs `id` attached (as `ctr run --rm` does), kills it with `signal` and
/// returns `ctr run`'s exit status and the time from the kill to that exit.
fn kill_running_guest(
    ctd: &Containerd,
    image: &TestImage,
    id: &str,
    flags: &[&str],
    command: &[&str],
    signal: &str,
) -> (Option<i32>, Duration) {
    let mut flags = flags.to_vec();
    flags.push("--rm");
    let mut run = ctd
        .ctr_command(&Containerd::run_args(id, image, &flags, command))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_running(ctd, id);
    sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    ctd.ctr(&["task", "kill", "--signal", signal, id]).unwrap().ok().unwrap();
    let status = run.wait().unwrap();
    (status.code(), killed_at.elapsed())
}

#[test]
fn spinning_guest_stops_within_a_second_on_sigterm_and_sigkill() {
    let (ctd, images) = containerd_with(&["infinite-loop"]);
    for (id, signal, status) in [("loop-term", "SIGTERM", 143), ("loop-kill", "SIGKILL", 137)] {
        let (code, elapsed) = kill_running_guest(&ctd, &images[0], id, &[], &[], signal);
        assert_eq!(code, Some(status), "{signal}");
        assert!(elapsed < Duration::from_secs(1), "{signal} took {elapsed:?}");
    }
}

#[test]
fn guest_over_its_memory_limit_fails_clearly_and_the_shim_survives() {
    let (ctd, images) = containerd_with(&["memory-hog", "hello"]);
    let limit = (64u64 << 20).to_string();
    let out = ctd.run("hog-1", &images[0], &["--rm", "--memory-limit", &limit], &["/memory-hog.wasm", "512"]).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("exceeded its memory limit"), "{out:?}");
    assert!(out.stderr.contains(&limit), "{out:?}");
    // Under the limit the same guest succeeds.
    let out = ctd
        .run("hog-2", &images[0], &["--rm", "--memory-limit", &limit], &["/memory-hog.wasm", "32"])
        .unwrap()
        .ok()
        .unwrap();
    assert!(out.stdout.contains("allocated 32 MiB"), "{out:?}");
    assert!(!ctd.log().contains("panicked"), "{}", ctd.log());
}

#[test]
fn guest_sees_its_rootfs_and_mounts_but_not_the_host() {
    let (ctd, images) = containerd_with(&["read-file"]);
    let image = &images[0];
    let out = ctd.run("read-1", image, &["--rm"], &["/read-file.wasm", "/data/greeting.txt"]).unwrap().ok().unwrap();
    assert_eq!(out.stdout, "greetings from inside the image\n");

    let host_name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for (i, path) in ["/etc/hostname", "/../../../../etc/hostname", "../etc/hostname"].iter().enumerate() {
        let out = ctd.run(&format!("read-host-{i}"), image, &["--rm"], &["/read-file.wasm", path]).unwrap();
        assert_eq!(out.code, Some(1), "{path}: {out:?}");
        assert!(out.stderr.contains("cannot read"), "{path}: {out:?}");
        assert!(host_name.trim().is_empty() || !out.stdout.contains(host_name.trim()), "{path}: {out:?}");
    }

    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("note.txt"), "from a bind mount\n").unwrap();
    let mount = format!("type=bind,src={},dst=/mnt/shared,options=rbind:ro", shared.path().display());
    let out = ctd
        .run("read-mount", image, &["--rm", "--mount", &mount], &["/read-file.wasm", "/mnt/shared/note.txt"])
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(out.stdout, "from a bind mount\n");
}

/// A hostile guest calling every `cwasi` import with pointers outside its
/// memory, unknown handles and requests it does not have gets the status
/// each must answer, never a trap; nothing panics.
#[test]
fn every_import_answers_bad_pointers_and_handles_with_a_status() {
    let (ctd, images) = containerd_with(&["abi-abuse"]);
    let out = ctd.run("abi-abuse", &images[0], &["--rm"], &[]).unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("ok ")).count(), 23, "{out:?}");
    assert!(!out.stdout.contains("WRONG"), "{out:?}");
    assert!(!ctd.log().contains("panicked"), "{}", ctd.log());
}

/// A read-only mount or rootfs stays read-only on every engine: WASI is the
/// only thing between the guest and those files.
#[test]
fn guest_cannot_write_where_its_spec_says_read_only() {
    let (ctd, images) = containerd_with(&["read-file"]);
    let image = &images[0];
    let shared = tempfile::tempdir().unwrap();
    let note = shared.path().join("note.txt");
    std::fs::write(&note, "kept\n").unwrap();
    let mount =
        |options: &str| format!("type=bind,src={},dst=/mnt/shared,options=rbind:{options}", shared.path().display());

    let ro = mount("ro");
    let command = ["/read-file.wasm", "/mnt/shared/note.txt", "append", "tampered\n"];
    let out = ctd.run("write-ro", image, &["--rm", "--mount", &ro], &command).unwrap();
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("cannot write /mnt/shared/note.txt"), "{out:?}");
    let new_file = ["/read-file.wasm", "/mnt/shared/new.txt", "append", "planted\n"];
    let out = ctd.run("create-ro", image, &["--rm", "--mount", &ro], &new_file).unwrap();
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "kept\n");
    assert!(!shared.path().join("new.txt").exists());

    let out = ctd
        .run(
            "write-root-ro",
            image,
            &["--rm", "--read-only"],
            &["/read-file.wasm", "/data/greeting.txt", "append", "x"],
        )
        .unwrap();
    assert_eq!(out.code, Some(2), "{out:?}");

    // The same writes where the spec allows them.
    let rw = mount("rw");
    let out = ctd.run("write-rw", image, &["--rm", "--mount", &rw], &command).unwrap().ok().unwrap();
    assert_eq!(out.stdout, "kept\ntampered\n");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "kept\ntampered\n");
}

#[test]
#[cfg_attr(feature = "wasmedge", ignore = "the WasmEdge interpreter compiles nothing to cache")]
fn second_start_of_a_module_loads_it_from_the_cache() {
    let (ctd, images) = containerd_with(&["hello"]);
    ctd.run("cache-1", &images[0], &["--rm"], &[]).unwrap().ok().unwrap();
    ctd.run("cache-2", &images[0], &["--rm"], &[]).unwrap().ok().unwrap();
    let log = ctd.log();
    let compiled = log.lines().filter(|l| l.contains("compiled module")).count();
    let hits = log
        .lines()
        .filter(|l| {
            l.contains("module ready") && l.contains("cache=\"hit\"")
                || l.contains("module ready") && l.contains("cache=hit")
        })
        .count();
    assert_eq!(compiled, 1, "{log}");
    assert_eq!(hits, 1, "{log}");
}

#[test]
fn container_without_wasm_waits_until_killed() {
    let (ctd, images) = containerd_with(&["read-file"]);
    let image = &images[0];
    // A pod's sandbox as CRI marks it, and a command that is not a module.
    let cases: [(&str, &[&str], &[&str]); 2] = [
        ("sandbox-cri", &["--annotation", "io.kubernetes.cri.container-type=sandbox"], &[]),
        ("sandbox-pause", &[], &["/data/greeting.txt"]),
    ];
    for (id, flags, command) in cases {
        let (code, _) = kill_running_guest(&ctd, image, id, flags, command, "SIGKILL");
        assert_eq!(code, Some(137), "{id}");
    }
}

#[test]
fn missing_module_is_a_clear_create_error() {
    let (ctd, images) = containerd_with(&["hello"]);
    let out = ctd.run("missing-1", &images[0], &["--rm"], &["/nope.wasm"]).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("/nope.wasm not found in the container's rootfs"), "{out:?}");
}
