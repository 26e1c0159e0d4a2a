//! The writing side: one guest process counts its calls and the requests it
//! serves in its stats file, with relaxed atomic adds only.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cwasi_abi::Status;
use memmap2::MmapMut;
use nix::fcntl::{Flock, FlockArg};

use super::layout::{self, FILE_LEN, Header, SLOTS, STATUSES, Slot};
use crate::{FunctionConfig, Mode};

/// What the node tool shows about the process writing the file.
pub struct Identity<'a> {
    pub function: &'a FunctionConfig,
    pub container: &'a str,
    pub concurrency: u32,
}

/// The stats file of this process: counters that the node tool reads
/// without asking the function. Removed when dropped; a file whose writer
/// died is recognised by its free lock.
pub struct FunctionStats {
    path: PathBuf,
    /// Start of `map`, taken once from the owned map: every access derives from it.
    base: *mut u8,
    _map: MmapMut,
    /// Slots used so far: per peer, one per mode code (0..=2, 3 for none);
    /// slots are only written under this lock.
    slots: Mutex<HashMap<String, [Option<usize>; 4]>>,
    /// Held for the file's life: a reader that can take it finds a stale file.
    _lock: Flock<File>,
}

/// Where a node's stats files live: `<run dir>/stats/<node>/`.
pub fn stats_dir(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join("stats").join(node)
}

/// Where one peer's calls by one mode are counted (`None`: past the slots).
#[derive(Debug, Clone, Copy)]
pub struct CallCounter(Option<usize>);

/// One guest's memo of its last counter: a guest calling the same peer
/// again (a loop, a handler's one onward call) finds it without the shared
/// lock and map of [`FunctionStats::counter`].
#[derive(Default)]
pub struct LastCounter(Option<(Box<str>, Option<Mode>, CallCounter)>);

impl LastCounter {
    pub fn get(&mut self, stats: &FunctionStats, peer: &str, mode: Option<Mode>) -> CallCounter {
        match &self.0 {
            Some((last, last_mode, counter)) if **last == *peer && *last_mode == mode => *counter,
            _ => {
                let counter = stats.counter(peer, mode);
                self.0 = Some((peer.into(), mode, counter));
                counter
            }
        }
    }
}

fn mode_index(mode: Option<Mode>) -> usize {
    match mode {
        Some(Mode::Embedded) => 0,
        Some(Mode::Local) => 1,
        Some(Mode::Remote) => 2,
        None => 3,
    }
}

