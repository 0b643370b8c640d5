//! `ferry score`, run as a user runs it: CSV and Parquet in and out, columns mapped by name, by
//! the model's metadata and by `--columns`, kept columns, the answers compared with what ONNX
//! Runtime itself computed for the churn and recommender templates' models, every bad input
//! refused with its file, row and column, and never a half-written output.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use common::{ferry, ferry_cmd, fixture};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = ferry(dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let out = ferry(dir, args);
    assert_eq!(out.status.code(), Some(1), "ferry {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn fixture_str(name: &str) -> String {
    fixture(name).display().to_string()
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn read_parquet(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn f32s(batch: &RecordBatch, column: &str) -> Vec<f32> {
    batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column} in {:?}", batch.schema()))
        .as_primitive::<Float32Type>()
        .values()
        .to_vec()
}

#[test]
fn csv_and_parquet_in_and_out_with_kept_columns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An unused column between the model's, and an id to keep.
    std::fs::write(
        d.join("in.csv"),
        "id,a_0,note,a_1,b_0,b_1\nx1,1,n,2,3,4\nx2,5,n,6,7,8\nx3,0.5,n,1.5,2.5,3.5\n",
    )
    .unwrap();
    let out = ok(
        d,
        &[
            "score",
            "in.csv",
            "-o",
            "out.parquet",
            "--model",
            &fixture_str("two.onnx"),
            "--keep",
            "id",
            "--json",
        ],
    );
    let summary = json(&out);
    assert_eq!(summary["rows"], 3);
    assert_eq!(summary["output_sha256"], sha256(&d.join("out.parquet")));
    assert_eq!(
        summary["columns"],
        serde_json::json!(["id", "sum_0", "sum_1", "diff_0", "diff_1"])
    );
    let scored = read_parquet(&d.join("out.parquet"));
    let ids: Vec<&str> = scored
        .column_by_name("id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(ids, ["x1", "x2", "x3"]);
    assert_eq!(f32s(&scored, "sum_0"), [4.0, 12.0, 3.0]);
    assert_eq!(f32s(&scored, "sum_1"), [6.0, 14.0, 5.0]);
    assert_eq!(f32s(&scored, "diff_1"), [-2.0, -2.0, -2.0]);

    // Parquet back in, its output columns named as inputs with --columns, CSV out.
    ok(
        d,
        &[
            "score",
            "out.parquet",
            "-o",
            "back.csv",
            "--model",
            &fixture_str("two.onnx"),
            "--columns",
            "a=sum_0,sum_1,b=diff_0,diff_1",
            "--keep",
            "id",
            "--outputs",
            "sum",
            "-q",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(d.join("back.csv")).unwrap(),
        "id,sum_0,sum_1\nx1,2.0,4.0\nx2,10.0,12.0\nx3,1.0,3.0\n"
    );
}

#[test]
fn directories_of_mixed_files_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("parts")).unwrap();
    std::fs::write(
        d.join("parts/a.csv"),
        "id,height,width,depth\n1,1,2,3\n2,4,5,6\n",
    )
    .unwrap();
    write_parquet(
        &d.join("parts/b.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![3, 4, 5])) as ArrayRef),
            (
                "height",
                Arc::new(Float64Array::from(vec![7.0, 8.0, 9.0])) as ArrayRef,
            ),
            (
                "width",
                Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef,
            ),
            (
                "depth",
                Arc::new(Float64Array::from(vec![0.5, 0.25, 0.125])) as ArrayRef,
            ),
        ],
    );
    std::fs::write(d.join("parts/_SUCCESS"), "").unwrap();
    // The model's metadata names its input's columns and its output's.
    let out = ok(
        d,
        &[
            "score",
            "parts",
            "-o",
            "scores.csv",
            "--model",
            &fixture_str("meta.onnx"),
            "--keep",
            "id",
            "--json",
            "--batch-size",
            "2",
        ],
    );
    let summary = json(&out);
    assert_eq!(summary["rows"], 5);
    let rows: Vec<u64> = summary["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [2, 3]);
    assert_eq!(
        std::fs::read_to_string(d.join("scores.csv")).unwrap(),
        "id,height2,width2,depth2\n1,2.0,4.0,6.0\n2,8.0,10.0,12.0\n3,14.0,2.0,1.0\n4,16.0,2.0,0.5\n5,18.0,2.0,0.25\n"
    );
}

#[test]
fn churn_raw_columns_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("churn_raw_expected.json")).unwrap())
            .unwrap();
    let rows = expected["rows"].as_u64().unwrap() as usize;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/churn/data/customers.csv");
    let text = std::fs::read_to_string(data).unwrap();
    let head: Vec<&str> = text.lines().take(rows + 1).collect();
    std::fs::write(d.join("customers.csv"), head.join("\n") + "\n").unwrap();
    for (format, batch) in [("csv", "64"), ("parquet", "7")] {
        let output = format!("scores.{format}");
        ok(
            d,
            &[
                "score",
                "customers.csv",
                "-o",
                &output,
                "--model",
                &fixture_str("churn_raw.onnx"),
                "--keep",
                "customer_id",
                "--batch-size",
                batch,
                "-q",
            ],
        );
        // (customer_id, label, [p0, p1]) per row, from either format.
        let got: Vec<(String, i64, [f32; 2])> = if format == "parquet" {
            let scored = read_parquet(&d.join(&output));
            let ids = scored
                .column_by_name("customer_id")
                .unwrap()
                .as_string::<i32>();
            let labels = scored
                .column_by_name("label")
                .unwrap()
                .as_primitive::<Int64Type>();
            let (p0, p1) = (
                f32s(&scored, "probabilities_0"),
                f32s(&scored, "probabilities_1"),
            );
            (0..scored.num_rows())
                .map(|r| (ids.value(r).to_string(), labels.value(r), [p0[r], p1[r]]))
                .collect()
        } else {
            let text = std::fs::read_to_string(d.join(&output)).unwrap();
            let mut lines = text.lines();
            assert_eq!(
                lines.next(),
                Some("customer_id,label,probabilities_0,probabilities_1")
            );
            lines
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (
                        f[0].to_string(),
                        f[1].parse().unwrap(),
                        [f[2].parse().unwrap(), f[3].parse().unwrap()],
                    )
                })
                .collect()
        };
        assert_eq!(got.len(), rows);
        for (r, (id, label, p)) in got.iter().enumerate() {
            assert_eq!(id, expected["customer_id"][r].as_str().unwrap());
            assert_eq!(*label, expected["label"][r].as_i64().unwrap(), "row {r}");
            for k in 0..2 {
                let want = expected["probabilities"][r][k].as_f64().unwrap() as f32;
                // The same ONNX Runtime and model: the same bits, whatever the batch size.
                assert_eq!(
                    p[k].to_bits(),
                    want.to_bits(),
                    "{format} row {r} output {k}"
                );
            }
        }
    }
}

