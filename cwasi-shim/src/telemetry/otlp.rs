//! Optional export of call spans to an OpenTelemetry collector (OTLP over
//! HTTP with JSON bodies), off unless the standard environment names an
//! endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended); `OTEL_SDK_DISABLED=true`
//! turns it off again. Plain `http://` only: collectors run as a node agent.
//!
//! The spans are the guest host's `call` and `served` events (which carry
//! trace id, span id, parent id and duration), so nothing on the call path
//! changes: a tracing layer turns each into a span and hands it to a thread
//! that posts them in batches. A collector that is slow or gone costs the
//! calls nothing: spans are dropped once the queue is full.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::{Context, Layer};

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a process's exit waits for its last spans to go out (not at all
/// while the collector is failing).
const FLUSH_PATIENCE: Duration = Duration::from_secs(1);
/// OTLP's `SpanKind` and `StatusCode` values.
const KIND_SERVER: i64 = 2;
const KIND_CLIENT: i64 = 3;
const STATUS_ERROR: i64 = 2;

/// The variables a guest process needs from the shim's environment.
pub const ENV: [&str; 3] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"];

/// An OTLP/HTTP endpoint: host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    authority: String,
    path: String,
}

impl Endpoint {
    /// From the environment; `Ok(None)` when export is off.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Self::parse(&url, false).map(Some);
        }
        var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| Self::parse(&url, true)).transpose()
    }

    fn parse(url: &str, base: bool) -> anyhow::Result<Self> {
        let rest = url.trim().strip_prefix("http://").with_context(|| {
            format!("OTLP endpoint {url:?}: only http:// is supported (OTLP/HTTP with JSON, to a node-local collector)")
        })?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') {
            anyhow::bail!("OTLP endpoint {url:?}: expected http://host:port[/path]");
        }
        let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
        let path = match (base, path.trim_end_matches('/')) {
            (true, "") => "/v1/traces".to_owned(),
            (true, prefix) => format!("/{prefix}/v1/traces"),
            (false, path) => format!("/{path}"),
        };
        Ok(Self { authority, path })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Who the spans are from: the OTLP resource.
pub struct Resource {
    pub function: String,
    pub namespace: String,
    pub container: String,
    pub node: String,
}

/// The layer for a subscriber: the guest host's events only.
pub type SpanLayer<S> = Filtered<SpanExport, Targets, S>;

/// What the export thread is handed.
pub enum Item {
    Span(Value),
    /// Send what is queued now and say so.
    Flush(SyncSender<()>),
}

/// The export thread's work, started once the process is confined (see
/// [`Exporter::spawn`]).
pub struct Exporter {
    endpoint: Endpoint,
    resource: Value,
    items: Receiver<Item>,
    /// For [`flush`], once the thread runs.
    queue: SyncSender<Item>,
}

/// The layer for a subscriber, and the exporter that sends what it queues.
pub fn layer<S>(endpoint: Endpoint, resource: &Resource) -> (SpanLayer<S>, Exporter)
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let (queue, items) = sync_channel(QUEUE);
    let exporter = Exporter { endpoint, resource: resource_json(resource), items, queue: queue.clone() };
    (span_layer(queue), exporter)
}

fn span_layer<S: Subscriber>(queue: SyncSender<Item>) -> SpanLayer<S> {
    SpanExport { queue }.with_filter(Targets::new().with_target(cwasi_comm::CALL_EVENTS_TARGET, Level::DEBUG))
}

impl Exporter {
    /// Starts the thread that posts the spans. Call it after the process
    /// entered the container's namespaces, capabilities and signal mask: a
    /// thread inherits them only from the one that starts it.
    pub fn spawn(self) -> std::io::Result<()> {
        let Exporter { endpoint, resource, items, queue } = self;
        cwasi_comm::threads::spawn("cwasi-otlp", move || export(endpoint, resource, items))?;
        // Only now can a flush be answered: a process whose exporter never
        // started does not wait for one at exit.
        let _ = EXPORT_QUEUE.set(queue);
        Ok(())
    }
}

