//! The kernel programs' log (aya-log records) forwarded to `tracing`
//! under the target `cilock_ebpf`.

use std::os::fd::AsRawFd;

use aya::Ebpf;

/// Forwards aya-log records of the kernel programs to `tracing`.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args().to_string();
        match r.level() {
            log::Level::Error => tracing::error!(target: "cilock_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "cilock_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "cilock_ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "cilock_ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "cilock_ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The kernel-side log reader.
pub type Logger = aya_log::EbpfLogger<TracingLog>;

/// Starts reading the programs' aya-log records (None if the object has
/// no log map, which happens when no program logs).
pub fn logger(ebpf: &mut Ebpf) -> Option<Logger> {
    match aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("no kernel-side log: {e}");
            None
        }
    }
}

/// The fd to poll for log records.
pub fn logger_fd(l: &Logger) -> i32 {
    l.as_raw_fd()
}
