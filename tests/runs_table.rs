//! `ferry runs` as a table: run records of different id lengths, written by ferry's own record
//! writer into a temporary project, listed by the ferry binary with every column aligned under
//! its header.

mod common;

use common::ferry;
use ferry::runs::{Output, RunRecord, Status};

fn record(
    id: &str,
    status: Status,
    exit_code: Option<i64>,
    secs: f64,
    outputs: &[&str],
) -> RunRecord {
    RunRecord {
        id: id.to_string(),
        status,
        started: "2026-11-23T11:45:02Z".into(),
        duration_secs: secs,
        env: None,
        image: "ferry/demo-project:0123456789ab".into(),
        image_id: "sha256:00".into(),
        spec_hash: "sha256:4f2a9c81d03be5aa77".into(),
        command: vec!["python".into(), "train.py".into()],
        exit_code,
        reason: None,
        outputs: outputs
            .iter()
            .map(|p| Output {
                path: p.to_string(),
                sha256: "0".repeat(64),
                size: 1,
            })
            .collect(),
        log: format!(".ferry/runs/{id}/train.log"),
        notebook: None,
        steps: vec![],
        score: None,
    }
}

/// The column each header word starts at (character offsets) and where DURATION ends.
fn starts(header: &str) -> Vec<usize> {
    ["RUN", "STATUS", "DURATION", "SPEC", "OUTPUTS"]
        .iter()
        .map(|h| {
            header
                .find(h)
                .unwrap_or_else(|| panic!("{h} missing in {header:?}"))
        })
        .collect()
}

#[test]
fn runs_are_listed_in_columns_aligned_under_the_header_whatever_the_id_length() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let records = [
        record(
            "1",
            Status::Succeeded,
            Some(0),
            0.25,
            &["models/model.onnx"],
        ),
        record(
            "20261123-114502-123-3f9a",
            Status::Failed,
            Some(137),
            75.0,
            &[],
        ),
        record(
            "20261124-090000-001-beef-retried-on-another-node",
            Status::Interrupted,
            None,
            3.5,
            &["models/a.onnx", "metrics.json"],
        ),
    ];
    for r in &records {
        r.save(root).unwrap();
    }

    let out = ferry(root, &["runs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + records.len(), "{text}");
    let cols = starts(lines[0]);
    let duration_end = cols[2] + "DURATION".len();

    // Newest (largest id) first, as `ferry runs` sorts them.
    let expected = [
        (
            "20261124-090000-001-beef-retried-on-another-node",
            "interrupted",
            "3.5s",
            "models/a.onnx, metrics.json",
        ),
        ("20261123-114502-123-3f9a", "failed(137)", "1m15s", "-"),
        ("1", "succeeded", "250ms", "models/model.onnx"),
    ];
    for (line, (id, status, duration, outputs)) in lines[1..].iter().zip(expected) {
        assert!(line.starts_with(id), "{line:?}");
        assert_eq!(&line[cols[1]..cols[1] + status.len()], status, "{text}");
        assert_eq!(
            &line[duration_end - duration.len()..duration_end],
            duration,
            "{text}"
        );
        assert_eq!(&line[cols[3]..cols[3] + 12], "4f2a9c81d03b", "{text}");
        assert_eq!(&line[cols[4]..], outputs, "{text}");
        // Every cell starts after a gap: nothing runs into the column before it.
        for c in &cols[1..] {
            assert_eq!(&line[c - 2..*c], "  ", "{text}");
        }
        assert_eq!(line.trim_end(), *line, "no trailing spaces: {line:?}");
    }
}
