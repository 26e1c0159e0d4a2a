//! The reading side: what the node tool sees of every live function on a
//! node, read from the stats files without asking the functions.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use cwasi_abi::Status;
use memmap2::Mmap;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use super::layout::{self, BUCKETS, FILE_LEN, Header, SLOTS, STATUSES, Slot};

/// One live function instance (a guest process).
#[derive(Debug, Clone, Serialize)]
pub struct FunctionSnapshot {
    pub namespace: String,
    pub function: String,
    pub node: String,
    pub container: String,
    pub pid: u64,
    pub started_unix_ms: u64,
    pub serving: bool,
    pub concurrency: u64,
    /// Requests taken, answered with a reply, answered as failed, in hand.
    pub served: u64,
    pub served_ok: u64,
    pub served_failed: u64,
    pub in_flight: u64,
    pub served_bytes_in: u64,
    pub served_bytes_out: u64,
    /// Calls to more (peer, mode) pairs than the file has slots for.
    pub unslotted_calls: u64,
    pub calls: Vec<CallSnapshot>,
}

/// The calls of one function to one peer by one mode.
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    pub peer: String,
    /// `embedded`, `local`, `remote`; `None` for calls refused before a
    /// mode was chosen (forbidden, unknown peer).
    pub mode: Option<&'static str>,
    pub calls: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<&'static str, u64>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub latency_sum_ns: u64,
    /// Counts per latency bucket (`layout::bucket_upper_ns` gives bounds).
    pub buckets: Vec<u64>,
}

impl CallSnapshot {
    /// The upper bound of the bucket holding quantile `q` (0..=1) of the
    /// latencies; `None` without calls.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(layout::bucket_upper_ns(index));
            }
        }
        None
    }
}

fn mode_name(code: u64) -> Option<&'static str> {
    match code {
        0 => Some("embedded"),
        1 => Some("local"),
        2 => Some("remote"),
        _ => None,
    }
}

/// Every live function's stats under `<run dir>/stats/`, sorted by
/// namespace, function and container. Files whose writer died are skipped.
pub fn read_all(run_dir: &Path) -> io::Result<Vec<FunctionSnapshot>> {
    let root = run_dir.join("stats");
    let mut snapshots = Vec::new();
    let nodes = match std::fs::read_dir(&root) {
        Ok(nodes) => nodes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(snapshots),
        Err(e) => return Err(e),
    };
    for node in nodes.flatten() {
        let Ok(files) = std::fs::read_dir(node.path()) else { continue };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "stats")
                && let Some(snapshot) = read_file(&path)?
            {
                snapshots.push(snapshot);
            }
        }
    }
    snapshots.sort_by(|a, b| (&a.namespace, &a.function, &a.container).cmp(&(&b.namespace, &b.function, &b.container)));
    Ok(snapshots)
}

/// One file; `None` when its writer died or it is not a stats file.
pub fn read_file(path: &Path) -> io::Result<Option<FunctionSnapshot>> {
    let file = match File::open(path) {
        Ok(file) => file,
        // Removed since the directory was listed: that function stopped.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() != FILE_LEN as u64 {
        return Ok(None);
    }
    // The writer holds an exclusive lock for its life: a lock we can take
    // means it died.
    let file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_stale) => return Ok(None),
        Err((file, _held)) => file,
    };
    // SAFETY: a read-only map of a FILE_LEN file; its writer only changes
    // atomics (and unpublished slots), which we read through atomic loads.
    let map = unsafe { Mmap::map(&file)? };
    // SAFETY: the map is FILE_LEN long and page aligned; Header is plain
    // integers and atomics, valid for any bytes.
    let header = unsafe { &*(map.as_ptr() as *const Header) };
    if header.magic != layout::MAGIC {
        return Ok(None);
    }
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    // Ordering: Acquire pairs with the writer's Release store that published
    // each slot's name and mode.
    let used = (header.slots_used.load(Ordering::Acquire) as usize).min(SLOTS);
    let calls = (0..used)
        .map(|index| {
            // SAFETY: index < SLOTS: inside the map, 8-byte aligned; a
            // published slot's plain fields are no longer written.
            let slot = unsafe { &*(map.as_ptr().add(layout::slot_offset(index)) as *const Slot) };
            let errors_by_status = (1..STATUSES)
                .filter_map(|index| {
                    let count = load(&slot.errors_by_status[index]);
                    let status = Status::from_code(-(index as i32))?;
                    (count > 0).then_some((status.name(), count))
                })
                .collect();
            CallSnapshot {
                peer: layout::name(&slot.peer),
                mode: mode_name(slot.mode),
                calls: load(&slot.calls),
                errors: load(&slot.errors),
                errors_by_status,
                bytes_out: load(&slot.bytes_out),
                bytes_in: load(&slot.bytes_in),
                latency_sum_ns: load(&slot.latency_sum_ns),
                buckets: (0..BUCKETS).map(|b| load(&slot.buckets[b])).collect(),
            }
        })
        .collect();
    Ok(Some(FunctionSnapshot {
        namespace: layout::name(&header.namespace),
        function: layout::name(&header.function),
        node: layout::name(&header.node),
        container: layout::name(&header.container),
        pid: header.pid,
        started_unix_ms: header.started_unix_ms,
        serving: header.serving != 0,
        concurrency: header.concurrency,
        served: load(&header.served),
        served_ok: load(&header.served_ok),
        served_failed: load(&header.served_failed),
        in_flight: load(&header.in_flight),
        served_bytes_in: load(&header.served_bytes_in),
        served_bytes_out: load(&header.served_bytes_out),
        unslotted_calls: load(&header.unslotted_calls),
        calls,
    }))
}
