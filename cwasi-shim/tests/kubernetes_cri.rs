//! The Kubernetes path: containerd's CRI plugin with the runtime registered
//! by `deploy/containerd/cwasi-runtime-1.6.toml`, driven over the CRI gRPC
//! API as the kubelet drives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cwasi_testkit::{Containerd, POD_SUBNET, pause_image, test_image_for_kubernetes, workspace_root};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatsRequest, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, Int64Value, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-cwasi-v1");
const HANDLER: &str = "cwasi";

fn containerd_with_cri(functions: &[&str]) -> (Containerd, HashMap<String, String>) {
    containerd_with_cri_on(functions, false)
}

/// With `network`, pods off the host network join the rig's CNI network.
fn containerd_with_cri_on(functions: &[&str], network: bool) -> (Containerd, HashMap<String, String>) {
    let snippet = std::fs::read_to_string(workspace_root().join("deploy/containerd/cwasi-runtime-1.6.toml")).unwrap();
    let pause = pause_image().unwrap();
    let start = if network { Containerd::start_cri_with_network } else { Containerd::start_cri };
    let containerd = start(SHIM.as_ref(), &pause.reference, &snippet).expect("containerd with CRI starts");
    containerd.import_in("k8s.io", &pause).unwrap();
    let mut references = HashMap::new();
    for function in functions {
        let image = test_image_for_kubernetes(function).unwrap();
        containerd.import_in("k8s.io", &image).unwrap();
        references.insert(function.to_string(), image.reference);
    }
    (containerd, references)
}

/// Just enough of a kubelet: the CRI calls that run a pod.
struct Kubelet {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    logs: PathBuf,
}

struct Pod {
    id: String,
    config: PodSandboxConfig,
}

impl Kubelet {
    fn connect(containerd: &Containerd) -> Kubelet {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let channel = runtime.block_on(containerd_client::connect(containerd.socket())).unwrap();
        Kubelet { runtime, client: RuntimeServiceClient::new(channel), logs: containerd.dir().join("pod-logs") }
    }

    /// A pod on the host network (no CNI network needed).
    fn run_pod(&mut self, name: &str, annotations: &[(&str, &str)]) -> Pod {
        let security = LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
            ..Default::default()
        };
        self.run_pod_with(name, annotations, security)
    }

    fn run_pod_with(&mut self, name: &str, annotations: &[(&str, &str)], security: LinuxSandboxSecurityContext) -> Pod {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: self.logs.join(name).to_string_lossy().into_owned(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            linux: Some(LinuxPodSandboxConfig { security_context: Some(security), ..Default::default() }),
            ..Default::default()
        };
        std::fs::create_dir_all(&config.log_directory).unwrap();
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: HANDLER.to_owned() };
        let id = self.runtime.block_on(self.client.run_pod_sandbox(request)).unwrap().into_inner().pod_sandbox_id;
        Pod { id, config }
    }

    /// Creates and starts a container; returns its id and log file.
    fn start_container(&mut self, pod: &Pod, name: &str, image: &str, args: &[&str]) -> (String, PathBuf) {
        self.start_container_with(pod, name, image, args, None)
    }

    fn start_container_with(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        args: &[&str],
        linux: Option<LinuxContainerConfig>,
    ) -> (String, PathBuf) {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.to_owned(), attempt: 0 }),
            image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux,
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self.runtime.block_on(self.client.create_container(request)).unwrap().into_inner().container_id;
        self.runtime.block_on(self.client.start_container(StartContainerRequest { container_id: id.clone() })).unwrap();
        (id, Path::new(&pod.config.log_directory).join(format!("{name}.log")))
    }

    /// Waits until the container exited; returns its exit code.
    fn wait_exited(&mut self, id: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let request = ContainerStatusRequest { container_id: id.to_owned(), verbose: false };
            let status =
                self.runtime.block_on(self.client.container_status(request)).unwrap().into_inner().status.unwrap();
            if status.state == ContainerState::ContainerExited as i32 {
                return status.exit_code;
            }
            assert!(Instant::now() < deadline, "container {id} still {:?}", status.state);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of a running container (from the CRI plugin's verbose status).
    fn running_pid(&mut self, id: &str) -> u32 {
        self.running_info(id)["pid"].as_u64().unwrap() as u32
    }

    /// The CRI plugin's verbose information on a running container (pid, runtimeSpec, ...).
    fn running_info(&mut self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = ContainerStatusRequest { container_id: id.to_owned(), verbose: true };
            let response = self.runtime.block_on(self.client.container_status(request)).unwrap().into_inner();
            if response.status.as_ref().is_some_and(|s| s.state == ContainerState::ContainerRunning as i32) {
                return serde_json::from_str(&response.info["info"]).unwrap();
            }
            assert!(Instant::now() < deadline, "container {id} never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pod's status and the CRI plugin's verbose information on its sandbox.
    fn pod_status(&mut self, pod: &Pod) -> (PodSandboxStatus, serde_json::Value) {
        let request = PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: true };
        let response = self.runtime.block_on(self.client.pod_sandbox_status(request)).unwrap().into_inner();
        (response.status.unwrap(), serde_json::from_str(&response.info["info"]).unwrap())
    }

    fn remove_pod(&mut self, pod: Pod) {
        self.runtime
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }))
            .unwrap();
        self.runtime
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id }))
            .unwrap();
    }
}

