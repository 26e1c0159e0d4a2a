//! A guest is a container: its process sits in the container's cgroup with
//! the spec's limits, runs as the spec's user under its seccomp profile, and
//! holds none of the shim's descriptors. Through a real containerd and `ctr`.

use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, TestImage};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");

fn containerd_with(functions: &[&str]) -> (Containerd, Vec<TestImage>) {
    Containerd::with_functions(SHIM.as_ref(), functions).expect("private containerd with the test images")
}

/// Starts `id` detached and returns its task's pid once it runs.
fn start(ctd: &Containerd, image: &TestImage, id: &str, flags: &[&str], command: &[&str]) -> u32 {
    ctd.start_detached(id, image, flags, command).unwrap();
    running_pid(ctd, id)
}

/// Runs the spec `spec` (root and all) as container `id`, detached; returns its pid.
fn start_spec(ctd: &Containerd, id: &str, mut spec: serde_json::Value, function: &str) -> (u32, tempfile::TempDir) {
    // With a spec file ctr takes no image: give the spec a root holding the module.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let module =
        cwasi_testkit::workspace_root().join(format!("target/test-functions/wasm32-wasip1/release/{function}.wasm"));
    fs::copy(&module, rootfs.join(format!("{function}.wasm"))).unwrap();
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["process"]["args"] = serde_json::json!([format!("/{function}.wasm")]);
    let config = dir.path().join("config.json");
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let config = config.to_str().unwrap();
    ctd.ctr(&["run", "-d", "--runtime", cwasi_testkit::RUNTIME, "--config", config, id]).unwrap().ok().unwrap();
    (running_pid(ctd, id), dir)
}

fn running_pid(ctd: &Containerd, id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = ctd.ctr(&["task", "ls"]).unwrap().ok().unwrap();
        let running = tasks.stdout.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 3 && cols[0] == id && cols[2] == "RUNNING").then(|| cols[1].parse::<u32>().ok()).flatten()
        });
        if let Some(pid) = running {
            return pid;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {tasks:?}");
        sleep(Duration::from_millis(20));
    }
}

fn stop(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctd.ctr(&["task", "delete", id]).map(|o| o.code != Some(0)).unwrap_or(true) {
        assert!(Instant::now() < deadline, "task {id} was not deleted");
        sleep(Duration::from_millis(50));
    }
    ctd.ctr(&["container", "delete", id]).unwrap().ok().unwrap();
}

/// The directory of `pid`'s cgroup for `controller` (v1), or its v2 cgroup.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.split(',').any(|c| c == controller) {
            return PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"));
        }
    }
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::")).expect("no cgroup of the guest");
    PathBuf::from(format!("/sys/fs/cgroup{v2}"))
}

