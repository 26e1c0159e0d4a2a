//! The shim library logs through the `log` facade; its lines are turned into
//! `tracing` events here, so that they come out in the one format, through
//! the one writer, beside the shim's own.

pub struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    /// The `log` macros checked the level already.
    fn log(&self, record: &log::Record<'_>) {
        let (logger, message) = (record.target(), record.args());
        match record.level() {
            log::Level::Error => tracing::error!(logger, "{message}"),
            log::Level::Warn => tracing::warn!(logger, "{message}"),
            log::Level::Info => tracing::info!(logger, "{message}"),
            log::Level::Debug => tracing::debug!(logger, "{message}"),
            log::Level::Trace => tracing::trace!(logger, "{message}"),
        }
    }

    fn flush(&self) {}
}
