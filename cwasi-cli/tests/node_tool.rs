//! The node tool, the logs and the trace export against a real workflow:
//! three functions on two nodes (private containerd instances) and a real
//! Redis, calling each other by local, remote and embedded mode.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cwasi_testkit::{Node, RedisServer, test_image, test_image_with_peers, workspace_root};

const CWASI: &str = env!("CARGO_BIN_EXE_cwasi");

fn shim() -> PathBuf {
    let shim = workspace_root().join("target/release/containerd-shim-cwasi-v1");
    assert!(shim.exists(), "{} is missing: `make build` (or `make test`) builds it", shim.display());
    shim
}

fn cwasi(run_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(CWASI).args(args).arg("--run-dir").arg(run_dir).output().unwrap();
    assert!(out.status.success(), "cwasi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(run_dir: &Path, command: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&cwasi(run_dir, &[command, "--json"])).unwrap()
}

fn run_dir(node: &Node) -> PathBuf {
    node.containerd.dir().join("run")
}

/// The row of `rows` whose fields have these values.
fn find<'a>(rows: &'a [serde_json::Value], fields: &[(&str, &str)]) -> Option<&'a serde_json::Value> {
    rows.iter().find(|row| fields.iter().all(|(k, v)| row[k].as_str() == Some(v)))
}

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses the text format strictly enough to catch malformed output:
/// every sample belongs to a family announced by `# TYPE`, labels are
/// quoted with escapes, values are numbers.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = HashMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().unwrap_or_else(|| panic!("unterminated value: {line}")) {
                            '\\' => value.push(match chars.next().unwrap() {
                                'n' => '\n',
                                other => other,
                            }),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(families.iter().any(|f| f == &name || f == family), "no # TYPE for {name}");
        samples.push((name, labels, value));
    }
    samples
}

/// One log line as logfmt: `key=value` or `key="quoted \"value\""`, in order.
/// Panics on anything else, so that every line is held to the one format.
fn parse_logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad key in {line}");
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next().unwrap_or_else(|| panic!("unterminated value in {line}")) {
                    '\\' => value.push(chars.next().unwrap_or_else(|| panic!("dangling escape in {line}"))),
                    '"' => break,
                    c => value.push(c),
                }
            }
            assert!(matches!(chars.next(), None | Some(' ')), "junk after a quoted value in {line}");
        } else {
            value = chars.by_ref().take_while(|&c| c != ' ').collect();
            assert!(!value.is_empty() && !value.contains('"'), "bad bare value in {line}");
        }
        pairs.push((key, value));
    }
    pairs
}

/// The lines of both nodes' logs with these `msg`s, as maps; every line of
/// the logs, containerd's, the shims' and the guest processes', must be logfmt
/// that starts with `time`, `level` and `msg`.
fn logged(nodes: &[&Node], messages: &[&str]) -> Vec<HashMap<String, String>> {
    let mut found = Vec::new();
    for node in nodes {
        for line in node.containerd.log().lines().filter(|l| !l.trim().is_empty()) {
            let pairs = parse_logfmt(line);
            let keys: Vec<&str> = pairs.iter().take(3).map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["time", "level", "msg"], "{line}");
            let fields: HashMap<String, String> = pairs.into_iter().collect();
            if messages.contains(&fields["msg"].as_str()) {
                found.push(fields);
            }
        }
    }
    found
}

