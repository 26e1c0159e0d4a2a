//! Moving pages against copying bytes within one process, by size: what
//! embedded mode does with a given payload, where moving starts to pay
//! (`cwasi_comm::pages::MOVE_AT_LEAST`), and what a giver pays when it
//! writes its buffer again (fresh zero pages fault in).

use std::time::Instant;

use anyhow::Context;
use cwasi_comm::pages;

const TWO_MIB: usize = 2 << 20;

/// Medians of one size.
#[derive(Debug, Clone)]
pub struct PageMove {
    pub bytes: usize,
    /// Handing the bytes over by moving their pages (to a buffer that holds
    /// pages of an earlier payload, as a reused receive buffer does).
    pub move_ns: u64,
    /// Copying them between resident buffers.
    pub copy_ns: u64,
    /// The giver writing its buffer again after a move.
    pub refill_ns: u64,
    /// The same write to a resident buffer.
    pub rewrite_ns: u64,
}

impl PageMove {
    pub fn x_copy(&self) -> f64 {
        self.move_ns as f64 / self.copy_ns.max(1) as f64
    }
}

/// `len` bytes of private anonymous memory starting on a 2 MiB boundary,
/// as the SDK's large `PageBuf`s do; never unmapped (a few, for the run).
fn region(len: usize) -> anyhow::Result<*mut u8> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a new mapping, placed by the kernel.
    let at =
        unsafe { libc::mmap(std::ptr::null_mut(), len + TWO_MIB, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mapping a page-move buffer");
    }
    Ok((at as usize).next_multiple_of(TWO_MIB) as *mut u8)
}

fn timed(f: impl FnOnce()) -> u64 {
    let started = Instant::now();
    f();
    started.elapsed().as_nanos() as u64
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Measures each of `sizes` `runs` times.
pub fn measure(sizes: &[usize], runs: usize) -> anyhow::Result<Vec<PageMove>> {
    sizes
        .iter()
        .map(|&bytes| {
            let (giver, receiver) = (region(bytes)?, region(bytes)?);
            let (mut moves, mut copies, mut refills, mut rewrites) = (vec![], vec![], vec![], vec![]);
            // SAFETY (every block below): both regions are this function's
            // own private mappings of `bytes` bytes, touched by nothing else.
            unsafe { std::ptr::write_bytes(receiver, 1, bytes) };
            for _ in 0..runs.max(1) {
                unsafe { std::ptr::write_bytes(giver, 7, bytes) };
                let mut done = Ok(pages::HandedOver::default());
                moves.push(timed(|| done = unsafe { pages::hand_over_from(giver, receiver, bytes, 0) }));
                let moved = done.context("moving pages")?.moved;
                anyhow::ensure!(moved == bytes, "{moved} of {bytes} bytes moved: the table would time copies");
                refills.push(timed(|| unsafe { std::ptr::write_bytes(giver, 8, bytes) }));
                rewrites.push(timed(|| unsafe { std::ptr::write_bytes(giver, 9, bytes) }));
                copies.push(timed(|| unsafe { std::ptr::copy_nonoverlapping(giver, receiver, bytes) }));
            }
            Ok(PageMove {
                bytes,
                move_ns: median(moves),
                copy_ns: median(copies),
                refill_ns: median(refills),
                rewrite_ns: median(rewrites),
            })
        })
        .collect()
}
