//! The mode × payload × shape matrix of BENCH.md.

use crate::baseline;
use crate::page_moves::PageMove;
use crate::rig::{BenchMode, CallTimings, Rig, Shape};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Row {
    pub mode: BenchMode,
    pub shape: Shape,
    pub payload: usize,
    pub timings: CallTimings,
    pub memcpy_ns: u64,
    /// The redis-baseline median of the same payload and shape.
    pub redis_baseline_ns: Option<u64>,
}

impl Row {
    pub fn gbps(&self) -> f64 {
        self.shape.bytes_moved(self.payload) as f64 / self.timings.median_ns as f64
    }

    pub fn x_memcpy(&self) -> f64 {
        self.timings.median_ns as f64 / self.memcpy_ns.max(1) as f64
    }

    pub fn x_redis_baseline(&self) -> Option<f64> {
        self.redis_baseline_ns.map(|b| self.timings.median_ns as f64 / b as f64)
    }
}

/// A raw `SET`+`GET` of the payload with the `redis` crate, and the broker
/// floor of the same bytes ([`baseline::broker_floor_ns`]).
#[derive(Debug, Clone)]
pub struct RawRedis {
    pub payload: usize,
    pub median_ns: u64,
    pub p99_ns: u64,
    pub floor_median_ns: u64,
    pub floor_p99_ns: u64,
}

pub struct Matrix {
    pub rows: Vec<Row>,
    pub raw_redis: Vec<RawRedis>,
    /// What counting one call for the node tool costs (ns).
    pub stats_cost_ns: u64,
    /// Moving pages against copying, in one process, by size.
    pub page_moves: Vec<PageMove>,
}

fn iterations(payload: usize, quick: bool) -> (usize, f64) {
    let n = match payload {
        p if p <= KIB => 2000,
        p if p <= 64 * KIB => 500,
        p if p <= MIB => 100,
        p if p <= 10 * MIB => 20,
        _ => 8,
    };
    // At least 3 measured calls: a quick run of 100 MiB still measures.
    if quick { ((n / 10).max(3), 1.0) } else { (n, 8.0) }
}

/// `payloads` overrides the sizes (bytes); by default all of BENCH.md's, or
/// 1 KiB and 1 MiB when `quick`.
pub fn run(quick: bool, payloads: Option<Vec<usize>>) -> anyhow::Result<Matrix> {
    let default: &[usize] = if quick { &[KIB, MIB] } else { &[KIB, 64 * KIB, MIB, 10 * MIB, 100 * MIB] };
    let payloads: &[usize] = payloads.as_deref().unwrap_or(default);
    eprintln!("starting the rig: Redis, two containerd nodes, {} serving functions", 2 * crate::rig::SERVERS.len());
    let rig = Rig::start()?;
    let mut cells: Vec<(BenchMode, Shape, usize)> = Vec::new();
    for shape in [Shape::Sequential, Shape::FanOut4, Shape::FanOut4ToOne] {
        for &payload in payloads {
            for mode in BenchMode::ALL {
                cells.push((mode, shape, payload));
            }
        }
    }
    // Given payloads move by pages in embedded and local mode.
    for &payload in payloads.iter().filter(|&&p| p >= MIB) {
        for mode in [BenchMode::Embedded, BenchMode::Local] {
            cells.push((mode, Shape::SequentialGiven, payload));
        }
    }
    for mode in BenchMode::ALL {
        cells.push((mode, Shape::RoundTrip, KIB));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (i, &(mode, shape, payload)) in cells.iter().enumerate() {
        eprint!("\r\x1b[K[{}/{}] {} {} {}", i + 1, cells.len(), mode.name(), shape.name(), human(payload));
        let (n, seconds) = iterations(payload, quick);
        let timings = rig.measure(mode, shape, payload, n, seconds)?;
        let memcpy_ns =
            baseline::memcpy_median_ns(shape.bytes_moved(payload), if payload >= 10 * MIB { 5 } else { 51 });
        rows.push(Row { mode, shape, payload, timings, memcpy_ns, redis_baseline_ns: None });
    }
    eprintln!();
    for i in 0..rows.len() {
        let (shape, payload) = (rows[i].shape, rows[i].payload);
        rows[i].redis_baseline_ns = rows
            .iter()
            .find(|r| r.mode == BenchMode::RedisBaseline && r.shape == shape && r.payload == payload)
            .map(|r| r.timings.median_ns);
    }
    let raw_redis = payloads
        .iter()
        .map(|&payload| {
            let runs = iterations(payload, quick).0.clamp(3, 200);
            let (median_ns, p99_ns) = baseline::redis_set_get_ns(&rig.redis_url(), payload, runs)?;
            let (floor_median_ns, floor_p99_ns) = baseline::broker_floor_ns(&rig.redis_url(), payload, runs)?;
            Ok(RawRedis { payload, median_ns, p99_ns, floor_median_ns, floor_p99_ns })
        })
        .collect::<anyhow::Result<_>>()?;
    let stats_cost_ns = baseline::stats_cost_ns()?;
    let page_moves = crate::page_moves::measure(
        &[256 * KIB, MIB, 2 * MIB, 4 * MIB, 16 * MIB, 100 * MIB],
        if quick { 5 } else { 11 },
    )?;
    Ok(Matrix { rows, raw_redis, stats_cost_ns, page_moves })
}

pub use cwasi_testkit::human_bytes as human;
