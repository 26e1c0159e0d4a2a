//! Test rig for cwasi: a private containerd driven through `ctr`, a private
//! redis-server or Redis Cluster, nodes in network namespaces, two nodes and a Redis for the demo and the benchmarks, and
//! the OCI images of the guest functions in `test-functions/`.
//!
//! Everything a [`Containerd`] creates lives under one temporary directory
//! (root, state, sockets, logs) and is torn down when it is dropped: tasks,
//! shims, mounts and the daemon itself.

mod cni;
mod containerd;
mod images;
mod mounts;
mod netns;
mod node;
mod place;
pub mod process;
mod redis_cluster;
mod redis_server;
mod teardown;
mod two_nodes;
mod units;

pub use cni::{CNI_BIN_DIR, CniNetwork, POD_SUBNET};
pub use containerd::{Containerd, CtrOutput, RUNTIME};
pub use images::{
    TestImage, pause_image, test_image, test_image_for_kubernetes, test_image_with_peers, workspace_root,
};
pub use netns::{Netns, REDIS_NODE, TestNetwork};
pub use node::Node;
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisServer, TlsFiles};
pub use teardown::on_interrupt;
pub use two_nodes::{CallTimings, Measured, RedisBackend, Route, Topology, TwoNodes};
pub use units::{human_bytes, human_latency};

/// The engine a shim binary runs guests on (`wasmtime` or `wasmedge`).
pub fn shim_engine(shim: &std::path::Path) -> String {
    std::process::Command::new(shim)
        .arg("--engine")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Payload sizes for digest checks: 0 B to 256 MiB, or to 4 MiB on the
/// WasmEdge interpreter, which hashes some 100 times slower.
pub fn digest_sizes(shim: &std::path::Path) -> &'static [&'static str] {
    if shim_engine(shim) == "wasmedge" {
        &["0", "1", "4096", "1048576", "4194304"]
    } else {
        &["0", "1", "4096", "1048576", "67108864", "268435456"]
    }
}
