//! Progress of long local work (registering a large file, generating demo data) on stderr:
//! one line, rewritten in place, with rows, bytes and the rate — only when stderr is a
//! terminal, so scripts, pipes and the tests see nothing of it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Time between two updates of the line, in milliseconds: often enough to look alive, rarely
/// enough to cost nothing.
const REDRAW_MS: u64 = 250;
const MIB_BYTES: f64 = 1024.0 * 1024.0;

/// A progress line on stderr (inert when stderr is not a terminal).
pub(crate) struct Meter {
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Meter {
    /// A meter that draws only if stderr is a terminal.
    pub(crate) fn stderr() -> Self {
        Self {
            started: Instant::now(),
            drawn: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `what` with `rows` rows (if any) and `bytes` bytes (if any) done so far and the
    /// rate since the meter started; at most every [`REDRAW_MS`], unless `now` is set.
    pub(crate) fn show(&mut self, what: &str, rows: u64, bytes: u64, now: bool) {
        if !self.enabled {
            return;
        }
        let redraw = Duration::from_millis(REDRAW_MS);
        if !now && self.drawn.is_some_and(|at| at.elapsed() < redraw) {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let mut line = format!("{what}:");
        if rows > 0 {
            line.push_str(&format!(
                " {rows} rows ({:.0} rows/s)",
                rows as f64 / seconds
            ));
        }
        if bytes > 0 {
            line.push_str(&format!(
                " {:.1} MiB ({:.1} MiB/s)",
                bytes as f64 / MIB_BYTES,
                bytes as f64 / MIB_BYTES / seconds
            ));
        }
        line.push_str(&format!(" {:.0} s", seconds));
        // `\r` and "erase to the end of the line": the next update overwrites this one.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Ends the line, if one was drawn, so what follows starts on a line of its own.
    pub(crate) fn finish(&mut self) {
        if self.drawn.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err);
            let _ = err.flush();
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}
