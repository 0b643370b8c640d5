//! The parts of a sharded scoring run joined into one output, in shard order: CSV parts byte
//! for byte (every part's header checked against the first's, then left out), Parquet parts
//! batch by batch into one file. Written like any output: to a temporary file, renamed when
//! whole.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_array::RecordBatchReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ScoreError;
use super::sink::{Sink, Written};
use super::source::Format;

/// Joins `parts` (all of `output`'s format) into `output`.
pub fn join(parts: &[PathBuf], output: &Path, force: bool) -> Result<Written, ScoreError> {
    let mut sink = Sink::create(output, force)?;
    let bad = |path: &Path, message: String| ScoreError::Input {
        path: path.to_path_buf(),
        message,
    };
    match Format::of(output) {
        Some(Format::Csv { .. }) => {
            let mut header: Option<Vec<u8>> = None;
            for part in parts {
                let mut file = File::open(part).map_err(|e| bad(part, e.to_string()))?;
                let mut buf = vec![0u8; 1 << 20];
                let mut head: Vec<u8> = Vec::new();
                let mut in_quotes = false;
                // The header: up to the first line break outside quotes.
                let mut rest_start = None;
                while rest_start.is_none() {
                    let n = file.read(&mut buf).map_err(|e| bad(part, e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    for (i, b) in buf[..n].iter().enumerate() {
                        match b {
                            b'"' => in_quotes = !in_quotes,
                            b'\n' if !in_quotes => {
                                head.extend_from_slice(&buf[..=i]);
                                rest_start = Some((i + 1, n));
                                break;
                            }
                            _ => {}
                        }
                    }
                    if rest_start.is_none() {
                        head.extend_from_slice(&buf[..n]);
                    }
                }
                match &header {
                    None => {
                        sink.write_raw(&head)?;
                        header = Some(head);
                    }
                    Some(first) if *first == head => {}
                    Some(first) => {
                        return Err(bad(
                            part,
                            format!(
                                "its columns ({}) are not the first part's ({})",
                                String::from_utf8_lossy(&head).trim_end(),
                                String::from_utf8_lossy(first).trim_end()
                            ),
                        ));
                    }
                }
                if let Some((start, end)) = rest_start {
                    sink.write_raw(&buf[start..end])?;
                    loop {
                        let n = file.read(&mut buf).map_err(|e| bad(part, e.to_string()))?;
                        if n == 0 {
                            break;
                        }
                        sink.write_raw(&buf[..n])?;
                    }
                }
            }
            if header.is_none() {
                return Err(ScoreError::Output {
                    path: output.to_path_buf(),
                    message: "no part to join".into(),
                });
            }
            sink.finish(&RecordBatch::new_empty(std::sync::Arc::new(
                arrow_schema::Schema::empty(),
            )))
        }
        Some(Format::Parquet) => {
            let mut schema = None;
            for part in parts {
                let file = File::open(part).map_err(|e| bad(part, e.to_string()))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(64 * 1024).build())
                    .map_err(|e| ScoreError::BadParquet {
                        path: part.clone(),
                        message: e.to_string(),
                    })?;
                let part_schema = reader.schema();
                match &schema {
                    None => schema = Some(part_schema),
                    Some(first) if first.fields() == part_schema.fields() => {}
                    Some(_) => {
                        return Err(bad(part, "its columns are not the first part's".into()));
                    }
                }
                for batch in reader {
                    let batch = batch.map_err(|e| ScoreError::BadParquet {
                        path: part.clone(),
                        message: e.to_string(),
                    })?;
                    sink.write(&batch)?;
                }
            }
            let Some(schema) = schema else {
                return Err(ScoreError::Output {
                    path: output.to_path_buf(),
                    message: "no part to join".into(),
                });
            };
            sink.finish(&RecordBatch::new_empty(schema))
        }
        None => Err(ScoreError::Output {
            path: output.to_path_buf(),
            message: "name the output .csv, .tsv or .parquet".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float32Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[&str], p: &[f32], label: &[i64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("p", DataType::Float32, true),
            Field::new("label", DataType::Int64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(Float32Array::from(p.to_vec())),
                Arc::new(Int64Array::from(label.to_vec())),
            ],
        )
        .unwrap()
    }

    fn write(path: &Path, b: &RecordBatch) {
        let mut sink = Sink::create(path, false).unwrap();
        sink.write(b).unwrap();
        sink.finish(b).unwrap();
    }

    #[test]
    fn parts_join_in_order_as_one_write_would() {
        let dir = tempfile::tempdir().unwrap();
        let a = batch(&["a,\"1\"\nx", "b"], &[0.25, 0.5], &[0, 1]);
        let b = batch(&[], &[], &[]);
        let c = batch(&["c"], &[0.125], &[1]);
        let whole = arrow_select::concat::concat_batches(&a.schema(), [&a, &b, &c]).unwrap();
        for ext in ["csv", "parquet"] {
            let parts: Vec<PathBuf> = [&a, &b, &c]
                .iter()
                .enumerate()
                .map(|(i, batch)| {
                    let p = dir.path().join(format!("part-{i}.{ext}"));
                    write(&p, batch);
                    p
                })
                .collect();
            let joined = dir.path().join(format!("joined.{ext}"));
            let written = join(&parts, &joined, false).unwrap();
            let expected = dir.path().join(format!("whole.{ext}"));
            write(&expected, &whole);
            if ext == "csv" {
                assert_eq!(
                    std::fs::read(&joined).unwrap(),
                    std::fs::read(&expected).unwrap()
                );
            } else {
                let read = |p: &Path| {
                    let r = ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap())
                        .unwrap()
                        .build()
                        .unwrap();
                    r.map(|b| b.unwrap()).collect::<Vec<_>>()
                };
                let got = read(&joined);
                let got = arrow_select::concat::concat_batches(&got[0].schema(), &got).unwrap();
                assert_eq!(got, whole);
            }
            assert_eq!(
                written.bytes,
                std::fs::metadata(&joined).unwrap().len(),
                "{ext}"
            );
            // The name is taken now: refused without force, nothing left behind on refusal.
            assert!(matches!(
                join(&parts, &joined, false),
                Err(ScoreError::OutputExists { .. })
            ));
        }
    }

    #[test]
    fn parts_with_other_columns_are_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.csv");
        let two = dir.path().join("two.csv");
        std::fs::write(&one, "id,p\na,0.5\n").unwrap();
        std::fs::write(&two, "id,q\nb,0.5\n").unwrap();
        let out = dir.path().join("out.csv");
        let err = join(&[one, two.clone()], &out, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("two.csv") && err.contains("id,q"), "{err}");
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }
}
