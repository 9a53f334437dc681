//! The export CLI's progress on stderr: an `indicatif` bar on a terminal
//! (pages done of total, items, rate, time left), else a plain line every
//! few seconds that a log file can keep.
//!
//! Only counts and rates are shown: never the gateway URL's query, an item
//! or the key. The text of the plain line is a pure function
//! ([`plain_line`]) so it is tested without a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An `indicatif` bar, redrawn in place.
    Bar,
    /// A plain line every [`PLAIN_EVERY`].
    Plain,
    /// Nothing.
    Quiet,
}

/// How often the plain line is printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(3);

/// What the gateway said the export holds (its first page's pagination).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `X-Crmgate-Export-Total`.
    pub items: Option<u64>,
    /// `X-Crmgate-Export-Pages`.
    pub pages: Option<u64>,
}

impl Totals {
    /// Pages done after `items` items. The stream carries items, not page
    /// marks, so the page size is inferred: the smallest of RetailCRM's
    /// sizes (20, 50, 100, 250) that makes `items` into `pages` pages.
    pub fn pages_done(&self, items: u64) -> Option<u64> {
        let (total, pages) = (self.items?, self.pages?);
        if pages == 0 || total == 0 {
            return Some(0);
        }
        let per_page = [20, 50, 100, 250]
            .into_iter()
            .find(|size| total.div_ceil(*size) == pages)
            .unwrap_or_else(|| total.div_ceil(pages));
        Some(items.div_ceil(per_page).min(pages))
    }
}

/// `export: 1200 of 5000 items, page 12 of 50, 240 items/s, about 16 s left`
pub fn plain_line(items: u64, totals: Totals, elapsed: Duration) -> String {
    let rate = rate(items, elapsed);
    let mut line = match totals.items {
        Some(total) => format!("export: {items} of {total} items"),
        None => format!("export: {items} items"),
    };
    if let (Some(done), Some(pages)) = (totals.pages_done(items), totals.pages) {
        line.push_str(&format!(", page {done} of {pages}"));
    }
    line.push_str(&format!(", {rate:.0} items/s"));
    if let Some(total) = totals.items {
        if rate > 0.0 && total > items {
            let left = (total - items) as f64 / rate;
            line.push_str(&format!(", about {} left", human(left)));
        }
    }
    line
}

/// The bar: spinner, bar, items, then [`bar_message`] (pages and the rate,
/// once), then the time left.
const BAR_TEMPLATE: &str = "{spinner} [{bar:30}] {pos}/{len} items · {msg} · ETA {eta}";

/// The bar's message: `page 12 of 50 · 240 items/s` (`page ?` while the
/// totals are unknown).
pub fn bar_message(items: u64, totals: Totals, elapsed: Duration) -> String {
    let page = match (totals.pages_done(items), totals.pages) {
        (Some(d), Some(p)) => format!("page {d} of {p}"),
        _ => "page ?".into(),
    };
    format!("{page} · {:.0} items/s", rate(items, elapsed))
}

fn rate(items: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        items as f64 / secs
    } else {
        0.0
    }
}

fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// Progress of one export, shown on stderr.
pub struct Progress {
    mode: Mode,
    totals: Totals,
    bar: Option<ProgressBar>,
    started: Instant,
    last_plain: Instant,
}

impl Progress {
    /// Starts showing progress; `forced` draws the bar even when stderr is
    /// not a terminal (for tests and `script`-like wrappers).
    pub fn new(mode: Mode, totals: Totals, forced: bool) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let target = if forced {
                ProgressDrawTarget::term_like_with_hz(Box::new(Stderr), 10)
            } else {
                ProgressDrawTarget::stderr_with_hz(10)
            };
            let bar = match totals.items {
                Some(total) => ProgressBar::with_draw_target(Some(total), target),
                None => ProgressBar::with_draw_target(None, target),
            };
            if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let now = Instant::now();
        let progress = Progress {
            mode,
            totals,
            bar,
            started: now,
            last_plain: now,
        };
        progress.draw_pages(0);
        progress
    }

    fn draw_pages(&self, items: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(bar_message(items, self.totals, self.started.elapsed()));
        }
    }

    /// `items` written so far.
    pub fn update(&mut self, items: u64) {
        match self.mode {
            Mode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(items);
                }
                self.draw_pages(items);
            }
            Mode::Plain if self.last_plain.elapsed() >= PLAIN_EVERY => {
                self.last_plain = Instant::now();
                eprintln!("{}", plain_line(items, self.totals, self.started.elapsed()));
            }
            _ => {}
        }
    }

    /// The export is over: the bar is left as it stands, and the plain
    /// mode prints its last line.
    pub fn finish(&mut self, items: u64) {
        match self.mode {
            Mode::Bar => {
                self.draw_pages(items);
                if let Some(bar) = &self.bar {
                    bar.set_position(items);
                    bar.abandon();
                }
            }
            Mode::Plain => {
                eprintln!("{}", plain_line(items, self.totals, self.started.elapsed()));
            }
            Mode::Quiet => {}
        }
    }
}

/// stderr as a terminal whatever it is, for a forced bar.
#[derive(Debug)]
struct Stderr;

impl Stderr {
    fn out(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().write_all(s.as_bytes())
    }
}

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.out(&format!("\x1b[{n}A"))?;
        }
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.out(&format!("\x1b[{n}B"))?;
        }
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.out(&format!("\x1b[{n}C"))?;
        }
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.out(&format!("\x1b[{n}D"))?;
        }
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.out(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.out(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.out("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_counts_items_pages_rate_and_time_left() {
        let totals = Totals {
            items: Some(5000),
            pages: Some(50),
        };
        assert_eq!(
            plain_line(1200, totals, Duration::from_secs(10)),
            "export: 1200 of 5000 items, page 12 of 50, 120 items/s, about 32 s left"
        );
        assert_eq!(
            plain_line(0, Totals::default(), Duration::ZERO),
            "export: 0 items, 0 items/s"
        );
        assert_eq!(
            plain_line(100, totals, Duration::from_secs(100)),
            "export: 100 of 5000 items, page 1 of 50, 1 items/s, about 1h21m left"
        );
    }

    #[test]
    fn the_bar_says_page_once_and_the_rate_once() {
        let totals = Totals {
            items: Some(237),
            pages: Some(3),
        };
        assert_eq!(
            bar_message(237, totals, Duration::from_millis(200)),
            "page 3 of 3 · 1185 items/s"
        );
        assert_eq!(
            bar_message(5, Totals::default(), Duration::ZERO),
            "page ? · 0 items/s"
        );
        // The template adds neither a word "page" nor a second rate.
        assert!(!BAR_TEMPLATE.contains("page"), "{BAR_TEMPLATE}");
        assert!(!BAR_TEMPLATE.contains("per_sec"), "{BAR_TEMPLATE}");
    }

    #[test]
    fn pages_done_follow_the_page_size_the_totals_imply() {
        // 237 items in 3 pages: 100 per page (50 would make 5).
        let t = Totals {
            items: Some(237),
            pages: Some(3),
        };
        assert_eq!(t.pages_done(0), Some(0));
        assert_eq!(t.pages_done(1), Some(1));
        assert_eq!(t.pages_done(100), Some(1));
        assert_eq!(t.pages_done(101), Some(2));
        assert_eq!(t.pages_done(999), Some(3), "never past the last page");
        let odd = Totals {
            items: Some(10),
            pages: Some(3),
        };
        assert_eq!(odd.pages_done(4), Some(1), "no known size fits: 4 per page");
        assert_eq!(Totals::default().pages_done(5), None);
    }
}