/// The running export thread's queue, for the last batch at exit.
static EXPORT_QUEUE: OnceLock<SyncSender<Item>> = OnceLock::new();
/// Set while posts fail: exit does not wait for a collector that is gone.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Sends the spans still queued, waiting a second at most: call before the
/// process exits. Spans that did not fit in the queue are gone already.
pub fn flush() {
    let Some(queue) = EXPORT_QUEUE.get() else { return };
    if FAILING.load(Ordering::Relaxed) {
        return;
    }
    let (done, sent) = sync_channel(1);
    if queue.try_send(Item::Flush(done)).is_ok() {
        let _ = sent.recv_timeout(FLUSH_PATIENCE);
    }
}

/// Turns guest host events into spans and queues them.
pub struct SpanExport {
    queue: SyncSender<Item>,
}

impl<S: Subscriber> Layer<S> for SpanExport {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(span) = span_json(&fields.0, SystemTime::now()) {
            // Full: the collector does not keep up; the calls must not wait
            // for it, so the span is dropped.
            let _ = self.queue.try_send(Item::Span(span));
        }
    }
}

#[derive(Default)]
struct Fields(HashMap<&'static str, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

/// One span in OTLP/JSON from a `call` or `served` event's fields.
fn span_json(fields: &HashMap<&'static str, String>, ended: SystemTime) -> Option<Value> {
    let get = |name: &str| fields.get(name).map(String::as_str);
    let (trace_id, span_id) = (get("trace_id")?, get("span_id")?);
    let elapsed_ns = get("elapsed_us").and_then(|us| us.parse::<u64>().ok()).unwrap_or(0).saturating_mul(1000);
    let end = ended.duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64;
    let attribute = |key: &str, name: &str| get(name).map(|v| json!({"key": key, "value": {"stringValue": v}}));
    // OTLP/JSON carries 64-bit integers as strings.
    let count = |key: &str, name: &str| get(name).map(|v| json!({"key": key, "value": {"intValue": v}}));
    let (name, kind, failed, attributes) = match get("message")? {
        "call" => (
            format!("call {}", get("peer")?),
            KIND_CLIENT,
            get("status").filter(|s| *s != "ok"),
            [
                attribute("cwasi.peer", "peer"),
                attribute("cwasi.mode", "mode"),
                attribute("cwasi.status", "status"),
                count("cwasi.bytes_out", "bytes_out"),
                count("cwasi.bytes_in", "bytes_in"),
            ],
        ),
        "served" => (
            "serve".to_owned(),
            KIND_SERVER,
            get("outcome").filter(|o| *o != "replied"),
            [
                attribute("cwasi.outcome", "outcome"),
                count("cwasi.bytes_in", "bytes_in"),
                count("cwasi.bytes_out", "bytes_out"),
                None,
                None,
            ],
        ),
        _ => return None,
    };
    let mut span = json!({
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": end.saturating_sub(elapsed_ns).to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attributes.into_iter().flatten().collect::<Vec<_>>(),
    });
    if let Some(parent) = get("parent_id") {
        span["parentSpanId"] = json!(parent);
    }
    if let Some(failure) = failed {
        span["status"] = json!({"code": STATUS_ERROR, "message": failure});
    }
    Some(span)
}

fn resource_json(resource: &Resource) -> Value {
    let attribute = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    json!({"attributes": [
        attribute("service.name", &resource.function),
        attribute("service.namespace", &resource.namespace),
        attribute("container.id", &resource.container),
        attribute("host.name", &resource.node),
    ]})
}

/// Collects spans into batches and posts them; ends when the queue closes.
fn export(endpoint: Endpoint, resource: Value, items: Receiver<Item>) {
    let mut batch = Vec::new();
    let mut since = Instant::now();
    let mut failing = false;
    loop {
        let (flush, closed) = match items.recv_timeout(EVERY.saturating_sub(since.elapsed())) {
            Ok(Item::Span(span)) => {
                batch.push(span);
                (None, false)
            }
            Ok(Item::Flush(done)) => (Some(done), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        let due = closed || flush.is_some() || batch.len() >= BATCH || since.elapsed() >= EVERY;
        if !batch.is_empty() && due {
            let body = json!({"resourceSpans": [{
                "resource": resource,
                "scopeSpans": [{"scope": {"name": "cwasi"}, "spans": std::mem::take(&mut batch)}],
            }]});
            let posted = post(&endpoint, &body.to_string());
            FAILING.store(posted.is_err(), Ordering::Relaxed);
            match posted {
                Ok(()) => failing = false,
                // Once per outage, not once per batch.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(endpoint = %endpoint, "OTLP export failed (spans dropped until it works): {e}");
                }
                Err(_) => {}
            }
        }
        if let Some(done) = flush {
            let _ = done.try_send(());
        }
        if batch.is_empty() {
            since = Instant::now();
        }
        if closed {
            return;
        }
    }
}

fn post(endpoint: &Endpoint, body: &str) -> std::io::Result<()> {
    let address = endpoint
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the endpoint's host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, POST_TIMEOUT)?;
    stream.set_read_timeout(Some(POST_TIMEOUT))?;
    stream.set_write_timeout(Some(POST_TIMEOUT))?;
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        endpoint.path,
        endpoint.authority,
        body.len()
    )?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status)?;
    match &status[..] {
        [b'H', b'T', b'T', b'P', b'/', _, _, _, b' ', b'2', _, _] => Ok(()),
        _ => Err(std::io::Error::other(format!("the collector answered {:?}", String::from_utf8_lossy(&status)))),
    }
}