#[test]
fn recommender_ids_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("recommender_expected.json")).unwrap(),
    )
    .unwrap();
    let users: Vec<i64> = expected["user_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_i64().unwrap())
        .collect();
    write_parquet(
        &d.join("users.parquet"),
        vec![(
            "user_id",
            Arc::new(Int64Array::from(users.clone())) as ArrayRef,
        )],
    );
    ok(
        d,
        &[
            "score",
            "users.parquet",
            "-o",
            "top.parquet",
            "--model",
            &fixture_str("recommender.onnx"),
            "--keep",
            "user_id",
            "-q",
        ],
    );
    let scored = read_parquet(&d.join("top.parquet"));
    assert_eq!(scored.num_rows(), users.len());
    for (r, _) in users.iter().enumerate() {
        for k in 0..10 {
            let item = scored
                .column_by_name(&format!("items_{k}"))
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(r);
            assert_eq!(
                item,
                expected["items"][r][k].as_i64().unwrap(),
                "user row {r}, item {k}"
            );
            let score = f32s(&scored, &format!("scores_{k}"))[r];
            let want = expected["scores"][r][k].as_f64().unwrap() as f32;
            assert_eq!(score.to_bits(), want.to_bits(), "user row {r}, score {k}");
        }
    }
}

#[test]
fn bad_cells_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixture_str("meta.onnx");
    let files = [
        ("cast.csv", "height,width,depth\n1,2,3\n4,five,6\n"),
        ("empty.csv", "height,width,depth\n1,2,3\n4,5,6\n7,,9\n"),
        ("nan.csv", "height,width,depth\n1,NaN,3\n"),
    ];
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    let err = refused(d, &["score", "cast.csv", "-o", "o.csv", "--model", &model]);
    assert!(
        err.contains("cast.csv, row 2, column 'width': 'five' is not a Float32"),
        "{err}"
    );
    let err = refused(d, &["score", "empty.csv", "-o", "o.csv", "--model", &model]);
    assert!(err.contains("empty.csv, row 3, column 'width'"), "{err}");
    assert!(err.contains("empty") && err.contains("--fill"), "{err}");
    let err = refused(d, &["score", "nan.csv", "-o", "o.csv", "--model", &model]);
    assert!(
        err.contains("nan.csv, row 1, column 'width': the cell is NaN"),
        "{err}"
    );
    let err = refused(
        d,
        &[
            "score", "nan.csv", "-o", "o.csv", "--model", &model, "--fill", "x",
        ],
    );
    assert!(err.contains("--fill x"), "{err}");
    let leftovers: Vec<_> = names(d)
        .into_iter()
        .filter(|n| n.starts_with('.') || n.starts_with("o."))
        .collect();
    assert!(leftovers.is_empty(), "nothing half-written: {leftovers:?}");

    ok(
        d,
        &[
            "score",
            "empty.csv",
            "-o",
            "o.csv",
            "--model",
            &model,
            "--fill",
            "0",
            "-q",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(d.join("o.csv")).unwrap(),
        "height2,width2,depth2\n2.0,4.0,6.0\n8.0,10.0,12.0\n14.0,0.0,18.0\n"
    );

    // A Parquet file's cast failure is named by row too.
    write_parquet(
        &d.join("text.parquet"),
        vec![
            (
                "height",
                Arc::new(StringArray::from(vec!["1", "2", "tall"])) as ArrayRef,
            ),
            (
                "width",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
            ),
            (
                "depth",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
            ),
        ],
    );
    let err = refused(
        d,
        &["score", "text.parquet", "-o", "p.csv", "--model", &model],
    );
    assert!(
        err.contains("text.parquet, row 3, column 'height': 'tall' is not a Float32"),
        "{err}"
    );
}

