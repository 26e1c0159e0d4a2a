//! One log format for the shim and its guest processes: containerd's own
//! (logfmt, as logrus writes it), so that every line containerd copies into
//! its log reads alike and parses with the same tools:
//!
//! ```text
//! time="2026-11-28T10:04:03.182709640Z" level=debug msg=call container=relay-a function=relay-a peer=relay-b mode=remote … trace_id=4bf9…
//! ```
//!
//! `time`, `level` and `msg` come first, then the fields of the spans the
//! line was logged in (outermost first: the guest process's `container` and
//! `function`), then the event's own fields.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use crate::otlp;

/// Formats events as logfmt lines.
pub struct Logfmt;

/// Formats span fields as logfmt pairs (stored with each span).
pub struct LogfmtFields;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut fields = Pairs::default();
        event.record(&mut fields);
        write!(writer, "time=\"{time}\" level={} msg=", level_name(event.metadata().level()))?;
        write_value(&mut writer, fields.message.as_deref().unwrap_or(""))?;
        let mut context = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(stored) = extensions.get::<FormattedFields<N>>()
                    && !stored.is_empty()
                {
                    context.push(' ');
                    context.push_str(stored);
                }
            }
        }
        writer.write_str(&context)?;
        // A field the context already shows (code that also runs outside a
        // guest names its function itself) is written once.
        let shown: Vec<&str> = context.split(' ').collect();
        for pair in fields.pairs.iter().filter(|pair| !shown.contains(&pair.as_str())) {
            write!(writer, " {pair}")?;
        }
        writeln!(writer)
    }
}

impl<'writer> FormatFields<'writer> for LogfmtFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        writer.write_str(&pairs.pairs.join(" "))
    }
}

/// logrus' level names (`warning`, not `warn`).
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Collects an event's message apart and its other fields as `key=value`.
#[derive(Default)]
struct Pairs {
    message: Option<String>,
    pairs: Vec<String>,
}

impl Pairs {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        let mut pair = format!("{}=", field.name());
        // Writing to a String cannot fail.
        let _ = write_value(&mut pair, value);
        self.pairs.push(pair);
    }
}

impl Visit for Pairs {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }
}

/// A value bare when logfmt allows it, else quoted with `"`, `\` and line
/// breaks escaped (a guest-chosen name must not forge a second line).
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+' | ':'));
    if bare {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// Installs the logfmt subscriber for this process, writing to `writer` at
/// `filter`, and exporting call spans to `export` when given. Not through
/// `try_init`: that would also claim the `log` facade, which the shim
/// library sets up for its own lines.
pub fn init<W>(filter: tracing_subscriber::EnvFilter, writer: W, export: Option<(otlp::Endpoint, otlp::Resource)>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(Logfmt)
        .fmt_fields(LogfmtFields)
        .with_writer(writer)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(lines);
    let mut failed = None;
    let export =
        export.and_then(|(endpoint, resource)| otlp::start(endpoint, resource).map_err(|e| failed = Some(e)).ok());
    let _ = tracing::subscriber::set_global_default(registry.with(export));
    if let Some(e) = failed {
        tracing::warn!("cannot start the OTLP export: {e}");
    }
}

/// `RUST_LOG` when set, else `level`.
pub fn filter_or(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}

/// The shim's log FIFO (`log` in the bundle directory, which containerd
/// reads), opened at the first line: the shim's short-lived `start` and
/// `delete` runs may have no reader yet. Read-write, so that opening it never
/// blocks; lines go to stderr when there is no FIFO.
pub struct ShimLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl ShimLog {
    pub fn in_current_dir() -> Self {
        let path = std::env::current_dir().unwrap_or_default().join("log");
        Self { path, file: Mutex::new(None) }
    }
}

impl io::Write for &ShimLog {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = OpenOptions::new().read(true).write(true).open(&self.path).ok();
        }
        match file.as_mut() {
            Some(fifo) => fifo.write(line),
            None => io::stderr().write(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(body: impl FnOnce()) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .event_format(Logfmt)
            .fmt_fields(LogfmtFields)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_logfmt_with_span_fields_before_event_fields() {
        let out = logged(|| {
            let _guest = tracing::info_span!("guest", container = "relay-a", function = "relay a").entered();
            tracing::debug!(peer = "relay-b", container = "relay-a", trace_id = "4bf9", elapsed_us = 12u64, "call");
            tracing::warn!("call failed: \"x\"\nforged=line");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("time=\""), "{}", lines[0]);
        assert!(
            lines[0].ends_with(
                "level=debug msg=call container=relay-a function=\"relay a\" peer=relay-b trace_id=4bf9 elapsed_us=12"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(
                r#"level=warning msg="call failed: \"x\"\nforged=line" container=relay-a function="relay a""#
            )
        );
    }

    #[test]
    fn values_are_bare_only_when_safe() {
        let quoted = |v: &str| {
            let mut out = String::new();
            write_value(&mut out, v).unwrap();
            out
        };
        assert_eq!(quoted("relay-a"), "relay-a");
        assert_eq!(quoted("/run/x.sock"), "/run/x.sock");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("a b"), "\"a b\"");
        assert_eq!(quoted("k=v"), "\"k=v\"");
        assert_eq!(quoted("a\\b\u{7}"), "\"a\\\\b\\u{7}\"");
    }
}