#[test]
fn pod_annotations_reach_the_shim_through_cri() {
    let (containerd, images) = containerd_with_cri(&["hello"]);
    let mut kubelet = Kubelet::connect(&containerd);
    let pod = kubelet.run_pod("greeter", &[("cwasi.io/function", "greeter"), ("unrelated.io/annotation", "x")]);
    let (id, log) = kubelet.start_container(&pod, "hello", &images["hello"], &["from", "a pod"]);
    assert_eq!(kubelet.wait_exited(&id, Duration::from_secs(30)), 0);
    let log = std::fs::read_to_string(log).unwrap();
    // CRI log lines: "<time> stdout F <text>".
    assert!(log.contains("stdout F Hello from a WebAssembly function"), "{log}");
    assert!(log.contains("arg[2]=a pod"), "{log}");
    assert!(log.contains("env CWASI_FUNCTION=greeter"), "the pod annotation did not reach the shim: {log}");
    assert!(log.contains("env CWASI_NAMESPACE=default"), "{log}");
    kubelet.remove_pod(pod);
}

#[test]
fn two_pods_call_each_other_in_local_mode_through_cri() {
    let (containerd, images) = containerd_with_cri(&["sha256-server", "producer"]);
    let mut kubelet = Kubelet::connect(&containerd);
    let server = kubelet.run_pod("sha256", &[("cwasi.io/function", "sha256"), ("cwasi.io/serve", "true")]);
    kubelet.start_container(&server, "sha256", &images["sha256-server"], &[]);
    containerd.wait_for_log(&["serving", "function=sha256"], Duration::from_secs(30)).unwrap();

    let producer = kubelet.run_pod("producer", &[("cwasi.io/function", "producer"), ("cwasi.io/peers", "sha256")]);
    let (id, log) =
        kubelet.start_container(&producer, "producer", &images["producer"], &["sha256", "0", "4096", "1048576"]);
    let exit_code = kubelet.wait_exited(&id, Duration::from_secs(60));
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(exit_code, 0, "{log}");
    for size in ["0", "4096", "1048576"] {
        assert!(log.contains(&format!("ok size={size} sha256=")), "{size}: {log}");
    }
    assert!(containerd.logged_call("sha256", "local"), "{}", containerd.log());
    kubelet.remove_pod(producer);
    kubelet.remove_pod(server);
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn a_pod_with_a_user_runtime_default_seccomp_and_limits_gets_them_and_its_stats() {
    let (containerd, images) = containerd_with_cri(&["infinite-loop"]);
    let mut kubelet = Kubelet::connect(&containerd);
    let pod = kubelet.run_pod("limited", &[]);
    let linux = LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 789,
            ..Default::default()
        }),
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            seccomp: Some(SecurityProfile {
                profile_type: k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let (id, _) = kubelet.start_container_with(&pod, "spin", &images["infinite-loop"], &[], Some(linux));
    let pid = kubelet.running_pid(&id);
    wait_confined_as_uid_1000_with_seccomp(pid);
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "789");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.lines().any(|l| l.contains(":memory:") && l.ends_with(&id)), "{cgroups}");

    std::thread::sleep(Duration::from_millis(500));
    let request = ContainerStatsRequest { container_id: id.clone() };
    let stats = kubelet.runtime.block_on(kubelet.client.container_stats(request)).unwrap().into_inner().stats.unwrap();
    let working_set = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    assert!(working_set > 0, "no memory figure in {stats:?}");
    // The guest's own cgroup, not the shim's (which holds containerd's shims too).
    assert!(working_set < 128 << 20, "working set {working_set} is over the container's limit");
    kubelet.remove_pod(pod);
}

