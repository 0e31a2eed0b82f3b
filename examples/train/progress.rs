//! A progress bar on stderr: redrawn in place on a terminal, a line per
//! quarter otherwise (so that logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    tty: bool,
    last_quarter: usize,
    last_draw: Option<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Progress {
        Progress {
            label: label.to_string(),
            total: total.max(1),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_quarter: 0,
            last_draw: None,
        }
    }

    /// Reports `done` steps out of the total, with a short status.
    pub fn update(&mut self, done: usize, status: &str) {
        let frac = done as f64 / self.total as f64;
        let elapsed = self.start.elapsed().as_secs_f64();
        if self.tty {
            let now = Instant::now();
            if done < self.total && self.last_draw.is_some_and(|t| (now - t).as_millis() < 80) {
                return;
            }
            self.last_draw = Some(now);
            let eta = if done > 0 {
                elapsed / frac - elapsed
            } else {
                0.0
            };
            let line = format!(
                "{} {} {:>3}% {:>6}/{} {} {:>4.0}s left",
                self.label,
                bar(frac, 24),
                (frac * 100.0).round(),
                done,
                self.total,
                status,
                eta
            );
            eprint!("\r{line}\x1b[K");
        } else {
            let quarter = (frac * 4.0).floor() as usize;
            if quarter > self.last_quarter {
                self.last_quarter = quarter;
                eprintln!(
                    "{} {:>3}% {} ({:.1}s)",
                    self.label,
                    quarter * 25,
                    status,
                    elapsed
                );
            }
        }
        let _ = std::io::stderr().flush();
    }

    /// Ends the bar's line; returns the seconds it ran.
    pub fn finish(&mut self, status: &str) -> f64 {
        let elapsed = self.start.elapsed().as_secs_f64();
        if self.tty {
            eprintln!(
                "\r{} {} 100% {} ({:.1}s)\x1b[K",
                self.label,
                bar(1.0, 24),
                status,
                elapsed
            );
        }
        elapsed
    }
}

/// `[#####-----]` of `width` cells.
pub fn bar(frac: f64, width: usize) -> String {
    let full = ((frac.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(full), "-".repeat(width - full))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bar_fills_in_proportion() {
        assert_eq!(super::bar(0.0, 4), "[----]");
        assert_eq!(super::bar(0.5, 4), "[##--]");
        assert_eq!(super::bar(1.7, 4), "[####]");
    }
}