impl FunctionStats {
    /// Creates this process's file in `dir` (complete before it appears).
    pub fn create(dir: &Path, who: &Identity) -> io::Result<Self> {
        // Like the registry: only root (the shims, the node tool) looks.
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let pid = std::process::id();
        let name = format!("{}-{pid}.stats", sanitize(who.container));
        let (path, staging) = (dir.join(&name), dir.join(format!(".{name}.new")));
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&staging)?;
        file.write_all(&vec![0u8; FILE_LEN])?;
        // SAFETY: the file is ours, just sized to FILE_LEN, and only this
        // process writes it; readers only load atomics from it.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        {
            // SAFETY: the map is FILE_LEN ≥ size_of::<Header>() bytes, page
            // aligned, zeroed (a valid Header: integers and atomics), and not
            // shared with anyone yet.
            let header = unsafe { &mut *(map.as_mut_ptr() as *mut Header) };
            header.magic = layout::MAGIC;
            header.pid = u64::from(pid);
            header.started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            header.concurrency = u64::from(who.concurrency);
            header.serving = u64::from(who.function.serve);
            layout::put_name(&mut header.namespace, &who.function.namespace);
            layout::put_name(&mut header.function, &who.function.name);
            layout::put_name(&mut header.node, &who.function.node);
            layout::put_name(&mut header.container, who.container);
        }
        map.flush()?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| io::Error::from(errno))?;
        fs::rename(&staging, &path)?;
        let base = map.as_mut_ptr();
        Ok(Self { path, base, _map: map, slots: Mutex::new(HashMap::new()), _lock: lock })
    }

    fn header(&self) -> &Header {
        // SAFETY: the map holds a Header at offset 0 (see `create`), lives
        // as long as self, and shared access only goes through its atomics.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot_ptr(&self, index: usize) -> *mut Slot {
        debug_assert!(index < SLOTS);
        // SAFETY: index < SLOTS, so the slot lies inside the FILE_LEN map;
        // slots are 8-byte aligned (the header's size is a multiple of 8).
        unsafe { self.base.add(layout::slot_offset(index)) as *mut Slot }
    }

    fn slot(&self, index: usize) -> &Slot {
        // SAFETY: see `slot_ptr`; shared access only goes through atomics.
        unsafe { &*self.slot_ptr(index) }
    }

    /// The counter of `peer`'s calls by `mode`, taking a free slot the
    /// first time (no allocation after that).
    pub fn counter(&self, peer: &str, mode: Option<Mode>) -> CallCounter {
        let index = mode_index(mode);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slots.get(peer).and_then(|modes| modes[index]) {
            return CallCounter(Some(found));
        }
        let used: usize = slots.values().map(|modes| modes.iter().flatten().count()).sum();
        if used >= SLOTS {
            return CallCounter(None);
        }
        let slot_ptr = self.slot_ptr(used);
        // SAFETY: slot `used` is not published yet (slots_used == used), so
        // no reader looks at it, no reference to it exists, and no other
        // writer holds it (the lock).
        unsafe {
            layout::put_name(&mut (*slot_ptr).peer, peer);
            (*slot_ptr).mode = if index == 3 { u64::MAX } else { index as u64 };
        }
        slots.entry(peer.to_owned()).or_default()[index] = Some(used);
        // Ordering: Release publishes the name and mode; the reader's Acquire
        // load of slots_used pairs with it.
        self.header().slots_used.store(used as u64 + 1, Ordering::Release);
        CallCounter(Some(used))
    }

    /// One call that ended: its status, bytes each way and how long it took.
    pub fn record_call(
        &self,
        counter: CallCounter,
        status: Status,
        bytes_out: usize,
        bytes_in: usize,
        elapsed: Duration,
    ) {
        let Some(index) = counter.0 else {
            self.header().unslotted_calls.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let slot = self.slot(index);
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if status != Status::Ok {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            let index = (-(status as i32)) as usize;
            slot.errors_by_status[index.min(STATUSES - 1)].fetch_add(1, Ordering::Relaxed);
        }
        slot.bytes_out.fetch_add(bytes_out as u64, Ordering::Relaxed);
        slot.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        let nanos = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        slot.latency_sum_ns.fetch_add(nanos, Ordering::Relaxed);
        slot.buckets[layout::bucket(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// A request taken for a handler.
    pub fn request_taken(&self, bytes_in: u64) {
        let header = self.header();
        header.served.fetch_add(1, Ordering::Relaxed);
        header.in_flight.fetch_add(1, Ordering::Relaxed);
        header.served_bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    }

    /// A request answered (`ok`: with a reply, else as failed).
    pub fn request_answered(&self, ok: bool, bytes_out: u64) {
        let header = self.header();
        header.in_flight.fetch_sub(1, Ordering::Relaxed);
        if ok {
            header.served_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            header.served_failed.fetch_add(1, Ordering::Relaxed);
        }
        header.served_bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }
}

// SAFETY: `base` points into the map this value owns; all shared access
// goes through atomics, and the one plain write (a new slot's name) happens
// under the `slots` lock before the slot is published.
unsafe impl Send for FunctionStats {}
// SAFETY: as for Send.
unsafe impl Sync for FunctionStats {}

impl Drop for FunctionStats {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A container id as a file name: path separators and dots at the start
/// cannot reach outside the directory.
fn sanitize(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') { c } else { '_' }).collect();
    if cleaned.is_empty() { "container".to_owned() } else { cleaned }
}
