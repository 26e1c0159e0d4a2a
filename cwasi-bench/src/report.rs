//! The report: a Markdown table, a CSV file and a log-log SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use cwasi_testkit::human_latency as latency;
use plotters::prelude::*;

use crate::matrix::{Matrix, Row, human};
use crate::page_moves::PageMove;
use crate::rig::{BenchMode, CallTimings, Shape};
use crate::start_time::StartTimes;
use crate::topologies::TopologyRow;

pub struct Report {
    pub machine: String,
    pub quick: bool,
    pub matrix: Option<Matrix>,
    pub start: Option<StartTimes>,
    pub topologies: Option<Vec<TopologyRow>>,
}

/// One line of the plot: its name, colour and (payload, ms) points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Report {
    pub fn new(machine: String, quick: bool) -> Self {
        Self { machine, quick, matrix: None, start: None, topologies: None }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# cwasi benchmark{}\n", if self.quick { " (quick subset)" } else { "" });
        let _ = writeln!(md, "Machine: {}\n", self.machine);
        if let Some(matrix) = &self.matrix {
            let _ = writeln!(
                md,
                "Median and p99 of each operation: A hands the payload to B (sequential), to four functions at once \
                 and collects the four answers (fan-out 4), or gets it back (round trip). GB/s counts payload bytes \
                 moved; × memcpy is the median over a single-threaded memcpy of the same bytes; × redis is the median \
                 over redis-baseline (the same call forced through Redis on this node), all measured in this run.\n"
            );
            let _ = writeln!(md, "| mode | shape | payload | median | p99 | GB/s | × memcpy | × redis-baseline |");
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
            for row in &matrix.rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
                    row.mode.name(),
                    row.shape.name(),
                    human(row.payload),
                    latency(row.timings.median_ns),
                    latency(row.timings.p99_ns),
                    row.gbps(),
                    row.x_memcpy(),
                    row.x_redis_baseline().map_or("–".to_owned(), |x| format!("{x:.3}")),
                );
            }
            let _ = writeln!(
                md,
                "\nRemote mode (other node) against two references of the same bytes measured in this run, median (p99): \
                 a raw Redis SET+GET from one client (`redis` crate), and the broker floor, the least a round trip \
                 through a serving party on Redis can cost (one client RPUSHes to a list a second client BLPOPs, \
                 which RPUSHes it back to a list the first BLPOPs: the same four wake-ups as a remote call, the least \
                 Redis work):\n"
            );
            let _ = writeln!(md, "{}", remote_header(&[]));
            for raw in &matrix.raw_redis {
                let timings = |shape| find(matrix, BenchMode::Remote, shape, raw.payload).map(|r| r.timings);
                let references = References {
                    raw_median_ns: raw.median_ns,
                    raw_p99_ns: raw.p99_ns,
                    floor_median_ns: raw.floor_median_ns,
                    floor_p99_ns: raw.floor_p99_ns,
                };
                let cells = references.cells(timings(Shape::Sequential).as_ref(), timings(Shape::RoundTrip).as_ref());
                let _ = writeln!(md, "| {} | {cells} |", human(raw.payload));
            }
        }
        if let Some(rows) = &self.topologies {
            let _ = writeln!(
                md,
                "\nRemote mode by topology: both nodes on loopback with one Redis; each node in a network namespace and Redis in another (a bridge between them); a 3-master, 3-replica Redis Cluster; both. Beside a raw SET+GET and the broker floor of the same bytes from node A's network (a cluster client on the cluster, both lists of the floor on one hash tag), median (p99):\n"
            );
            let _ = writeln!(md, "{}", remote_header(&["topology"]));
            for row in rows {
                let references = References {
                    raw_median_ns: row.raw_median_ns,
                    raw_p99_ns: row.raw_p99_ns,
                    floor_median_ns: row.floor_median_ns,
                    floor_p99_ns: row.floor_p99_ns,
                };
                let cells = references.cells(Some(&row.sequential), row.round_trip.as_ref());
                let _ = writeln!(md, "| {} | {} | {cells} |", row.topology.name(), human(row.payload));
            }
        }
        if let Some(matrix) = &self.matrix {
            page_moves_markdown(&mut md, &matrix.page_moves);
        }
        if let Some(matrix) = &self.matrix
            && let Some(local) = find(matrix, BenchMode::Local, Shape::RoundTrip, 1 << 10)
        {
            let share = 100.0 * matrix.stats_cost_ns as f64 / local.timings.median_ns as f64;
            let _ = writeln!(
                md,
                "\nPer-call bookkeeping, counters for the node tool (`cwasi calls`) and the trace context: {} ns per call (two clock reads, the atomic adds, a span id), {share:.1} % of the local 1 KiB round trip ({}) in this run.",
                matrix.stats_cost_ns,
                latency(local.timings.median_ns)
            );
        }
        if let Some(start) = &self.start {
            let _ = writeln!(
                md,
                "\nContainer start, `ctr run --rm` of hello to its exit, median of {} runs:\n",
                start.runs
            );
            let _ = writeln!(md, "| shim | median |");
            let _ = writeln!(md, "|---|---|");
            let _ =
                writeln!(md, "| cwasi, module compiled at start (empty cache) | {:.1} ms |", start.cwasi_compiling_ms);
            let _ = writeln!(md, "| cwasi, module from the cache | {:.1} ms |", start.cwasi_cached_ms);
            match start.runwasi_ms {
                Some(runwasi) => {
                    let _ = writeln!(md, "| stock runwasi (containerd-shim-wasm 1.x + wasmtime) | {runwasi:.1} ms |");
                    let _ = writeln!(md, "\ncwasi cached / runwasi: {:.2}", start.cwasi_cached_ms / runwasi);
                }
                None => {
                    let _ = writeln!(md, "| stock runwasi | not built (run `make bench`) |");
                }
            }
        }
        md
    }

    fn csv(&self) -> String {
        let mut csv =
            String::from("mode,shape,payload_bytes,samples,median_ns,p99_ns,gb_per_s,x_memcpy,x_redis_baseline\n");
        for row in self.matrix.iter().flat_map(|m| &m.rows) {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{:.4},{:.4},{}",
                row.mode.name(),
                row.shape.name(),
                row.payload,
                row.timings.samples,
                row.timings.median_ns,
                row.timings.p99_ns,
                row.gbps(),
                row.x_memcpy(),
                row.x_redis_baseline().map_or(String::new(), |x| format!("{x:.4}"))
            );
        }
        for raw in self.matrix.iter().flat_map(|m| &m.raw_redis) {
            let _ = writeln!(csv, "raw-redis-set-get,sequential,{},,{},{},,,", raw.payload, raw.median_ns, raw.p99_ns);
            let _ = writeln!(
                csv,
                "redis-broker-floor,round trip,{},,{},{},,,",
                raw.payload, raw.floor_median_ns, raw.floor_p99_ns
            );
        }
        if let Some(start) = &self.start {
            let _ = writeln!(
                csv,
                "start-cwasi-compiling,start,,{},{},,,,",
                start.runs,
                (start.cwasi_compiling_ms * 1e6) as u64
            );
            let _ =
                writeln!(csv, "start-cwasi-cached,start,,{},{},,,,", start.runs, (start.cwasi_cached_ms * 1e6) as u64);
            if let Some(runwasi) = start.runwasi_ms {
                let _ = writeln!(csv, "start-runwasi,start,,{},{},,,,", start.runs, (runwasi * 1e6) as u64);
            }
        }
        csv
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.csv"), self.csv())?;
        if let Some(matrix) = &self.matrix {
            plot(matrix, &dir.join("report.svg")).context("drawing report.svg")?;
        }
        Ok(())
    }
}

