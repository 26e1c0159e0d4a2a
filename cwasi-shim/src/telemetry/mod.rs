//! What the shim and its guest processes tell the operator: log lines in one
//! format into containerd's log, and call spans to an OpenTelemetry
//! collector when one is configured.

mod log_bridge;
mod log_pipe;
mod logfmt;
pub mod otlp;

use std::path::PathBuf;
use std::sync::Arc;

use log_pipe::LogPipe;
use logfmt::{Logfmt, LogfmtFields};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};

/// The log filter variable of the shim and its guests (`EnvFilter`
/// directives, e.g. `info` or `info,cwasi::calls=debug`).
pub const FILTER_ENV: &str = "RUST_LOG";

/// A guest process's filter when neither its pod nor the node sets one:
/// wasmtime-wasi's per-hostcall spans are `info`, and would be made (and
/// their fields formatted) on every WASI call of the guest.
const GUEST_DEFAULT: &str = "info,wasmtime_wasi=warn";

/// The shim process: lines into the `log` FIFO of its bundle directory (or
/// stderr while it has no reader), at `RUST_LOG`, else `debug` when
/// containerd runs at debug, else `info`. The shim library's own `log` lines
/// come through the same writer in the same format.
pub fn init_shim(debug: bool) {
    let filter = filter_or(if debug { "debug" } else { "info" });
    let level = filter.max_level_hint();
    let fifo = std::env::current_dir().unwrap_or_default().join("log");
    install(filter, Arc::new(LogPipe::new(fifo, true)), None);
    let _ = log::set_boxed_logger(Box::new(log_bridge::LogBridge));
    log::set_max_level(match level {
        Some(level) if level >= tracing_subscriber::filter::LevelFilter::TRACE => log::LevelFilter::Trace,
        Some(level) if level >= tracing_subscriber::filter::LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Info,
    });
}

/// A guest process: lines into the shim's FIFO at `log_path` (dropped while
/// it has no reader: the process's stderr is the container's), at the pod's
/// `cwasi.io/log` level for cwasi's own lines, else `RUST_LOG`, else info.
/// With an OTLP endpoint and `resource`, returns the span exporter, to be
/// started once the process is confined.
pub fn init_guest(
    log_path: PathBuf,
    level: Option<&str>,
    resource: Option<otlp::Resource>,
) -> anyhow::Result<Option<otlp::Exporter>> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(guest_directives(level))?,
        None => filter_or(GUEST_DEFAULT),
    };
    let (endpoint, refused) = match otlp::Endpoint::from_env() {
        Ok(endpoint) => (endpoint, None),
        Err(e) => (None, Some(e)),
    };
    let exporter = install(filter, Arc::new(LogPipe::new(log_path, false)), endpoint.zip(resource));
    if let Some(e) = refused {
        tracing::warn!("no OTLP export: {e:#}");
    }
    Ok(exporter)
}

/// `cwasi.io/log`: a more verbose level applies to cwasi's own lines only (a
/// pod must not turn every crate's tracing into node log volume); `info` is
/// the default; a quieter one applies to everything.
fn guest_directives(level: &str) -> String {
    match level {
        "info" => GUEST_DEFAULT.to_owned(),
        "debug" | "trace" => format!(
            "{GUEST_DEFAULT},{}={level},cwasi_comm={level},cwasi_engine={level},cwasi_wasmtime={level},cwasi_wasmedge={level},containerd_shim_cwasi_v1={level}",
            cwasi_comm::CALL_EVENTS_TARGET
        ),
        quieter => quieter.to_owned(),
    }
}

/// `RUST_LOG` when set and valid, else `default`.
fn filter_or(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Sets the process's subscriber: logfmt lines through `pipe` at `filter`,
/// and the span export layer when given.
fn install(
    filter: EnvFilter,
    pipe: Arc<LogPipe>,
    export: Option<(otlp::Endpoint, otlp::Resource)>,
) -> Option<otlp::Exporter> {
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(Logfmt)
        .fmt_fields(LogfmtFields)
        .with_writer(pipe)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(lines);
    let (layer, exporter) = match export {
        Some((endpoint, resource)) => {
            let (layer, exporter) = otlp::layer(endpoint, &resource);
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    let _ = tracing::subscriber::set_global_default(registry.with(layer));
    exporter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_level_makes_only_cwasi_verbose() {
        let debug = guest_directives("debug");
        assert!(debug.starts_with("info,wasmtime_wasi=warn,cwasi::calls=debug,cwasi_comm=debug"), "{debug}");
        assert!(EnvFilter::try_new(&debug).is_ok());
        assert_eq!(guest_directives("warn"), "warn");
        // `info` keeps wasmtime-wasi's per-hostcall spans off, as the default does.
        assert_eq!(guest_directives("info"), GUEST_DEFAULT);
    }
}
