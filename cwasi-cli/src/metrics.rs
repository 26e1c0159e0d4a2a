//! `cwasi metrics`: the figures in the Prometheus text format (0.0.4), once
//! or served over HTTP for a scraper.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use cwasi_comm::stats::{FunctionSnapshot, bucket_upper_ns, read_all};

/// Every `step`-th latency bucket is exported (powers of two of microseconds).
const BUCKET_STEP: usize = 2;

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The metrics of `snapshots` as Prometheus text.
pub fn render(snapshots: &[FunctionSnapshot]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (series, value) in samples {
            let _ = writeln!(out, "{series} {value}");
        }
    };
    let who = |s: &FunctionSnapshot| {
        [
            ("namespace", s.namespace.clone()),
            ("function", s.function.clone()),
            ("node", s.node.clone()),
            ("container", s.container.clone()),
        ]
    };
    let per_function = |name: &str, value: &dyn Fn(&FunctionSnapshot) -> u64| -> Vec<(String, String)> {
        snapshots
            .iter()
            .map(|s| {
                let who = who(s);
                let pairs: Vec<(&str, &str)> = who.iter().map(|(k, v)| (*k, v.as_str())).collect();
                (format!("{name}{}", labels(&pairs)), value(s).to_string())
            })
            .collect()
    };
    type Value = fn(&FunctionSnapshot) -> u64;
    let per_function_families: [(&str, &str, &str, Value); 5] = [
        ("cwasi_function_up", "gauge", "A function instance (guest process) running on this node.", |_| 1),
        ("cwasi_function_concurrency", "gauge", "Handler instances of the function's container.", |s| s.concurrency),
        ("cwasi_requests_served_total", "counter", "Requests the function took.", |s| s.served),
        ("cwasi_requests_failed_total", "counter", "Requests the function answered as failed.", |s| s.served_failed),
        ("cwasi_requests_in_flight", "gauge", "Requests being handled now.", |s| s.in_flight),
    ];
    for (name, kind, help, value) in per_function_families {
        family(name, kind, help, per_function(name, &value));
    }

    let mut calls = Vec::new();
    let mut errors = Vec::new();
    let mut sent = Vec::new();
    let mut received = Vec::new();
    let mut histogram = Vec::new();
    for s in snapshots {
        for call in &s.calls {
            let who = who(s);
            let mode = call.mode.unwrap_or("none");
            let mut pairs: Vec<(&str, &str)> = who.iter().map(|(k, v)| (*k, v.as_str())).collect();
            pairs.extend([("peer", call.peer.as_str()), ("mode", mode)]);
            let base = labels(&pairs);
            calls.push((format!("cwasi_calls_total{base}"), call.calls.to_string()));
            for (status, count) in &call.errors_by_status {
                let mut with_status = pairs.clone();
                with_status.push(("status", status));
                errors.push((format!("cwasi_call_errors_total{}", labels(&with_status)), count.to_string()));
            }
            sent.push((format!("cwasi_call_bytes_sent_total{base}"), call.bytes_out.to_string()));
            received.push((format!("cwasi_call_bytes_received_total{base}"), call.bytes_in.to_string()));
            let mut cumulative = 0;
            for (index, count) in call.buckets.iter().enumerate() {
                cumulative += count;
                let upper = bucket_upper_ns(index);
                if index % BUCKET_STEP == 0 && upper != u64::MAX {
                    let le = format!("{}", upper as f64 / 1e9);
                    let mut with_le = pairs.clone();
                    with_le.push(("le", &le));
                    histogram.push((
                        format!("cwasi_call_duration_seconds_bucket{}", labels(&with_le)),
                        cumulative.to_string(),
                    ));
                }
            }
            let mut with_inf = pairs.clone();
            with_inf.push(("le", "+Inf"));
            histogram
                .push((format!("cwasi_call_duration_seconds_bucket{}", labels(&with_inf)), cumulative.to_string()));
            histogram.push((
                format!("cwasi_call_duration_seconds_sum{base}"),
                format!("{}", call.latency_sum_ns as f64 / 1e9),
            ));
            histogram.push((format!("cwasi_call_duration_seconds_count{base}"), call.calls.to_string()));
        }
    }
    family(
        "cwasi_calls_total",
        "counter",
        "Calls to a peer by the mode the router chose (none: refused before one was chosen).",
        calls,
    );
    family("cwasi_call_errors_total", "counter", "Calls that ended with an error, by status.", errors);
    family("cwasi_call_bytes_sent_total", "counter", "Request bytes sent to a peer.", sent);
    family("cwasi_call_bytes_received_total", "counter", "Reply bytes received from a peer.", received);
    family("cwasi_call_duration_seconds", "histogram", "Time from a call's start to its reply (or error).", histogram);
    out
}

/// Serves `/metrics` at `address`, one connection at a time, until killed.
pub fn serve(run_dir: &Path, address: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
    eprintln!("cwasi: serving metrics at http://{}/metrics", listener.local_addr()?);
    for stream in listener.incoming() {
        // A scraper that misbehaves costs its own connection, nothing else.
        if let Ok(stream) = stream
            && let Err(e) = answer(run_dir, stream)
        {
            eprintln!("cwasi: a metrics request failed: {e:#}");
        }
    }
    Ok(())
}

fn answer(run_dir: &Path, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request_line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?).take(8192);
    reader.read_line(&mut request_line)?;
    // Headers up to the blank line (bounded by `take`).
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" => ("200 OK", render(&read_all(run_dir)?)),
        "/" => ("200 OK", "cwasi node metrics: /metrics\n".to_owned()),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\n")]), r#"{a="x\"y\\z\n"}"#);
    }

    #[test]
    fn no_functions_still_gives_every_family_header() {
        let text = render(&[]);
        assert!(text.contains("# TYPE cwasi_calls_total counter"));
        assert!(text.contains("# TYPE cwasi_call_duration_seconds histogram"));
        assert!(!text.lines().any(|l| !l.starts_with('#')), "{text}");
    }
}
