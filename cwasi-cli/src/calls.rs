//! `cwasi calls`: who calls whom on this node, by which mode, how it goes.

use std::collections::BTreeMap;
use std::path::Path;

use cwasi_comm::stats::{CallSnapshot, FunctionSnapshot, read_all};
use serde::Serialize;

use crate::text;

/// The calls of one function (all its containers on this node) to one peer by one mode.
#[derive(Serialize)]
pub struct Row {
    pub namespace: String,
    pub caller: String,
    pub peer: String,
    pub mode: String,
    pub calls: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

/// Rows summed over the containers of each function.
pub fn rows(snapshots: &[FunctionSnapshot]) -> Vec<Row> {
    let mut merged: BTreeMap<(String, String, String, String), CallSnapshot> = BTreeMap::new();
    for snapshot in snapshots {
        for call in &snapshot.calls {
            let mode = call.mode.unwrap_or("none").to_owned();
            let key = (snapshot.namespace.clone(), snapshot.function.clone(), call.peer.clone(), mode);
            match merged.get_mut(&key) {
                None => {
                    merged.insert(key, call.clone());
                }
                Some(sum) => {
                    sum.calls += call.calls;
                    sum.errors += call.errors;
                    sum.bytes_out += call.bytes_out;
                    sum.bytes_in += call.bytes_in;
                    sum.latency_sum_ns += call.latency_sum_ns;
                    for (status, count) in &call.errors_by_status {
                        *sum.errors_by_status.entry(*status).or_default() += count;
                    }
                    for (bucket, count) in sum.buckets.iter_mut().zip(&call.buckets) {
                        *bucket += count;
                    }
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|((namespace, caller, peer, mode), call)| Row {
            namespace,
            caller,
            peer,
            mode,
            calls: call.calls,
            errors: call.errors,
            errors_by_status: call.errors_by_status.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            bytes_out: call.bytes_out,
            bytes_in: call.bytes_in,
            p50_ns: call.quantile_ns(0.5),
            p99_ns: call.quantile_ns(0.99),
        })
        .collect()
}

pub fn show(run_dir: &Path, json: bool) -> anyhow::Result<()> {
    let rows = rows(&read_all(run_dir)?);
    let header = ["NAMESPACE", "CALL", "MODE", "CALLS", "ERRORS", "P50 ≤", "P99 ≤"];
    text::print(&rows, json, &header, |r| {
        let errors = if r.errors_by_status.is_empty() {
            r.errors.to_string()
        } else {
            let by: Vec<String> = r.errors_by_status.iter().map(|(s, n)| format!("{s}:{n}")).collect();
            format!("{} ({})", r.errors, by.join(" "))
        };
        vec![
            r.namespace.clone(),
            format!("{} -> {}", r.caller, r.peer),
            r.mode.clone(),
            r.calls.to_string(),
            errors,
            text::latency(r.p50_ns),
            text::latency(r.p99_ns),
        ]
    })
}
