//! The shim's log FIFO (`log` in the bundle directory), which containerd
//! reads and copies into its own log; the shim and its guest processes all
//! write to it.
//!
//! Never blocking: opened write-only and non-blocking, so that a containerd
//! that is down or restarting cannot stall a process that logs (with calls
//! logged at debug, that would be every call). A full pipe drops the line
//! (counted, and said once the pipe drains); a pipe without a reader is
//! opened again at the next line. Lines are below `PIPE_BUF` (see
//! `logfmt`), so each write is whole or nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct LogPipe {
    path: PathBuf,
    /// Where lines go while the FIFO has no reader (the shim's stderr,
    /// which containerd logs for its short `start` and `delete` runs), or
    /// nowhere (a guest process, whose stderr is the container's).
    to_stderr_without_reader: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    dropped: u64,
}

impl LogPipe {
    pub fn new(path: PathBuf, to_stderr_without_reader: bool) -> Self {
        Self { path, to_stderr_without_reader, state: Mutex::new(State::default()) }
    }

    fn open(&self) -> io::Result<File> {
        OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&self.path)
    }
}

impl Write for &LogPipe {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        if state.file.is_none() {
            state.file = self.open().ok();
        }
        let Some(fifo) = state.file.as_mut() else {
            if self.to_stderr_without_reader {
                let _ = io::stderr().write_all(line);
            }
            return Ok(line.len());
        };
        if state.dropped > 0 {
            let note = format!(
                "time=\"{}\" level=warning msg=\"{} log lines dropped: the log pipe was full (is containerd reading it?)\"\n",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                state.dropped
            );
            if fifo.write(note.as_bytes()).is_ok() {
                state.dropped = 0;
            }
        }
        match fifo.write(line) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => state.dropped += 1,
            // No reader any more (containerd restarted): open again next time.
            Err(_) => {
                state.file = None;
                state.dropped += 1;
            }
        }
        // The line is dealt with either way: a logger must not fail its caller.
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        path
    }

    #[test]
    fn without_a_reader_or_with_a_full_pipe_lines_are_dropped_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = LogPipe::new(fifo(&dir), false);
        // No reader: the open fails (ENXIO) and the line is dropped at once.
        assert_eq!((&pipe).write(b"lost\n").unwrap(), 5);
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(dir.path().join("log")).unwrap();
        let line = [b'x'; 1000];
        // 64 KiB of pipe fill up, and the writes after that return at once.
        for _ in 0..200 {
            assert_eq!((&pipe).write(&line).unwrap(), 1000);
        }
        let dropped = pipe.state.lock().unwrap().dropped;
        assert!(dropped > 100, "{dropped}");
        drop(reader);
    }

    #[test]
    fn lines_reach_the_reader_and_a_drop_is_reported_once_it_reads_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir);
        let mut reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let pipe = LogPipe::new(path, false);
        (&pipe).write_all(b"first\n").unwrap();
        pipe.state.lock().unwrap().dropped = 3;
        (&pipe).write_all(b"second\n").unwrap();
        let mut got = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut got);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "first");
        assert!(lines[1].contains("3 log lines dropped"), "{got}");
        assert_eq!(lines[2], "second");
    }
}
