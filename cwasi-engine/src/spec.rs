use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::MemoryBudget;

/// Everything an engine needs to run one guest, already resolved to host paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GuestSpec {
    /// The module file on the host (inside the container's rootfs).
    pub module: PathBuf,
    /// Exported function to call; `None` means the WASI command entry `_start`.
    pub entry: Option<String>,
    /// `argv` as the guest sees it, `argv[0]` included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host directories the guest may reach, the rootfs first (as `/`).
    pub preopens: Vec<Preopen>,
    /// Cap on linear memory in bytes (`linux.resources.memory.limit`).
    pub memory_limit: Option<u64>,
    /// The budget that limit is drawn from, when the guest shares it with
    /// other handler instances of its container; see [`GuestSpec::memory_budget`].
    #[serde(skip)]
    pub shared_memory: Option<MemoryBudget>,
    /// Where compiled modules are kept; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Peers shipped in the image (`cwasi.io/embed`): name and module on the host.
    pub embedded: Vec<EmbeddedModule>,
}

impl GuestSpec {
    /// The budget the guest and its embedded peers draw their memory from:
    /// the one shared with the container's other handler instances, else
    /// its own, of `memory_limit`.
    pub fn memory_budget(&self) -> MemoryBudget {
        self.shared_memory.clone().unwrap_or_else(|| MemoryBudget::new(self.memory_limit))
    }
}

/// A peer's module that the engine runs in-process for calls to `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedModule {
    pub name: String,
    pub module: PathBuf,
    /// Its environment (`cwasi.io/embed.<peer>.env`).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Directories of the container it reads (`cwasi.io/embed.<peer>.dirs`),
    /// always read-only.
    #[serde(default)]
    pub preopens: Vec<Preopen>,
}

/// A host directory visible to the guest under `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// Returned from its entry (0) or called `proc_exit(code)`.
    Exited(i32),
    /// Trapped; `memory_limit_hit` tells whether a denied memory growth preceded it.
    Trapped { message: String, memory_limit_hit: bool },
}

impl GuestExit {
    /// The container exit status that reports this ending to containerd.
    pub fn status(&self) -> i32 {
        match self {
            GuestExit::Exited(code) => *code & 0xff,
            GuestExit::Trapped { .. } => 1,
        }
    }
}