fn cgroup_file(pid: u32, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let dir = cgroup_dir(pid, controller);
    let v1 = dir.join(v1_file);
    fs::read_to_string(if v1.exists() { v1 } else { dir.join(v2_file) }).unwrap().trim().to_owned()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes an integer and touches no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// The task runs as soon as its process exists; the process then sets
/// itself up. Waits (up to 10 s) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(10));
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim_start_matches(':').trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn spinning_guest_is_held_to_its_cpu_quota_in_the_containers_cgroup() {
    let (ctd, images) = containerd_with(&["infinite-loop"]);
    let limit = (96u64 << 20).to_string();
    let pid = start(&ctd, &images[0], "spin-quota", &["--cpus", "0.2", "--memory-limit", &limit], &[]);

    // The guest process is in the container's own cgroup, not the shim's.
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cpu_dir = cgroup_dir(pid, "cpu");
    assert!(cpu_dir.to_string_lossy().ends_with("spin-quota"), "{cgroups}");
    assert!(cgroup_dir(pid, "memory").to_string_lossy().ends_with("spin-quota"), "{cgroups}");
    assert_eq!(cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max"), limit);

    let (before, started) = (cpu_seconds(pid), Instant::now());
    sleep(Duration::from_secs(2));
    let used = (cpu_seconds(pid) - before) / started.elapsed().as_secs_f64();
    assert!(used <= 0.3, "the guest used {used:.2} of a core under --cpus 0.2");
    assert!(used > 0.05, "the guest did not spin at all ({used:.2} of a core)");

    stop(&ctd, "spin-quota");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpu_dir.exists() {
        assert!(Instant::now() < deadline, "{} outlived the container", cpu_dir.display());
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn task_metrics_report_the_containers_cgroup() {
    let (ctd, images) = containerd_with(&["infinite-loop"]);
    let pid = start(&ctd, &images[0], "spin-metrics", &["--cpus", "0.5"], &[]);
    sleep(Duration::from_millis(300));
    let out = ctd.ctr(&["task", "metrics", "spin-metrics"]).unwrap().ok().unwrap();
    let metric = |name: &str| -> u64 {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    let (usage_name, pids_name) = if out.stdout.contains("memory.usage_in_bytes") {
        ("memory.usage_in_bytes", "pids.current")
    } else {
        ("memory.usage", "pids.current")
    };
    let reported = metric(usage_name);
    let actual: u64 = cgroup_file(pid, "memory", "memory.usage_in_bytes", "memory.current").parse().unwrap();
    assert!(reported > 0, "{out:?}");
    // The shim's cgroup (containerd's) holds far more than one guest.
    assert!(
        reported.abs_diff(actual) < actual / 2 + (4 << 20),
        "reported {reported}, the guest's cgroup {actual}: {out:?}"
    );
    let tasks: u64 = cgroup_file(pid, "pids", "pids.current", "pids.current").parse().unwrap();
    assert_eq!(metric(pids_name), tasks, "{out:?}");
    stop(&ctd, "spin-metrics");
}

#[test]
fn guest_over_the_containers_memory_limit_is_refused_or_oom_killed_and_the_shim_survives() {
    let (ctd, images) = containerd_with(&["memory-hog", "hello"]);
    let limit = (48u64 << 20).to_string();
    let out =
        ctd.run("hog-cgroup", &images[0], &["--rm", "--memory-limit", &limit], &["/memory-hog.wasm", "256"]).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("exceeded its memory limit") || out.stderr.contains("OOM killer"),
        "no clear exit reason: {out:?}"
    );
    let out = ctd.run("hog-after", &images[1], &["--rm"], &[]).unwrap().ok().unwrap();
    assert!(out.stdout.contains("Hello"), "{out:?}");
    assert!(!ctd.log().contains("panicked"), "{}", ctd.log());
}

/// The spec `ctr` builds for `flags` (ctr 1.6 has no `--user`: tests edit
/// this spec and run it with `--config`).
fn spec_for(ctd: &Containerd, image: &TestImage, id: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["container", "create", "--runtime", cwasi_testkit::RUNTIME];
    args.extend_from_slice(flags);
    args.extend([image.reference.as_str(), id]);
    ctd.ctr(&args).unwrap().ok().unwrap();
    let info = ctd.ctr(&["container", "info", id]).unwrap().ok().unwrap();
    ctd.ctr(&["container", "delete", id]).unwrap().ok().unwrap();
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    info["Spec"].clone()
}

#[test]
fn guest_runs_as_the_spec_user_under_seccomp_without_the_shims_descriptors() {
    let (ctd, images) = containerd_with(&["infinite-loop"]);
    let mut spec = spec_for(&ctd, &images[0], "spec-template", &["--net-host", "--seccomp"]);
    spec["process"]["user"] = serde_json::json!({ "uid": 1000, "gid": 1000, "additionalGids": [1001, 1002] });
    spec["process"]["oomScoreAdj"] = serde_json::json!(456);
    spec["linux"]["cgroupsPath"] = serde_json::json!("/cwasi-test/spin-user");
    spec["process"]["noNewPrivileges"] = serde_json::json!(true);
    spec["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
    });
    spec["process"]["rlimits"] = serde_json::json!([{ "type": "RLIMIT_NOFILE", "hard": 321, "soft": 123 }]);
    let (pid, _dir) = start_spec(&ctd, "spin-user", spec, "infinite-loop");
    // Seccomp is the last step of the set-up.
    wait_until("the guest loads its seccomp filter", || status_field(pid, "Seccomp") == "2");

    let uid = status_field(pid, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "1000"), "Uid: {uid}");
    let gid = status_field(pid, "Gid");
    assert!(gid.split_whitespace().all(|g| g == "1000"), "Gid: {gid}");
    assert_eq!(status_field(pid, "Groups"), "1001 1002");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // The spec's sets: CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10.
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000420");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000400");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000400");
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000");
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "456");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["123", "321"], "{open_files}");

    let mut fds = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let target = fs::read_link(entry.path()).map(|t| t.display().to_string()).unwrap_or_default();
        fds.push(format!("{}->{target}", entry.file_name().to_string_lossy()));
    }
    assert!(
        fds.iter().all(|fd| !fd.contains("socket:") && !fd.contains("pipe:")),
        "the guest holds a socket or pipe it did not open: {fds:?}"
    );

    // The user switch cleared the parent-death signal; the guest re-armed it
    // and still dies with its shim.
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let shim: i32 = status_field(pid, "PPid").parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the guest dies with its shim", || {
        fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ"))
    });
    // Nobody deletes a task whose shim was killed: remove its cgroup here.
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        if let Some(controller) = controllers.split(',').next().filter(|c| !c.is_empty() && !c.contains('=')) {
            let _ = fs::remove_dir(format!("/sys/fs/cgroup/{controller}{path}"));
        }
    }
}

