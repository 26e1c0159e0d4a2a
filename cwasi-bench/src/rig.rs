//! The benchmark setup: a Redis, node A (callers, local servers) and node B
//! (remote servers), two private containerd instances ([`TwoNodes`]).

pub use cwasi_testkit::{CallTimings, Route as BenchMode};
use cwasi_testkit::{TwoNodes, workspace_root};

/// The functions one operation of `shape` calls (at once).
pub fn functions(shape: Shape) -> &'static [&'static str] {
    shape.functions()
}

/// How the caller calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A sends to a sink and waits for its (empty) answer.
    Sequential,
    /// As `Sequential`, with each request given up (`call_start_owned`):
    /// embedded mode moves its pages instead of copying them.
    SequentialGiven,
    /// A sends to four sinks at once and waits for all four.
    FanOut4,
    /// A sends to an echo and gets the same bytes back.
    RoundTrip,
    /// A sends four calls at once to one function that runs four handler
    /// instances (`cwasi.io/concurrency: 4`).
    FanOut4ToOne,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Sequential => "sequential",
            Shape::SequentialGiven => "sequential, given",
            Shape::FanOut4 => "fan-out 4",
            Shape::RoundTrip => "round trip",
            Shape::FanOut4ToOne => "fan-out 4 to one",
        }
    }

    /// Payload bytes moved per operation, for GB/s and memcpy ratios.
    pub fn bytes_moved(self, payload: usize) -> usize {
        match self {
            Shape::Sequential | Shape::SequentialGiven => payload,
            Shape::FanOut4 | Shape::FanOut4ToOne => 4 * payload,
            Shape::RoundTrip => 2 * payload,
        }
    }

    /// The functions one operation calls (at once).
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            Shape::Sequential | Shape::SequentialGiven => &["sink"],
            Shape::FanOut4 => &["sink-1", "sink-2", "sink-3", "sink-4"],
            Shape::RoundTrip => &["echo"],
            Shape::FanOut4ToOne => &["sink-x4", "sink-x4", "sink-x4", "sink-x4"],
        }
    }
}

pub struct Rig {
    nodes: TwoNodes,
}

/// The functions every node serves: (name, test function, annotations).
pub const SERVERS: [(&str, &str, &[&str]); 7] = [
    ("sink", "sink-server", &[]),
    ("sink-1", "sink-server", &[]),
    ("sink-2", "sink-server", &[]),
    ("sink-3", "sink-server", &[]),
    ("sink-4", "sink-server", &[]),
    ("echo", "echo-server", &[]),
    ("sink-x4", "sink-server", &["cwasi.io/concurrency=4"]),
];

impl Rig {
    pub fn start() -> anyhow::Result<Self> {
        let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
        Ok(Self { nodes: TwoNodes::start(&shim, &SERVERS)? })
    }

    pub fn redis_url(&self) -> String {
        self.nodes.redis.url()
    }

    /// Runs one `bench-caller` on node A and returns its timings.
    pub fn measure(
        &self,
        mode: BenchMode,
        shape: Shape,
        size: usize,
        iterations: usize,
        max_seconds: f64,
    ) -> anyhow::Result<CallTimings> {
        let id = format!("bench-{}-{}-{size}", mode.name(), shape.name().replace([' ', ','], ""));
        let measured = match shape {
            Shape::SequentialGiven => self.nodes.bench_call_given(&id, mode, "sink", size, iterations, max_seconds)?,
            _ => self.nodes.bench_call(&id, mode, shape.functions(), size, iterations, max_seconds)?,
        };
        Ok(measured.timings)
    }
}