/// The columns of the remote-mode tables from the payload on.
const REMOTE_COLUMNS: [&str; 8] = [
    "payload",
    "remote sequential",
    "remote round trip",
    "raw SET+GET",
    "broker floor",
    "sequential / raw",
    "round trip / raw",
    "round trip / floor",
];

/// A remote-mode table's header: `leading` columns, then [`REMOTE_COLUMNS`].
fn remote_header(leading: &[&str]) -> String {
    let columns: Vec<&str> = leading.iter().copied().chain(REMOTE_COLUMNS).collect();
    format!("| {} |\n|{}", columns.join(" | "), "---|".repeat(columns.len()))
}

/// The references a remote row is set against.
struct References {
    raw_median_ns: u64,
    raw_p99_ns: u64,
    floor_median_ns: u64,
    floor_p99_ns: u64,
}

impl References {
    /// The cells from "remote sequential" to "round trip / floor".
    fn cells(&self, sequential: Option<&CallTimings>, round_trip: Option<&CallTimings>) -> String {
        let timed = |median: u64, p99: u64| format!("{} ({})", latency(median), latency(p99));
        let cell = |t: Option<&CallTimings>| t.map_or("–".to_owned(), |t| timed(t.median_ns, t.p99_ns));
        let ratio = |t: Option<&CallTimings>, reference: u64| {
            t.map_or("–".to_owned(), |t| format!("{:.2}", t.median_ns as f64 / reference.max(1) as f64))
        };
        format!(
            "{} | {} | {} | {} | {} | {} | {}",
            cell(sequential),
            cell(round_trip),
            timed(self.raw_median_ns, self.raw_p99_ns),
            timed(self.floor_median_ns, self.floor_p99_ns),
            ratio(sequential, self.raw_median_ns),
            ratio(round_trip, self.raw_median_ns),
            ratio(round_trip, self.floor_median_ns),
        )
    }
}

