//! The battery's log: every line the process logged at debug and above,
//! captured in memory by a global tracing subscriber (set once for this
//! test binary, so nothing else may install one here).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything the process logged at debug and above, in memory.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    pub(crate) fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes().len()
    }

    pub(crate) fn text(&self) -> String {
        self.text_since(0)
    }

    /// What was logged after the first `start` bytes.
    pub(crate) fn text_since(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.bytes()[start..]).into_owned()
    }

    /// The lines naming request id `id` (as `request_id=ID`).
    pub(crate) fn lines_with(&self, id: &str) -> Vec<String> {
        let needle = format!("request_id={id}");
        self.text()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }
}

/// The log of this test binary, installed as the global subscriber on
/// first use. Debug level: a key must not show even where an operator asks
/// for more (`RUST_LOG=debug`).
pub(crate) fn captured_log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
        log
    })
}