/// loader -(local)-> relay-a -(remote)-> relay-b -(embedded)-> echo: every
/// call of the loader starts a trace that the three hops' lines share: each
/// call's span is the parent of its serving's, which is the parent of the
/// next call's.
fn each_call_is_one_trace_across_three_hops(node_a: &Node, node_b: &Node, calls: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = logged(&[node_a, node_b], &["call", "served"]);
        let embedded = lines.iter().filter(|l| l.get("mode").map(String::as_str) == Some("embedded")).count();
        if embedded >= calls {
            break lines;
        }
        assert!(Instant::now() < deadline, "{embedded} of {calls} embedded hops logged: {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let field = |line: &HashMap<String, String>, key: &str| line.get(key).cloned().unwrap_or_default();
    let one = |function: &str, msg: &str, key: &str, value: &str| -> HashMap<String, String> {
        let matching: Vec<_> = lines
            .iter()
            .filter(|l| field(l, "function") == function && field(l, "msg") == msg && field(l, key) == value)
            .collect();
        assert_eq!(matching.len(), 1, "{function} {msg} with {key}={value}: {matching:#?}");
        matching[0].clone()
    };
    let starts: Vec<_> =
        lines.iter().filter(|l| field(l, "function") == "loader" && field(l, "msg") == "call").collect();
    assert_eq!(starts.len(), calls, "{starts:#?}");
    let mut traces = std::collections::HashSet::new();
    for start in starts {
        let (trace, span) = (field(start, "trace_id"), field(start, "span_id"));
        assert_eq!((trace.len(), span.len()), (32, 16), "{start:?}");
        assert_eq!((field(start, "peer").as_str(), field(start, "mode").as_str()), ("relay-a", "local"));
        assert!(start.get("parent_id").is_none(), "a workflow's first call starts its trace: {start:?}");
        assert!(traces.insert(trace.clone()), "a trace id used twice: {trace}");
        assert_eq!(field(start, "container"), "loader-1");

        let served_a = one("relay-a", "served", "parent_id", &span);
        assert_eq!((field(&served_a, "trace_id"), field(&served_a, "outcome").as_str()), (trace.clone(), "replied"));
        let onward = one("relay-a", "call", "parent_id", &field(&served_a, "span_id"));
        assert_eq!((field(&onward, "trace_id"), field(&onward, "mode").as_str()), (trace.clone(), "remote"));

        let served_b = one("relay-b", "served", "parent_id", &field(&onward, "span_id"));
        assert_eq!(field(&served_b, "trace_id"), trace);
        let inner = one("relay-b", "call", "parent_id", &field(&served_b, "span_id"));
        assert_eq!((field(&inner, "trace_id"), field(&inner, "peer").as_str()), (trace.clone(), "echo"));
        assert_eq!((field(&inner, "mode").as_str(), field(&inner, "status").as_str()), ("embedded", "ok"));
        assert_eq!(field(&inner, "container"), "relay-b");
    }
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

/// `GET /metrics` from a `cwasi metrics --listen` on a free port.
fn scrape(run_dir: &Path) -> String {
    let mut server = Command::new(CWASI)
        .args(["metrics", "--listen", "127.0.0.1:0", "--run-dir"])
        .arg(run_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.split("http://").nth(1).and_then(|a| a.split('/').next()).unwrap().to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// An OTLP/HTTP receiver on loopback: takes each POST's JSON body, answers
/// 200. (No OpenTelemetry collector is packaged for Debian: this one checks
/// the requests' shape strictly instead.)
struct Collector {
    url: String,
    /// Each request's JSON body, or what was wrong with the request.
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Result<serde_json::Value, String>>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; length];
                let read = reader.read_exact(&mut body).map_err(|e| e.to_string());
                let received = if !head.starts_with("POST /v1/traces HTTP/1.1\r\n")
                    || !head.to_ascii_lowercase().contains("content-type: application/json")
                {
                    Err(format!("not an OTLP/HTTP JSON request: {head}"))
                } else {
                    read.and_then(|()| serde_json::from_slice(&body).map_err(|e| format!("{e}: {body:?}")))
                };
                kept.lock().unwrap().push(received);
                let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        });
        Self { url, bodies }
    }

    /// Every span received, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, serde_json::Value)> {
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let body = body.as_ref().unwrap_or_else(|e| panic!("the collector got a bad request: {e}"));
            for resource_spans in body["resourceSpans"].as_array().unwrap() {
                let attributes = resource_spans["resource"]["attributes"].as_array().unwrap();
                let service = attributes.iter().find(|a| a["key"] == "service.name").unwrap();
                let service = service["value"]["stringValue"].as_str().unwrap().to_owned();
                for scope in resource_spans["scopeSpans"].as_array().unwrap() {
                    for span in scope["spans"].as_array().unwrap() {
                        let hex = |key: &str, len: usize| {
                            let id = span[key].as_str().unwrap_or_default();
                            id.len() == len && id.bytes().all(|b| b.is_ascii_hexdigit())
                        };
                        assert!(hex("traceId", 32) && hex("spanId", 16), "{span}");
                        let time = |key: &str| span[key].as_str().unwrap().parse::<u64>().unwrap();
                        assert!(time("startTimeUnixNano") <= time("endTimeUnixNano"), "{span}");
                        spans.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }
}

/// The same workflow as the collector saw it: six spans per call of the
/// loader, chained client → server → client → server → client → server
/// (the embedded echo serves like any function).
fn each_call_is_one_exported_trace(collector: &Collector, calls: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collector.spans();
        if spans.len() >= 6 * calls {
            break spans;
        }
        assert!(Instant::now() < deadline, "{} of {} spans exported", spans.len(), 6 * calls);
        std::thread::sleep(Duration::from_millis(200));
    };
    let child_of = |parent: &serde_json::Value, service: &str, name: &str| {
        let found: Vec<_> = spans
            .iter()
            .filter(|(s, span)| s == service && span["name"] == name && span["parentSpanId"] == parent["spanId"])
            .collect();
        assert_eq!(found.len(), 1, "{service} {name} under {parent}: {found:?}");
        assert_eq!(found[0].1["traceId"], parent["traceId"]);
        found[0].1.clone()
    };
    let roots: Vec<_> = spans.iter().filter(|(s, _)| s == "loader").collect();
    assert_eq!(roots.len(), calls, "{roots:?}");
    for (_, root) in roots {
        assert_eq!((root["name"].as_str(), root["kind"].as_i64()), (Some("call relay-a"), Some(3)));
        assert!(root.get("parentSpanId").is_none() && root.get("status").is_none(), "{root}");
        let served_a = child_of(root, "relay-a", "serve");
        assert_eq!(served_a["kind"].as_i64(), Some(2));
        let onward = child_of(&served_a, "relay-a", "call relay-b");
        let served_b = child_of(&onward, "relay-b", "serve");
        let inner = child_of(&served_b, "relay-b", "call echo");
        let mode = inner["attributes"].as_array().unwrap().iter().find(|a| a["key"] == "cwasi.mode").unwrap();
        assert_eq!(mode["value"]["stringValue"], "embedded");
        let served_echo = child_of(&inner, "relay-b", "serve");
        assert_eq!(served_echo["kind"].as_i64(), Some(2));
    }
}

#[test]
fn a_three_function_workflow_shows_in_functions_calls_metrics_logs_and_traces() {
    let shim = shim();
    let redis = RedisServer::start_with(false).unwrap();
    let collector = Collector::start();
    let otlp = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str())];
    let (relay, load) = (test_image("relay").unwrap(), test_image("call-load").unwrap());
    let relay_with_echo = test_image_with_peers("relay", &["echo-server"]).unwrap();
    let node_b = Node::start(&shim, "node-b", Some(&redis.url()), &otlp, &[&relay_with_echo]);
    node_b.serve(
        &relay_with_echo,
        "relay-b",
        &[
            "--annotation",
            "cwasi.io/peers=echo",
            "--annotation",
            "cwasi.io/embed=echo=/echo-server.wasm",
            "--annotation",
            "cwasi.io/log=debug",
        ],
    );
    let node_a = Node::start(&shim, "node-a", Some(&redis.url()), &otlp, &[&relay, &load]);
    node_a.serve(&relay, "relay-a", &["--annotation", "cwasi.io/peers=relay-b", "--annotation", "cwasi.io/log=debug"]);

    // loader -(local)-> relay-a -(remote)-> relay-b -(embedded)-> echo, 20 times.
    let loader = ["--rm", "--annotation", "cwasi.io/function=loader", "--annotation", "cwasi.io/peers=relay-a"];
    let traced = [&loader[..], &["--annotation", "cwasi.io/log=debug"]].concat();
    let out = node_a.run("loader-1", &load, &traced, &["/call-load.wasm", "--count", "20", "relay-a=relay-b,echo:hi"]);
    let out = out.unwrap().ok().unwrap();
    assert!(out.stdout.contains("summary ok=20 err=0"), "{}", out.stdout);
    assert!(out.stdout.contains("ok relay-a") && out.stdout.contains(":hi"), "{}", out.stdout);
    each_call_is_one_trace_across_three_hops(&node_a, &node_b, 20);
    each_call_is_one_exported_trace(&collector, 20);

    let (dir_a, dir_b) = (run_dir(&node_a), run_dir(&node_b));
    let functions_a = json(&dir_a, "functions");
    let relay_a = find(&functions_a, &[("function", "relay-a"), ("namespace", "cwasi-test")]).expect("relay-a listed");
    assert_eq!((relay_a["served"].as_u64(), relay_a["failed"].as_u64()), (Some(20), Some(0)), "{relay_a}");
    assert_eq!(relay_a["serving"].as_bool(), Some(true));
    // The loader ended: its file went with it.
    assert!(find(&functions_a, &[("function", "loader")]).is_none(), "{functions_a:?}");
    let calls_a = json(&dir_a, "calls");
    let onward = find(&calls_a, &[("caller", "relay-a"), ("peer", "relay-b")]).expect("relay-a -> relay-b");
    assert_eq!(
        (onward["mode"].as_str(), onward["calls"].as_u64(), onward["errors"].as_u64()),
        (Some("remote"), Some(20), Some(0))
    );
    assert!(onward["p50_ns"].as_u64().unwrap() <= onward["p99_ns"].as_u64().unwrap());
    let calls_b = json(&dir_b, "calls");
    let inner = find(&calls_b, &[("caller", "relay-b"), ("peer", "echo")]).expect("relay-b -> echo");
    assert_eq!((inner["mode"].as_str(), inner["calls"].as_u64()), (Some("embedded"), Some(20)));
    let functions_b = json(&dir_b, "functions");
    assert_eq!(find(&functions_b, &[("function", "relay-b")]).expect("relay-b listed")["served"].as_u64(), Some(20));

    // A caller still running shows its calls by mode too.
    let mut long = node_a.spawn(
        "loader-2",
        &load,
        &loader,
        &["/call-load.wasm", "--count", "100000", "--pause-ms", "5", "relay-a=relay-b,echo:hi", "nobody=x"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (local, refused) = loop {
        let calls = json(&dir_a, "calls");
        let local = find(&calls, &[("caller", "loader"), ("peer", "relay-a")]).cloned();
        let refused = find(&calls, &[("caller", "loader"), ("peer", "nobody")]).cloned();
        if let (Some(local), Some(refused)) = (&local, &refused)
            && local["calls"].as_u64() >= Some(5)
        {
            break (local.clone(), refused.clone());
        }
        assert!(Instant::now() < deadline, "no loader calls in {calls:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(local["mode"].as_str(), Some("local"));
    assert_eq!(refused["mode"].as_str(), Some("none"));
    // Without `cwasi.io/log: debug`, no line per call.
    let quiet = logged(&[&node_a], &["call"]);
    assert!(!quiet.iter().any(|l| l.get("container").map(String::as_str) == Some("loader-2")), "{quiet:#?}");
    assert!(refused["errors_by_status"]["forbidden"].as_u64() >= Some(1), "{refused}");
    let table = cwasi(&dir_a, &["calls"]);
    // Shown with --nocapture: what an operator sees.
    eprintln!("{}\n{table}", cwasi(&dir_a, &["functions"]));
    assert!(table.lines().next().unwrap().starts_with("NAMESPACE") && table.contains("loader -> relay-a"), "{table}");
    let _ = long.kill();
    let _ = long.wait();

    // Prometheus: the same figures, in a format a scraper parses.
    let samples = parse_prometheus(&scrape(&dir_a));
    let relay_labels = [("function", "relay-a"), ("peer", "relay-b"), ("mode", "remote")];
    assert!(sample(&samples, "cwasi_calls_total", &relay_labels).unwrap() >= 20.0);
    let count = sample(&samples, "cwasi_call_duration_seconds_count", &relay_labels).unwrap();
    let total = sample(&samples, "cwasi_calls_total", &relay_labels).unwrap();
    assert_eq!(count, total);
    let inf = [relay_labels.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(sample(&samples, "cwasi_call_duration_seconds_bucket", &inf), Some(total));
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == "cwasi_call_duration_seconds_bucket" && relay_labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "buckets must be cumulative: {buckets:?}");
    assert!(sample(&samples, "cwasi_requests_served_total", &[("function", "relay-a")]).unwrap() >= 20.0);
    assert_eq!(sample(&samples, "cwasi_function_up", &[("function", "relay-a"), ("node", "node-a")]), Some(1.0));
    // Once on stdout, too.
    assert!(parse_prometheus(&cwasi(&dir_a, &["metrics"])).len() > 10);
}