fn find(matrix: &Matrix, mode: BenchMode, shape: Shape, payload: usize) -> Option<&Row> {
    matrix.rows.iter().find(|r| r.mode == mode && r.shape == shape && r.payload == payload)
}

/// Log-log latency against payload, one line per mode, one panel per shape.
fn plot(matrix: &Matrix, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let colors = [
        RGBColor(0x1b, 0x9e, 0x77),
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0x75, 0x70, 0xb3),
        RGBColor(0xe7, 0x29, 0x8a),
    ];
    for (panel, shape) in panels.iter().zip([Shape::Sequential, Shape::FanOut4]) {
        let rows: Vec<&Row> = matrix.rows.iter().filter(|r| r.shape == shape).collect();
        if rows.is_empty() {
            continue;
        }
        let x_min = rows.iter().map(|r| r.payload).min().unwrap_or(1) as f64 / 1.5;
        let x_max = rows.iter().map(|r| r.payload).max().unwrap_or(1) as f64 * 1.5;
        let y_values = rows.iter().flat_map(|r| [ms(r.timings.median_ns), ms(r.memcpy_ns)]);
        let (y_min, y_max) = y_values.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let mut payloads: Vec<f64> = rows.iter().map(|r| r.payload as f64).collect();
        payloads.sort_by(f64::total_cmp);
        payloads.dedup();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{}: median latency vs payload", shape.name()), ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_min..x_max).log_scale().with_key_points(payloads),
                (y_min.max(1e-6) / 2.0..y_max * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("payload (bytes)")
            .y_desc("median latency")
            .x_label_formatter(&|x| human(*x as usize))
            .y_label_formatter(&|y| latency((y * 1e6) as u64))
            .draw()?;
        let mut series: Vec<Series> = BenchMode::ALL
            .iter()
            .zip(colors)
            .map(|(mode, color)| {
                let points = rows
                    .iter()
                    .filter(|r| r.mode == *mode)
                    .map(|r| (r.payload as f64, ms(r.timings.median_ns)))
                    .collect();
                (mode.name().to_owned(), color, points)
            })
            .collect();
        let mut memcpy: Vec<(f64, f64)> = rows.iter().map(|r| (r.payload as f64, ms(r.memcpy_ns))).collect();
        memcpy.sort_by(|a, b| a.0.total_cmp(&b.0));
        memcpy.dedup_by(|a, b| a.0 == b.0);
        series.push(("memcpy".to_owned(), RGBColor(0, 0, 0), memcpy));
        for (name, color, points) in series {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The table of moving pages against copying, and where moving pays.
fn page_moves_markdown(md: &mut String, rows: &[PageMove]) {
    let _ = writeln!(
        md,
        "\nMoving pages against copying in one process (what embedded mode does with a given payload), median: \
         the move (to a buffer holding an earlier payload's pages, as a reused receive buffer does), a copy between \
         resident buffers, and the giver writing its buffer again afterwards (fresh zero pages fault in) against \
         the same write to resident memory. cwasi moves from {} of whole pages.\n",
        human(cwasi_comm::pages::MOVE_AT_LEAST)
    );
    let _ = writeln!(md, "| bytes | move | copy | move / copy | giver's rewrite after a move | rewrite, resident |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {} | {} |",
            human(row.bytes),
            latency(row.move_ns),
            latency(row.copy_ns),
            row.x_copy(),
            latency(row.refill_ns),
            latency(row.rewrite_ns)
        );
    }
    if let Some(first) = rows.iter().find(|r| r.move_ns < r.copy_ns) {
        let _ = writeln!(md, "\nMoving beat copying from {} on in this run.", human(first.bytes));
    }
}