/// A subscriber's registry with the export layer, for tests.
#[cfg(test)]
fn with_export(queue: SyncSender<Item>) -> impl Subscriber {
    use tracing_subscriber::layer::SubscriberExt as _;
    tracing_subscriber::registry().with(span_layer(queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_otel_variables() {
        assert_eq!(
            Endpoint::parse("http://collector:4318", true).unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(Endpoint::parse("http://c:4318/otlp/", true).unwrap().to_string(), "http://c:4318/otlp/v1/traces");
        assert_eq!(Endpoint::parse("http://c/v1/traces", false).unwrap().to_string(), "http://c:80/v1/traces");
        assert!(Endpoint::parse("https://c:4318", true).unwrap_err().to_string().contains("only http://"));
        assert!(Endpoint::parse("http://user:pw@c:4318", true).is_err());
        assert!(Endpoint::parse("grpc://c", true).is_err());
    }

    #[test]
    fn call_and_served_events_become_client_and_server_spans() {
        let (queue, spans) = sync_channel(16);
        tracing::subscriber::with_default(with_export(queue), || {
            tracing::debug!(target: cwasi_comm::CALL_EVENTS_TARGET, peer = "relay-b", mode = "remote", status = "timeout",
                elapsed_us = 1500u64, trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", span_id = "00f067aa0ba902b7",
                parent_id = "1111111111111111", "call");
            tracing::debug!(target: cwasi_comm::CALL_EVENTS_TARGET, outcome = "replied", elapsed_us = 10u64,
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", span_id = "2222222222222222", "served");
            // Not a call: no span.
            tracing::debug!(target: cwasi_comm::CALL_EVENTS_TARGET, "something else");
            tracing::debug!(target: "elsewhere", trace_id = "x", span_id = "y", "call");
        });
        let spans: Vec<Value> = spans
            .try_iter()
            .filter_map(|item| match item {
                Item::Span(span) => Some(span),
                Item::Flush(_) => None,
            })
            .collect();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let call = &spans[0];
        assert_eq!((call["name"].as_str(), call["kind"].as_i64()), (Some("call relay-b"), Some(3)));
        assert_eq!(call["parentSpanId"].as_str(), Some("1111111111111111"));
        assert_eq!(call["status"]["code"].as_i64(), Some(2));
        let start: u64 = call["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = call["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert_eq!(end - start, 1_500_000);
        let served = &spans[1];
        assert_eq!((served["kind"].as_i64(), served.get("parentSpanId")), (Some(2), None));
        assert!(served.get("status").is_none());
    }
}