/// The guest process sets itself up after it starts (seccomp before or
/// after the user switch, as `noNewPrivileges` says): waits until it runs
/// as uid 1000 under a seccomp filter.
fn wait_confined_as_uid_1000_with_seccomp(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (uid, seccomp) = (status_field(pid, "Uid"), status_field(pid, "Seccomp"));
        if seccomp == "2" && uid.split_whitespace().all(|u| u == "1000") {
            return;
        }
        assert!(Instant::now() < deadline, "the guest has Uid {uid} and Seccomp {seccomp}, not uid 1000 and a filter");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).ino()
}

fn runtime_default() -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    })
}

#[test]
fn a_pod_on_its_own_network_runs_its_guest_confined_in_the_pods_network_namespace() {
    let (containerd, images) = containerd_with_cri_on(&["infinite-loop"], true);
    let mut kubelet = Kubelet::connect(&containerd);
    // As the kubelet sends a pod with securityContext runAsUser 1000 and
    // seccompProfile RuntimeDefault, on the pod network (no hostNetwork).
    let security = LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption { network: NamespaceMode::Pod as i32, ..Default::default() }),
        run_as_user: Some(Int64Value { value: 1000 }),
        seccomp: runtime_default(),
        ..Default::default()
    };
    let pod = kubelet.run_pod_with("networked", &[("cwasi.io/function", "spinner")], security);

    let (status, sandbox) = kubelet.pod_status(&pod);
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    let prefix = POD_SUBNET.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod IP {ip:?} is not from {POD_SUBNET}");
    let sandbox_namespaces = &sandbox["runtimeSpec"]["linux"]["namespaces"];
    let pod_netns = sandbox_namespaces
        .as_array()
        .and_then(|all| all.iter().find(|ns| ns["type"] == "network"))
        .and_then(|ns| ns["path"].as_str())
        .unwrap_or_else(|| panic!("no network namespace path in the sandbox spec: {sandbox_namespaces}"))
        .to_owned();
    assert!(
        pod_netns.starts_with(&containerd.dir().to_string_lossy().into_owned()),
        "the pod's netns {pod_netns} is not pinned under the rig"
    );

    let linux = LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 654,
            ..Default::default()
        }),
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            seccomp: runtime_default(),
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Pod as i32, ..Default::default() }),
            ..Default::default()
        }),
    };
    let (id, _) = kubelet.start_container_with(&pod, "spin", &images["infinite-loop"], &[], Some(linux));
    let info = kubelet.running_info(&id);
    let pid = info["pid"].as_u64().unwrap() as u32;
    wait_confined_as_uid_1000_with_seccomp(pid);
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "654");

    let guest_netns = inode(&format!("/proc/{pid}/ns/net"));
    assert_eq!(guest_netns, inode(&pod_netns), "the guest is not in the pod's network namespace {pod_netns}");
    assert_ne!(guest_netns, inode("/proc/self/ns/net"), "the guest is in the host's (the test's) network namespace");
    // IPC and UTS are the pod's too: the sandbox process made new ones.
    let sandbox_pid = sandbox["pid"].as_u64().unwrap();
    for ns in ["ipc", "uts"] {
        let guest = inode(&format!("/proc/{pid}/ns/{ns}"));
        assert_eq!(guest, inode(&format!("/proc/{sandbox_pid}/ns/{ns}")), "{ns}: not the pod's");
        assert_ne!(guest, inode(&format!("/proc/self/ns/{ns}")), "{ns}: the host's");
    }
    let bridge = containerd.network().unwrap().bridge().to_owned();
    assert!(std::path::Path::new("/sys/class/net").join(&bridge).exists(), "no bridge {bridge}");

    kubelet.remove_pod(pod);
    drop(kubelet);
    drop(containerd);
    assert!(!std::path::Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} left behind");
}
