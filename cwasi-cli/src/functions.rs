//! `cwasi functions`: the function instances running on this node.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cwasi_comm::stats::{FunctionSnapshot, read_all};
use serde::Serialize;

use crate::text;

#[derive(Serialize)]
struct Row<'a> {
    namespace: &'a str,
    function: &'a str,
    node: &'a str,
    container: &'a str,
    pid: u64,
    uptime_seconds: u64,
    serving: bool,
    served: u64,
    failed: u64,
    in_flight: u64,
    concurrency: u64,
}

fn row(snapshot: &FunctionSnapshot, now_ms: u64) -> Row<'_> {
    Row {
        namespace: &snapshot.namespace,
        function: &snapshot.function,
        node: &snapshot.node,
        container: &snapshot.container,
        pid: snapshot.pid,
        uptime_seconds: now_ms.saturating_sub(snapshot.started_unix_ms) / 1000,
        serving: snapshot.serving,
        served: snapshot.served,
        failed: snapshot.served_failed,
        in_flight: snapshot.in_flight,
        concurrency: snapshot.concurrency,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn show(run_dir: &Path, json: bool) -> anyhow::Result<()> {
    let snapshots = read_all(run_dir)?;
    let now = now_ms();
    let rows: Vec<Row> = snapshots.iter().map(|s| row(s, now)).collect();
    let header = ["NAMESPACE", "FUNCTION", "CONTAINER", "PID", "UPTIME", "SERVED", "FAILED", "IN USE"];
    text::print(&rows, json, &header, |r| {
        let serving = |figure: String| if r.serving { figure } else { "-".into() };
        vec![
            r.namespace.to_owned(),
            r.function.to_owned(),
            short_id(r.container),
            r.pid.to_string(),
            text::uptime(r.uptime_seconds),
            serving(r.served.to_string()),
            serving(r.failed.to_string()),
            serving(format!("{}/{}", r.in_flight, r.concurrency)),
        ]
    })
}

/// Container ids are long hashes under Kubernetes: the first 12 characters, as `crictl ps`.
fn short_id(id: &str) -> String {
    if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) { id[..12].to_owned() } else { id.to_owned() }
}
