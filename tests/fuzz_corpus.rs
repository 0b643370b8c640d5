//! The fuzz targets' committed corpus (`fuzz/corpus/`) and their findings
//! (`tests/fixtures/fuzz/`), replayed in the ordinary test suite: what the fuzzers once found
//! interesting keeps working without cargo-fuzz or a nightly compiler.

use std::path::{Path, PathBuf};

use ferry::server::fuzzing::{self, BatchCase, BatchJob};
use ferry::spec::Project;

/// Every file of a target's corpus and findings, as (name, bytes).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fixtures/fuzz").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            found.push((path, bytes));
        }
    }
    found.sort();
    found
}

#[test]
fn infer_corpus_keeps_the_decoders_invariants() {
    let inputs = inputs("infer");
    assert!(!inputs.is_empty(), "the infer corpus is missing");
    for (path, data) in inputs {
        if let Err(broken) = fuzzing::infer(&data) {
            panic!("{}: {broken}", path.display());
        }
    }
}

#[test]
fn spec_corpus_loads_each_environment_it_validates() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "requirements.txt",
        "train.py",
        "data/customers.csv",
        "artifacts/model.onnx",
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "x\n").unwrap();
    }
    let file = dir.path().join("ferry.yaml");
    let inputs = inputs("spec");
    assert!(!inputs.is_empty(), "the spec corpus is missing");
    for (path, data) in inputs {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let project = match Project::load_str(text, &file, None) {
            Ok(project) => project,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        for env in &project.environments {
            if let Err(e) = Project::load_str(text, &file, Some(env)) {
                panic!("{}: environment '{env}' does not load: {e}", path.display());
            }
        }
    }
}

#[test]
fn load_str_reads_as_load_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("requirements.txt"), "numpy\n").unwrap();
    let text = "name: demo\nenvironment:\n  base: python:3.11-slim\n  requirements: requirements.txt\nenvironments:\n  dev: { target: docker }\n";
    let file = dir.path().join("ferry.yaml");
    std::fs::write(&file, text).unwrap();
    let from_text = Project::load_str(text, &file, None).unwrap();
    let from_file = Project::load(&file, None).unwrap();
    assert_eq!(from_text.root, from_file.root);
    assert_eq!(from_text.environments, from_file.environments);
    assert_eq!(from_text.spec.env.as_deref(), Some("dev"));
}

fn job(rows: usize, outputs: &[usize]) -> BatchJob {
    BatchJob {
        rows,
        outputs: outputs.to_vec(),
    }
}

#[test]
fn batches_split_back_into_each_requests_rows() {
    let cases = [
        // One FP32 input of two columns, three requests.
        BatchCase {
            datatypes: vec![11],
            inner: vec![vec![2]],
            jobs: vec![job(1, &[0]), job(3, &[0]), job(2, &[0])],
            extra_row: false,
        },
        // Every datatype, outputs asked for in another order, some twice.
        BatchCase {
            datatypes: (0..13).collect(),
            inner: (0..13).map(|i| vec![1 + i % 3, 2]).collect(),
            jobs: vec![job(2, &[12, 0, 5]), job(1, &[]), job(4, &[9, 9, 3])],
            extra_row: false,
        },
        // A model that returns a row too many cannot be split.
        BatchCase {
            datatypes: vec![8, 12],
            inner: vec![vec![3], vec![]],
            jobs: vec![job(1, &[0, 1]), job(2, &[1])],
            extra_row: true,
        },
    ];
    for case in &cases {
        if let Err(broken) = fuzzing::batch_round_trip(case) {
            panic!("{broken}\n{case:?}");
        }
    }
}
