//! Terminal output shared by every long operation: spinners for steps, a tail of the last output
//! lines (shown when a step fails), and the `--quiet` / `--json` modes.
//!
//! Steps and messages go to stderr; stdout is reserved for a command's result (a resolved spec,
//! a JSON document), so `ferry … --json | jq` always works. `outcome` writes that result, and the
//! `✓` lines with which commands end.

mod outcome;

pub use outcome::{print_json, print_removed};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much a command tells the user while it works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// Progress and messages on stderr.
    Human,
    /// Only errors (and the command's result on stdout).
    Quiet,
    /// Only the machine-readable result on stdout; errors on stderr.
    Json,
}

/// How many output lines a step keeps to show when it fails.
const TAIL_LINES: usize = 20;

#[derive(Clone, Debug)]
pub struct Ui {
    mode: OutputMode,
    interactive: bool,
}

impl Ui {
    pub fn new(mode: OutputMode) -> Self {
        let interactive = mode == OutputMode::Human && console::Term::stderr().is_term();
        Ui { mode, interactive }
    }

    /// A `Ui` that prints nothing; for library callers and tests.
    pub fn silent() -> Self {
        Ui {
            mode: OutputMode::Quiet,
            interactive: false,
        }
    }

    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    /// Human output on a terminal: where progress bars are drawn.
    pub fn is_interactive(&self) -> bool {
        self.interactive
    }

    pub fn is_human(&self) -> bool {
        self.mode == OutputMode::Human
    }

    /// A message for a person; dropped in quiet and JSON modes.
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.is_human() {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A warning; shown unless the output is JSON (where it would break nothing, but is noise).
    pub fn warn(&self, msg: impl AsRef<str>) {
        if self.mode != OutputMode::Json {
            eprintln!(
                "{} {}",
                console::style("warning:").yellow().bold(),
                msg.as_ref()
            );
        }
    }

    /// Starts a step: a spinner on a terminal, a plain line otherwise.
    /// A bar of `label` for work whose size is known (bytes, rows), on interactive terminals
    /// only; the caller sets its length, position and message.
    pub fn bar(&self, label: &str) -> Option<ProgressBar> {
        self.is_interactive().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let template =
                format!("{label} [{{bar:30.cyan/dim}}] {{percent:>3}}% {{msg}} eta {{eta}}");
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        })
    }

    pub fn step(&self, msg: impl Into<String>) -> Step {
        let msg = msg.into();
        let bar = if self.interactive {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {prefix} {msg:.dim} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(msg.clone());
            pb.enable_steady_tick(Duration::from_millis(100));
            Some(pb)
        } else {
            if self.is_human() {
                eprintln!("{msg} ...");
            }
            None
        };
        Step {
            title: msg,
            bar,
            human: self.is_human(),
            started: Instant::now(),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES))),
            finished: false,
        }
    }
}

/// One long-running step. Dropping it unfinished clears the spinner (e.g. on an error path).
pub struct Step {
    title: String,
    bar: Option<ProgressBar>,
    human: bool,
    started: Instant,
    tail: Arc<Mutex<VecDeque<String>>>,
    finished: bool,
}

impl Step {
    /// Replaces the detail shown after the step's title.
    pub fn set_detail(&self, detail: impl AsRef<str>) {
        if let Some(pb) = &self.bar {
            pb.set_message(truncate(detail.as_ref(), 60));
        }
    }

    /// Records one line of the step's output: shown as the detail, kept for a failure report.
    pub fn output_line(&self, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        self.set_detail(line);
        if let Ok(mut tail) = self.tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }

    /// The last output lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the step successfully with a summary such as "built churn-env (12.3s)".
    pub fn finish(mut self, summary: impl AsRef<str>) {
        self.finished = true;
        let line = format!(
            "{} {} {}",
            console::style("✓").green(),
            summary.as_ref(),
            console::style(format!("({})", human_duration(self.started.elapsed()))).dim()
        );
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        if self.human {
            eprintln!("{line}");
        }
    }

    /// Ends the step as failed; the caller reports the error itself.
    pub fn fail(mut self) {
        self.finished = true;
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        if self.human {
            eprintln!("{} {}", console::style("✗").red(), self.title);
        }
    }

    /// Prints a line above the spinner without breaking it.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(pb) => pb.println(line.as_ref()),
            None => {
                if self.human {
                    eprintln!("{}", line.as_ref());
                }
            }
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished
            && let Some(pb) = &self.bar
        {
            pb.finish_and_clear();
        }
    }
}

/// An error's "last output" block: the lines a failed step or container printed last.
pub fn tail_block(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n  last output:");
    for l in tail {
        s.push_str("\n    ");
        s.push_str(l);
    }
    s
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Rows of cells under a header, each column as wide as its widest cell (in terminal columns)
/// and two spaces from the next; columns whose index is in `right` are aligned to the right
/// (numbers, durations). The last column is not padded, so lines carry no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let columns = lines.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .filter_map(|r| r.get(c))
                .map(|cell| console::measure_text_width(cell))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in lines {
        let mut line = String::new();
        for (c, width) in widths.iter().enumerate() {
            let cell = row.get(c).map(String::as_str).unwrap_or("");
            let pad = " ".repeat(width.saturating_sub(console::measure_text_width(cell)));
            if c > 0 {
                line.push_str("  ");
            }
            if right.contains(&c) {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keeps_only_the_last_lines() {
        let ui = Ui::silent();
        let step = ui.step("build");
        for i in 0..50 {
            step.output_line(&format!("line {i}"));
        }
        let tail = step.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.first().map(String::as_str), Some("line 30"));
        assert_eq!(tail.last().map(String::as_str), Some("line 49"));
    }

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec![
                "a-very-long-first-cell".to_string(),
                "1.5s".into(),
                "x".into(),
            ],
            vec!["b".to_string(), "12m03s".into(), "é, ü".into()],
        ];
        let t = table(&["NAME", "TIME", "NOTE"], &rows, &[1]);
        assert_eq!(
            t,
            "NAME                      TIME  NOTE\n\
             a-very-long-first-cell    1.5s  x\n\
             b                       12m03s  é, ü\n"
        );
        assert_eq!(table(&["ONLY"], &[], &[]), "ONLY\n");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(289_000_000), "289.0 MB");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(75)), "1m15s");
    }
}
