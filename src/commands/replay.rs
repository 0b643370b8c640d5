//! `ferry replay`: a served model's logged traffic through a candidate model, and how the
//! candidate's answers agree with the logged ones; `--min-agreement` makes it a CI gate.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::cli::CliError;
use crate::replay::{self, Latency, Located, Options, Progress, Report};
use crate::server::compare::Tolerance;
use crate::ui::{OutputMode, Ui, human_duration, print_json, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Traffic logs (JSON lines, as `ferry serve-model` writes them), rotated files too:
    /// e.g. logs/traffic.jsonl*.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// The candidate model to run the logged requests through.
    #[arg(short, long, value_name = "CANDIDATE.onnx")]
    model: PathBuf,
    /// Only the records of this served model (needed when the logs hold several).
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// Fail when a smaller share of rows agrees, e.g. 0.99.
    #[arg(long, value_name = "FRACTION")]
    min_agreement: Option<f64>,
    /// How far apart single scores may be and agree, absolute and relative.
    #[arg(long, value_name = "T", default_value_t = 1e-4)]
    tolerance: f64,
    /// ONNX Runtime threads per operator (1, as the server runs each session).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
}

pub fn run(args: Args, ui: &Ui) -> Result<(), CliError> {
    if let Some(min) = args.min_agreement
        && !(0.0..=1.0).contains(&min)
    {
        return Err(CliError::Usage(format!(
            "--min-agreement {min}: give a share of rows from 0 to 1, e.g. 0.99"
        )));
    }
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        return Err(CliError::Usage(format!(
            "--tolerance {}: give a difference of 0 or more, e.g. 1e-4",
            args.tolerance
        )));
    }
    let options = Options {
        logs: args.logs,
        model: args.model,
        model_name: args.model_name,
        threads: args.threads.max(1),
        tolerance: Tolerance {
            absolute: args.tolerance,
            relative: args.tolerance,
        },
    };
    let started = Instant::now();
    let meter = Meter::new(ui);
    let result = replay::replay(&options, &meter);
    meter.clear();
    let report = result?;
    let passed = args
        .min_agreement
        .map(|min| report.agreement.is_some_and(|a| a >= min));
    if ui.mode() == OutputMode::Json {
        print_json(&Gated {
            report: &report,
            min_agreement: args.min_agreement,
            passed,
        });
    } else {
        print_report(ui, &report, started.elapsed());
    }
    match (args.min_agreement, passed) {
        (Some(min), Some(false)) => Err(CliError::AgreementBelow {
            agreement: report.agreement,
            min,
            agreeing_rows: report.agreeing_rows,
            rows: report.rows,
        }),
        _ => Ok(()),
    }
}

/// The report with the gate's verdict, as `--json` prints it.
#[derive(Serialize)]
struct Gated<'a> {
    #[serde(flatten)]
    report: &'a Report,
    min_agreement: Option<f64>,
    /// `None` without --min-agreement.
    passed: Option<bool>,
}

