//! The log's writer: lines gathered in memory, written in large blocks.
//!
//! A request must not pay a `write` system call for its access log line
//! (nginx's `access_log ... buffer=64k flush=1s` does the same). Access
//! lines (target `crmgate::access`) are appended to one buffer and written
//! when it holds [`BLOCK`] bytes, every [`FLUSH_EVERY`] by a small thread,
//! and when the [`FlushGuard`] drops at exit. Every other line (start-up,
//! warnings, the drain report) goes out at once, after the access lines
//! before it, so the order is kept.
//!
//! It never drops a line: when the buffer is full the line's thread writes
//! the block itself. It never formats or inspects a line.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger a write.
pub const BLOCK: usize = 64 * 1024;
/// Longest an access line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The access log's target: its lines are the buffered ones.
const ACCESS_TARGET: &str = "crmgate::access";

struct State {
    buf: Vec<u8>,
    out: Box<dyn Write + Send>,
    stopped: bool,
}

impl State {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            // Nowhere to report a failed log write: the line is gone either way.
            let _ = self.out.write_all(&self.buf);
            self.buf.clear();
        }
        let _ = self.out.flush();
    }
}

/// What the writer thread and the loggers share: the lines waiting to be
/// written, and the signal that more came.
struct Handoff {
    state: Mutex<State>,
    tick: Condvar,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The [`MakeWriter`] for `tracing_subscriber::fmt`.
#[derive(Clone)]
pub struct BufferedLog(Arc<Handoff>);

/// Writes what is buffered and stops the flushing thread when dropped:
/// keep it alive until the process ends.
pub struct FlushGuard {
    shared: Arc<Handoff>,
    thread: Option<JoinHandle<()>>,
}

/// A writer over `out` and the guard that flushes it.
pub fn buffered(out: impl Write + Send + 'static) -> (BufferedLog, FlushGuard) {
    let shared = Arc::new(Handoff {
        state: Mutex::new(State {
            buf: Vec::with_capacity(BLOCK),
            out: Box::new(out),
            stopped: false,
        }),
        tick: Condvar::new(),
    });
    let flusher = shared.clone();
    let thread = std::thread::Builder::new()
        .name("crmgate-log".into())
        .spawn(move || {
            let mut state = flusher.lock();
            while !state.stopped {
                state = flusher
                    .tick
                    .wait_timeout(state, FLUSH_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                state.flush();
            }
        })
        .ok();
    let guard = FlushGuard {
        shared: shared.clone(),
        thread,
    };
    (BufferedLog(shared), guard)
}

impl BufferedLog {
    /// Appends a finished access line (buffered like the access lines
    /// `tracing` writes through [`MakeWriter`]).
    pub fn write_access(&self, line: &[u8]) {
        let mut writer = Line {
            shared: &self.0,
            at_once: false,
        };
        let _ = writer.write(line);
    }
}

impl FlushGuard {
    /// Writes every buffered line now.
    pub fn flush(&self) {
        self.shared.lock().flush();
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.tick.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.flush();
    }
}

/// One line's writer.
pub struct Line<'a> {
    shared: &'a Handoff,
    at_once: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        state.buf.extend_from_slice(bytes);
        if self.at_once || state.buf.len() >= BLOCK || state.stopped {
            state.flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            at_once: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            at_once: meta.target() != ACCESS_TARGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn subscriber(log: BufferedLog) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(log)
            .finish()
    }

    #[test]
    fn access_lines_wait_other_lines_flush_them_in_order_and_the_guard_flushes_the_rest() {
        let sink = Sink::default();
        let (log, guard) = buffered(sink.clone());
        tracing::subscriber::with_default(subscriber(log), || {
            tracing::info!(target: "crmgate::access", "first");
            tracing::info!(target: "crmgate::access", "second");
            assert_eq!(sink.text(), "", "access lines are buffered");
            tracing::warn!("a warning");
            let text = sink.text();
            let (a, b, w) = (
                text.find("first").unwrap(),
                text.find("second").unwrap(),
                text.find("a warning").unwrap(),
            );
            assert!(a < b && b < w, "{text}");
            tracing::info!(target: "crmgate::access", "last");
        });
        assert!(!sink.text().contains("last"));
        drop(guard);
        assert!(sink.text().contains("last"), "the guard flushes");
    }

    #[test]
    fn a_full_block_is_written_and_the_thread_flushes_the_rest() {
        let sink = Sink::default();
        let (log, _guard) = buffered(sink.clone());
        tracing::subscriber::with_default(subscriber(log), || {
            let filler = "x".repeat(1000);
            for i in 0..(BLOCK / 1000 + 1) {
                tracing::info!(target: "crmgate::access", i, filler);
            }
            assert!(sink.text().len() >= BLOCK, "a full block is written");
            tracing::info!(target: "crmgate::access", "tail");
        });
        // The flushing thread writes the tail within FLUSH_EVERY.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sink.text().contains("tail") {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
