//! Test rig for cwasi: a private containerd driven through `ctr`, and the
//! OCI images of the guest functions in `test-functions/`.
//!
//! Everything a [`Containerd`] creates lives under one temporary directory
//! (root, state, sockets, logs) and is torn down when it is dropped: tasks,
//! shims, mounts and the daemon itself.

mod containerd;
mod images;
mod mounts;
mod redis_server;

pub use containerd::{Containerd, CtrOutput, RUNTIME};
pub use redis_server::RedisServer;
pub use images::{TestImage, pause_image, test_image, test_image_for_kubernetes, test_image_with_peers, workspace_root};