fn print_report(ui: &Ui, report: &Report, took: Duration) {
    ui.done(format!(
        "replayed {} of model '{}' ({} rows) through {} in {}",
        plural(report.records, "record"),
        report.model,
        report.rows,
        report.candidate.display(),
        human_duration(took)
    ));
    if report.logged_sha256.contains(&report.candidate_sha256) {
        ui.info("  the candidate is the logged model itself (same sha256)");
    }
    if let (Some(from), Some(to)) = (&report.from, &report.to) {
        ui.info(format!("  requests from {from} to {to}"));
    }
    if report.other_models > 0 {
        ui.info(format!(
            "  left out {} of other models",
            plural(report.other_models, "record")
        ));
    }
    if let Some(first) = &report.first_skipped {
        ui.info(format!(
            "  skipped {} that do not parse; the first, {}",
            plural(report.skipped_lines, "line"),
            located(first)
        ));
    }
    if let Some(first) = &report.first_failure {
        ui.warn(format!(
            "the candidate failed on {} (their rows disagree); the first, {}",
            plural(report.failed_runs, "record"),
            located(first)
        ));
    }
    ui.info(format!(
        "  agreement {} ({} of {} rows)",
        percent(report.agreement),
        report.agreeing_rows,
        report.rows
    ));
    let rows: Vec<Vec<String>> = report
        .outputs
        .iter()
        .map(|o| {
            let spread = o.abs_diff.as_ref();
            let diff =
                |pick: fn(&replay::Spread) -> f64| spread.map_or("-".into(), |s| num(pick(s)));
            vec![
                o.name.clone(),
                o.kind.name().to_string(),
                percent(o.agreement),
                format!("{}/{}", o.agreeing_rows, o.rows),
                o.top1.map_or("-".into(), |t| percent(t.rate)),
                o.topk
                    .map_or("-".into(), |t| format!("{} (k={})", num(t.overlap), t.k)),
                diff(|s| s.p50),
                diff(|s| s.p90),
                diff(|s| s.p99),
                diff(|s| s.max),
            ]
        })
        .collect();
    if !rows.is_empty() {
        ui.info("");
        ui.info(indent(&table(
            &[
                "OUTPUT", "KIND", "AGREE", "ROWS", "TOP-1", "TOP-K", "|Δ| P50", "P90", "P99", "MAX",
            ],
            &rows,
            &[2, 3, 4, 5, 6, 7, 8, 9],
        )));
    }
    for o in &report.outputs {
        if let Some(first) = &o.first_mismatch {
            ui.warn(format!(
                "output '{}' could not be compared in {}; the first, {}",
                o.name,
                plural(o.mismatched_records, "record"),
                located(first)
            ));
        }
    }
    let latency = |l: Option<Latency>| match l {
        Some(l) => vec![num(l.p50), num(l.p90), num(l.p99)],
        None => vec!["-".into(), "-".into(), "-".into()],
    };
    ui.info("");
    let mut candidate = vec!["candidate".to_string()];
    candidate.extend(latency(report.latency_ms.candidate));
    let mut logged = vec!["logged".to_string()];
    logged.extend(latency(report.latency_ms.logged));
    ui.info(indent(&table(
        &["LATENCY (ms)", "P50", "P90", "P99"],
        &[candidate, logged],
        &[1, 2, 3],
    )));
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn located(at: &Located) -> String {
    format!("{}:{}: {}", at.file.display(), at.line, at.error)
}

/// A share as a percentage that never rounds up to 100% (or down to 0%) when it is not.
fn percent(share: Option<f64>) -> String {
    match share {
        None => "-".into(),
        Some(s) if s >= 1.0 => "100%".into(),
        Some(s) if s <= 0.0 => "0%".into(),
        Some(s) => format!("{:.1}%", ((s * 1000.0).floor() / 10.0).max(0.1)),
    }
}

/// Four significant digits or so, short.
fn num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        if x.is_nan() { "NaN" } else { "inf" }.into()
    } else if (1e-3..1e6).contains(&x.abs()) {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.2e}")
    }
}

/// The progress bar: bytes of the logs read in each pass, records replayed.
struct Meter {
    bar: Option<ProgressBar>,
}

impl Meter {
    fn new(ui: &Ui) -> Meter {
        let bar = ui.bar("{prefix}");
        Meter { bar }
    }

    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Meter {
    fn pass(&self, name: &'static str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(name);
            bar.set_length(bytes.max(1));
            bar.set_position(0);
            bar.set_message("");
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    fn advance(&self, bytes: u64, records: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
            if records > 0 {
                bar.set_message(plural(records, "record"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_numbers_read_well() {
        assert_eq!(percent(Some(1.0)), "100%");
        assert_eq!(percent(Some(0.9999)), "99.9%");
        assert_eq!(percent(Some(0.8333)), "83.3%");
        assert_eq!(percent(Some(0.00001)), "0.1%");
        assert_eq!(percent(Some(0.0)), "0%");
        assert_eq!(percent(None), "-");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(12.34567), "12.3457");
        assert_eq!(num(1.5e-7), "1.50e-7");
        assert_eq!(num(f64::INFINITY), "inf");
    }
}