#[test]
fn bad_files_models_and_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixture_str("meta.onnx");
    std::fs::write(d.join("in.csv"), "height,width,size\n1,2,3\n").unwrap();
    let err = refused(d, &["score", "in.csv", "-o", "o.csv", "--model", &model]);
    assert!(err.contains("column 'depth' is missing"), "{err}");
    assert!(err.contains("X (FP32) ← height, width, depth"), "{err}");
    assert!(err.contains("the file has: height, width, size"), "{err}");
    assert!(err.contains("--columns X="), "{err}");
    // The same file, mapped.
    ok(
        d,
        &[
            "score",
            "in.csv",
            "-o",
            "o.csv",
            "--model",
            &model,
            "--columns",
            "X=height,width,size",
            "-q",
        ],
    );

    // An output that exists stays as it is without --force.
    std::fs::write(d.join("o.csv"), "precious\n").unwrap();
    let err = refused(
        d,
        &[
            "score",
            "in.csv",
            "-o",
            "o.csv",
            "--model",
            &model,
            "--columns",
            "X=height,width,size",
        ],
    );
    assert!(
        err.contains("o.csv exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("o.csv")).unwrap(),
        "precious\n"
    );

    // A truncated Parquet file.
    write_parquet(
        &d.join("good.parquet"),
        vec![(
            "height",
            Arc::new(Float64Array::from(vec![1.0; 100])) as ArrayRef,
        )],
    );
    let bytes = std::fs::read(d.join("good.parquet")).unwrap();
    std::fs::write(d.join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let err = refused(
        d,
        &["score", "cut.parquet", "-o", "c.csv", "--model", &model],
    );
    assert!(
        err.contains("cut.parquet: not a readable Parquet file"),
        "{err}"
    );
    std::fs::write(d.join("notes.txt"), "x").unwrap();
    let err = refused(d, &["score", "notes.txt", "-o", "c.csv", "--model", &model]);
    assert!(err.contains("name it .csv, .tsv or .parquet"), "{err}");
    let err = refused(d, &["score", "in.csv", "-o", "c.json", "--model", &model]);
    assert!(err.contains("its extension chooses the format"), "{err}");
    let err = refused(
        d,
        &[
            "score", "in.csv", "-o", "in.csv", "--model", &model, "--force",
        ],
    );
    assert!(err.contains("is also an input"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("in.csv")).unwrap(),
        "height,width,size\n1,2,3\n"
    );

    // Models that cannot score a table.
    std::fs::write(d.join("ab.csv"), "a_0,a_1,b_0,b_1\n1,2,3,4\n").unwrap();
    std::fs::write(d.join("x.csv"), "X_0,X_1,X_2\n1,2,3\n").unwrap();
    for (input, model, why) in [
        ("ab.csv", "mixed.onnx", "differ in their first dimension"),
        ("ab.csv", "seq.onnx", "--columns X=COL1"),
        ("x.csv", "flat.onnx", "not one value per row"),
    ] {
        let err = refused(
            d,
            &[
                "score",
                input,
                "-o",
                "m.csv",
                "--model",
                &fixture_str(model),
            ],
        );
        assert!(err.contains(why), "{model}: {err}");
    }
    let err = refused(
        d,
        &["score", "x.csv", "-o", "m.csv", "--model", "missing.onnx"],
    );
    assert!(err.contains("missing.onnx"), "{err}");
    let err = refused(
        d,
        &[
            "score",
            "x.csv",
            "-o",
            "m.csv",
            "--model",
            &model,
            "--batch-size",
            "0",
        ],
    );
    assert!(
        err.contains("--batch-size 0: give 1 to 1048576 rows"),
        "{err}"
    );
    let err = refused(d, &["score", "x.csv", "-o", "f.csv"]);
    assert!(err.contains("which model?"), "{err}");
}

#[test]
fn a_failed_write_leaves_no_output() {
    // A file size limit stands in for a full disk: the write fails the same way, mid-file.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("height,width,depth\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{i},{i},{i}\n"));
    }
    std::fs::write(d.join("in.csv"), csv).unwrap();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let model = fixture_str("meta.onnx");
    let out = std::process::Command::new("sh")
        .current_dir(d)
        .env("NO_COLOR", "1")
        .args([
            "-c",
            // 100 blocks of 512 bytes: the input is larger, the output cannot be written whole.
            r#"trap '' XFSZ; ulimit -f 100; exec "$0" score in.csv -o out.csv --model "$1""#,
            ferry,
            &model,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writing out.csv") && err.contains("nothing was left"),
        "{err}"
    );
    assert_eq!(names(d), ["in.csv"], "the temporary file is gone too");
}

#[test]
fn ctrl_c_stops_scoring_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::with_capacity(64 << 20);
    csv.push_str("height,width,depth\n");
    for i in 0..3_000_000u32 {
        csv.push_str(&format!("{i},{},{}\n", i % 97, i % 13));
    }
    std::fs::write(d.join("in.csv"), csv).unwrap();
    let mut child = ferry_cmd(
        d,
        &[
            "score",
            "in.csv",
            "-o",
            "out.parquet",
            "--model",
            &fixture_str("meta.onnx"),
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The temporary output is made after the signal handler is in place: once it is there, a
    // Ctrl-C reaches ferry's cleanup.
    let partial = |d: &Path| {
        names(d)
            .iter()
            .any(|n| n.starts_with(".out.parquet.ferry-"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !partial(d) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary output appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ferry ended before writing"
        );
        std::thread::yield_now();
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted; nothing was written"), "{err}");
    assert_eq!(
        names(d),
        ["in.csv"],
        "neither the output nor its temporary file"
    );
}

#[test]
fn the_spec_names_defaults_and_runs_record_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::copy(fixture("meta.onnx"), d.join("model.onnx")).unwrap();
    std::fs::write(d.join("data/in.csv"), "id,h,w,depth\nA,1,2,3\nB,4,5,6\n").unwrap();
    std::fs::write(
        d.join("ferry.yaml"),
        "name: scoring\nenvironment: { base: python:3.11-slim }\nserve: { model: model.onnx }\n\
         score:\n  inputs: [data/in.csv]\n  output: out/scores.parquet\n  keep: [id]\n  columns: { X: [h, w, depth] }\n",
    )
    .unwrap();
    let out = ok(d, &["score", "--json"]);
    let summary = json(&out);
    assert_eq!(summary["rows"], 2);
    let run = summary["run"].as_str().unwrap().to_string();
    let scored = read_parquet(&d.join("out/scores.parquet"));
    assert_eq!(f32s(&scored, "depth2"), [6.0, 12.0]);

    let record: Value = serde_json::from_slice(
        &std::fs::read(d.join(".ferry/runs").join(&run).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["status"], "succeeded");
    let score = &record["score"];
    assert_eq!(score["model"], "model.onnx");
    assert_eq!(score["model_sha256"], sha256(&d.join("model.onnx")));
    assert_eq!(score["inputs"][0]["path"], "data/in.csv");
    assert_eq!(score["inputs"][0]["sha256"], sha256(&d.join("data/in.csv")));
    assert_eq!(score["inputs"][0]["rows"], 2);
    assert_eq!(score["output"], "out/scores.parquet");
    assert_eq!(
        score["output_sha256"],
        sha256(&d.join("out/scores.parquet"))
    );
    let listed = ok(d, &["runs", "--json"]);
    assert!(
        json(&listed)
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == run.as_str()),
        "ferry runs lists the scoring run"
    );

    let shown = String::from_utf8_lossy(&ok(d, &["runs", "show", &run]).stdout).to_string();
    assert!(shown.contains("  model  model.onnx  "), "{shown}");
    assert!(
        shown.contains("  in     data/in.csv  ") && shown.contains("  2 rows"),
        "{shown}"
    );
    assert!(shown.contains("  out    out/scores.parquet  "), "{shown}");

    // A failed scoring run is recorded as failed, with why.
    std::fs::write(d.join("data/in.csv"), "id,h,w,depth\nA,1,x,3\n").unwrap();
    let out = ferry_cmd(d, &["score", "--force"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let runs = json(&ok(d, &["runs", "--json"]));
    let failed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "failed")
        .expect("the failed run is listed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("row 1, column 'w'"),
        "{failed}"
    );
    assert_eq!(
        f32s(&read_parquet(&d.join("out/scores.parquet")), "depth2"),
        [6.0, 12.0]
    );
}
