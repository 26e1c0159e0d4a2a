//! The benchmark setup: a Redis, node A (callers, local servers) and node B
//! (remote servers), two private containerd instances.

use anyhow::Context;
use cwasi_testkit::{Containerd, RedisServer, TestImage, test_image, test_image_with_peers, workspace_root};

/// A way of reaching the peer, as the matrix names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    Embedded,
    Local,
    Remote,
    /// Co-located, forced through Redis: what functions do without cwasi.
    RedisBaseline,
}

impl BenchMode {
    pub const ALL: [BenchMode; 4] = [BenchMode::Embedded, BenchMode::Local, BenchMode::Remote, BenchMode::RedisBaseline];

    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Embedded => "embedded",
            BenchMode::Local => "local",
            BenchMode::Remote => "remote",
            BenchMode::RedisBaseline => "redis-baseline",
        }
    }

    /// Prefix of the peer names this mode calls (each rig function has one per mode).
    fn prefix(self) -> &'static str {
        match self {
            BenchMode::Embedded => "e",
            BenchMode::Local | BenchMode::RedisBaseline => "l",
            BenchMode::Remote => "r",
        }
    }
}

/// How the caller calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A sends to a sink and waits for its (empty) answer.
    Sequential,
    /// A sends to four sinks at once and waits for all four.
    FanOut4,
    /// A sends to an echo and gets the same bytes back.
    RoundTrip,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Sequential => "sequential",
            Shape::FanOut4 => "fan-out 4",
            Shape::RoundTrip => "round trip",
        }
    }

    /// Payload bytes moved per operation, for GB/s and memcpy ratios.
    pub fn bytes_moved(self, payload: usize) -> usize {
        match self {
            Shape::Sequential => payload,
            Shape::FanOut4 => 4 * payload,
            Shape::RoundTrip => 2 * payload,
        }
    }

    fn peers(self, prefix: &str) -> String {
        match self {
            Shape::Sequential => format!("{prefix}sink"),
            Shape::FanOut4 => (1..=4).map(|i| format!("{prefix}sink-{i}")).collect::<Vec<_>>().join(","),
            Shape::RoundTrip => format!("{prefix}echo"),
        }
    }
}

/// Timings a `bench-caller` guest printed.
#[derive(Debug, Clone, Copy)]
pub struct CallTimings {
    pub median_ns: u64,
    pub p99_ns: u64,
    pub samples: usize,
}

pub struct Rig {
    pub redis: RedisServer,
    node_a: Containerd,
    _node_b: Containerd,
    caller: TestImage,
    annotations_a: Vec<String>,
}

const FUNCTIONS: [&str; 6] = ["sink", "sink-1", "sink-2", "sink-3", "sink-4", "echo"];

impl Rig {
    pub fn start() -> anyhow::Result<Self> {
        let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
        anyhow::ensure!(shim.exists(), "{} is missing: run `make build` first", shim.display());
        let redis = RedisServer::start_with(false)?;
        let sink = test_image("sink-server")?;
        let echo = test_image("echo-server")?;
        let caller = test_image_with_peers("bench-caller", &["sink-server", "echo-server"])?;
        let node = |name: &str| -> anyhow::Result<(Containerd, Vec<String>)> {
            let containerd = Containerd::start(&shim, &[])?;
            for image in [&sink, &echo, &caller] {
                containerd.import(image)?;
            }
            Ok((containerd, vec![format!("cwasi.io/node={name}"), format!("cwasi.io/redis={}", redis.url())]))
        };
        let (node_a, annotations_a) = node("node-a")?;
        let (node_b, annotations_b) = node("node-b")?;
        for (containerd, annotations, prefix) in [(&node_a, &annotations_a, "l"), (&node_b, &annotations_b, "r")] {
            let flags: Vec<&str> = annotations.iter().flat_map(|a| ["--annotation", a.as_str()]).collect();
            for function in FUNCTIONS {
                let image = if function == "echo" { &echo } else { &sink };
                containerd
                    .serve(image, &format!("{prefix}{function}"), &flags)
                    .with_context(|| format!("starting {prefix}{function}"))?;
            }
            for function in FUNCTIONS {
                containerd.wait_for_log(&["remote serving ready", &format!("function={prefix}{function}")], std::time::Duration::from_secs(30))?;
            }
        }
        Ok(Self { redis, node_a, _node_b: node_b, caller, annotations_a })
    }

    /// Runs one `bench-caller` on node A and parses its timings.
    pub fn measure(&self, mode: BenchMode, shape: Shape, size: usize, iterations: usize, max_seconds: f64) -> anyhow::Result<CallTimings> {
        let peers = shape.peers(mode.prefix());
        let mut annotations = self.annotations_a.clone();
        annotations.push(format!("cwasi.io/peers={peers}"));
        if mode == BenchMode::Embedded {
            let embed: Vec<String> = FUNCTIONS
                .iter()
                .map(|f| format!("e{f}=/{}-server.wasm", if *f == "echo" { "echo" } else { "sink" }))
                .collect();
            annotations.push(format!("cwasi.io/embed={}", embed.join(",")));
        }
        if mode == BenchMode::RedisBaseline {
            let forced: Vec<String> = peers.split(',').map(|p| format!("{p}=remote")).collect();
            annotations.push(format!("cwasi.io/mode={}", forced.join(",")));
        }
        let mut flags = vec!["--rm"];
        flags.extend(annotations.iter().flat_map(|a| ["--annotation", a.as_str()]));
        let id = format!("bench-{}-{}-{size}", mode.name(), shape.name().replace(' ', ""));
        let (size, iterations, seconds) = (size.to_string(), iterations.to_string(), max_seconds.to_string());
        let out = self
            .node_a
            .run(&id, &self.caller, &flags, &["/bench-caller.wasm", &peers, &size, &iterations, &seconds])?
            .ok()
            .with_context(|| format!("benchmark {id}"))?;
        let line = out.stdout.lines().find(|l| l.starts_with("bench ")).context("no timings printed")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .with_context(|| format!("{name} missing in {line:?}"))?
                .parse()
                .with_context(|| format!("{name} in {line:?}"))
        };
        Ok(CallTimings { median_ns: field("median_ns")?, p99_ns: field("p99_ns")?, samples: field("n")? as usize })
    }
}