#[test]
fn guest_without_a_namespace_path_gets_a_network_of_its_own() {
    let (ctd, images) = containerd_with(&["infinite-loop"]);
    let spec = spec_for(&ctd, &images[0], "ns-template", &[]);
    let (pid, _dir) = start_spec(&ctd, "spin-netns", spec, "infinite-loop");
    let ns = |pid: u32, kind: &str| fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let me = std::process::id();
    wait_until("the guest enters its namespaces", || ns(pid, "ipc") != ns(me, "ipc"));
    assert_ne!(ns(pid, "net"), ns(me, "net"));
    assert_ne!(ns(pid, "uts"), ns(me, "uts"));
    assert_ne!(ns(pid, "ipc"), ns(me, "ipc"));
    stop(&ctd, "spin-netns");

    // A path is joined: a namespace made for the test, neither the host's nor a new one.
    let name = format!("cwasi-iso-{me}");
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
    assert!(ip(&["netns", "add", &name]), "ip netns add {name}");
    let path = format!("/var/run/netns/{name}");
    let with_ns = format!("network:{path}");
    let pid = start(&ctd, &images[0], "spin-joined", &["--with-ns", &with_ns], &[]);
    wait_until("the guest enters its namespaces", || ns(pid, "ipc") != ns(me, "ipc"));
    let joined = ns(pid, "net");
    stop(&ctd, "spin-joined");
    let wanted = fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    ip(&["netns", "delete", &name]);
    assert_eq!(joined.to_string_lossy(), format!("net:[{}]", wanted.unwrap()), "not the namespace at {path}");
    assert_ne!(joined, ns(me, "net"));
}

#[test]
fn fields_the_shim_cannot_honour_fail_create_by_name() {
    let (ctd, images) = containerd_with(&["hello"]);
    let out = ctd.run("bad-ns", &images[0], &["--rm", "--with-ns", "network:/nonexistent/netns"], &[]).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("linux.namespaces"), "{out:?}");
    let out = ctd.run("bad-cgroup", &images[0], &["--rm", "--cgroup", "/a/../../b"], &[]).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("linux.cgroupsPath"), "{out:?}");
}
