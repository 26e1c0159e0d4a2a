//! A node of a multi-node test. A test rig: it panics, with what it saw,
//! on failure.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{Containerd, CtrOutput, TestImage, TestNetwork};

/// A node: a containerd whose functions carry `cwasi.io/node` and, unless
/// the node's settings pick the Redis, `cwasi.io/redis`.
pub struct Node {
    pub containerd: Containerd,
    annotations: Vec<String>,
}

impl Node {
    /// `env` goes to containerd and so to the shim (e.g. `CWASI_REDIS_CA_FILE`).
    pub fn start(
        shim: &Path,
        name: &str,
        redis_url: Option<&str>,
        env: &[(&str, &str)],
        images: &[&TestImage],
    ) -> Node {
        let containerd = Containerd::start(shim, env).expect("private containerd starts");
        Self::with(containerd, name, redis_url, images)
    }

    /// Like [`Node::start`], with containerd (so its shims and guests) in
    /// the namespace of node `name` of `network`: its remote traffic
    /// crosses the network's veths and bridge.
    pub fn start_on(
        network: &TestNetwork,
        shim: &Path,
        name: &str,
        redis_url: Option<&str>,
        env: &[(&str, &str)],
        images: &[&TestImage],
    ) -> Node {
        let containerd = Containerd::start_in(shim, env, network.netns(name)).expect("private containerd starts");
        Self::with(containerd, name, redis_url, images)
    }

    fn with(containerd: Containerd, name: &str, redis_url: Option<&str>, images: &[&TestImage]) -> Node {
        for image in images {
            containerd.import(image).expect("image imports");
        }
        let mut annotations = vec![format!("cwasi.io/node={name}")];
        annotations.extend(redis_url.map(|url| format!("cwasi.io/redis={url}")));
        Node { containerd, annotations }
    }

    /// `ctr run` of `image` on this node, with its annotations and `extra` flags.
    pub fn run(&self, id: &str, image: &TestImage, extra: &[&str], command: &[&str]) -> anyhow::Result<CtrOutput> {
        self.containerd.run(id, image, &self.flags(extra), command)
    }

    pub fn flags<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = Vec::new();
        for annotation in &self.annotations {
            flags.extend(["--annotation", annotation.as_str()]);
        }
        flags.extend_from_slice(extra);
        flags
    }

    pub fn serve(&self, image: &TestImage, name: &str, extra: &[&str]) {
        let ready = self.log_lines(&["remote serving ready", &format!("function={name}")]);
        self.containerd.serve(image, name, &self.flags(extra)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_lines(&["remote serving ready", &format!("function={name}")]) == ready {
            assert!(Instant::now() < deadline, "{name} never got ready:\n{}", self.containerd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_lines(&self, needles: &[&str]) -> usize {
        self.containerd.log().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
    }

    /// Removes the stopped task and container `id`.
    pub fn remove(&self, id: &str) {
        let ctd = &self.containerd;
        let started = Instant::now();
        while ctd.ctr(&["task", "delete", id]).unwrap().code != Some(0) {
            assert!(started.elapsed() < Duration::from_secs(10), "task {id} never stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
        ctd.ctr(&["container", "delete", id]).unwrap().ok().unwrap();
    }

    pub fn kill(&self, id: &str) {
        self.containerd.ctr(&["task", "kill", "--signal", "SIGKILL", id]).unwrap().ok().unwrap();
        self.remove(id);
    }

    pub fn task_stopped(&self, id: &str) -> bool {
        let tasks = self.containerd.ctr(&["task", "ls"]).unwrap().stdout;
        tasks.lines().any(|l| l.split_whitespace().next() == Some(id) && l.contains("STOPPED"))
    }

    /// `ctr run` in the background with its stdout piped.
    pub fn spawn(&self, id: &str, image: &TestImage, extra: &[&str], command: &[&str]) -> Child {
        self.containerd
            .ctr_command(&Containerd::run_args(id, image, &self.flags(extra), command))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}
