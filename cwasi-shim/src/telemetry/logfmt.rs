//! The one log format of the shim and its guest processes: containerd's own
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
//!
//! Lines may carry guest-chosen text (a peer name, a failure message): values
//! are quoted and escaped so that none can forge a field or a line, and cut
//! so that a line stays below `PIPE_BUF`, which keeps each line one atomic
//! write into the log pipe that several processes share.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The longest line written (bytes, newline included): under `PIPE_BUF`.
const LINE_MAX: usize = 4000;
/// The longest message and field value kept; longer ones end with `…`.
const MESSAGE_MAX: usize = 1024;
const VALUE_MAX: usize = 512;

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
        let mut line = format!("time=\"{time}\" level={} msg=", level_name(event.metadata().level()));
        write_value(&mut line, fields.message.as_deref().unwrap_or(""), MESSAGE_MAX)?;
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
        line.push_str(&context);
        // A key the context already shows (code that also runs outside a
        // guest names its function itself) is written once.
        let shown = keys(&context);
        let mut cut = false;
        for (_, pair) in fields.pairs.iter().filter(|(key, _)| !shown.contains(&key.as_str())) {
            if line.len() + 1 + pair.len() + " truncated=true\n".len() > LINE_MAX {
                cut = true;
                continue;
            }
            line.push(' ');
            line.push_str(pair);
        }
        if cut {
            line.push_str(" truncated=true");
        }
        writeln!(writer, "{line}")
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
        let joined: Vec<&str> = pairs.pairs.iter().map(|(_, pair)| pair.as_str()).collect();
        writer.write_str(&joined.join(" "))
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

/// Collects an event's message apart and its other fields as
/// `(key, "key=value")`.
#[derive(Default)]
struct Pairs {
    message: Option<String>,
    pairs: Vec<(String, String)>,
}

impl Pairs {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        let mut pair = format!("{}=", field.name());
        // Writing to a String cannot fail.
        let _ = write_value(&mut pair, value, VALUE_MAX);
        self.pairs.push((field.name().to_owned(), pair));
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

/// The keys of logfmt pairs written by [`write_value`] (quoted values may
/// hold spaces and `=`).
fn keys(pairs: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = pairs.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        keys.push(key);
        let end = if let Some(quoted) = after.strip_prefix('"') {
            // The closing quote is the first one not escaped.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(after.len(), |(i, _)| i + 2)
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        rest = after[end..].trim_start();
    }
    keys
}

/// A value bare when logfmt allows it, else quoted with `"`, `\` and control
/// characters escaped; cut to `max` bytes with a trailing `…`.
fn write_value(out: &mut impl fmt::Write, value: &str, max: usize) -> fmt::Result {
    let (value, cut) = if value.len() > max { (&value[..floor_boundary(value, max)], true) } else { (value, false) };
    let bare = !value.is_empty()
        && !cut
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
    if cut {
        out.write_char('…')?;
    }
    out.write_char('"')
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io;
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

    fn quoted(value: &str, max: usize) -> String {
        let mut out = String::new();
        write_value(&mut out, value, max).unwrap();
        out
    }

    #[test]
    fn lines_are_logfmt_with_span_fields_once_before_event_fields() {
        let out = logged(|| {
            let _guest = tracing::info_span!("guest", container = "relay-a", function = "relay a").entered();
            tracing::debug!(peer = "relay-b", container = "relay-a", function = "relay a", elapsed_us = 12u64, "call");
            tracing::warn!("call failed: \"x\"\nforged=line");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("time=\""), "{}", lines[0]);
        assert!(
            lines[0]
                .ends_with(r#"level=debug msg=call container=relay-a function="relay a" peer=relay-b elapsed_us=12"#),
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
    fn a_quoted_value_cannot_hide_a_field() {
        let out = logged(|| {
            let _guest = tracing::info_span!("guest", function = "x peer=y z").entered();
            tracing::info!(peer = "victim", "call");
        });
        assert!(out.trim_end().ends_with(r#"function="x peer=y z" peer=victim"#), "{out}");
        assert_eq!(keys(r#"a=1 b="x \" c=2" d=3"#), ["a", "b", "d"]);
    }

    #[test]
    fn long_guest_text_is_cut_and_lines_stay_under_pipe_buf() {
        let huge = "é".repeat(10_000);
        let out = logged(|| {
            tracing::warn!(a = %huge, b = %huge, c = %huge, d = %huge, e = %huge, f = %huge, g = %huge, h = %huge, "{huge}");
        });
        assert!(out.len() < 4096, "{} bytes", out.len());
        assert!(out.contains("…\"") && out.trim_end().ends_with("truncated=true"), "{out}");
    }

    #[test]
    fn values_are_bare_only_when_safe() {
        assert_eq!(quoted("relay-a", 512), "relay-a");
        assert_eq!(quoted("/run/x.sock", 512), "/run/x.sock");
        assert_eq!(quoted("", 512), "\"\"");
        assert_eq!(quoted("a b", 512), "\"a b\"");
        assert_eq!(quoted("k=v", 512), "\"k=v\"");
        assert_eq!(quoted("a\\b\u{7}", 512), "\"a\\\\b\\u{7}\"");
        assert_eq!(quoted("abcdef", 3), "\"abc…\"");
        assert_eq!(quoted("ééé", 2), "\"é…\"");
    }
}
