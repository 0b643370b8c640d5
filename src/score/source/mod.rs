//! The tables to score: CSV and Parquet files, or directories of them, read in batches of the
//! columns the model and `--keep` need, through the Arrow CSV reader and the Parquet crate.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::{DataType as ArrowType, Field, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ScoreError;

mod csv;
mod plain_csv;

/// A table format, told by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv { delimiter: u8 },
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv { delimiter: b',' }),
            "tsv" => Some(Format::Csv { delimiter: b'\t' }),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv { delimiter: b'\t' } => "TSV",
            Format::Csv { .. } => "CSV",
            Format::Parquet => "Parquet",
        }
    }
}

/// One file to score.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
    pub bytes: u64,
}

/// The files `inputs` name, directories walked in name order (hidden files and Spark's
/// `_SUCCESS`-style markers left out).
pub fn list(inputs: &[PathBuf]) -> Result<Vec<InputFile>, ScoreError> {
    if inputs.is_empty() {
        return Err(ScoreError::NoInputs);
    }
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| ScoreError::Input {
            path: input.clone(),
            message: e.to_string(),
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(input, &mut files)?;
            if files.len() == before {
                return Err(ScoreError::Input {
                    path: input.clone(),
                    message: "the directory holds no .csv, .tsv or .parquet file".into(),
                });
            }
        } else {
            let format = Format::of(input).ok_or_else(|| ScoreError::Input {
                path: input.clone(),
                message: "not a table ferry reads: name it .csv, .tsv or .parquet".into(),
            })?;
            files.push(InputFile {
                path: input.clone(),
                format,
                bytes: meta.len(),
            });
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<InputFile>) -> Result<(), ScoreError> {
    let io = |e: std::io::Error| ScoreError::Input {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io)?;
        if meta.is_dir() {
            walk(&path, files)?;
        } else if let Some(format) = Format::of(&path) {
            files.push(InputFile {
                path,
                format,
                bytes: meta.len(),
            });
        }
    }
    Ok(())
}

/// A file's columns with their types as stored (every CSV column is text until parsed), and
/// its row count where the file says it (Parquet).
pub fn columns(file: &InputFile) -> Result<(Vec<Field>, Option<u64>), ScoreError> {
    match file.format {
        Format::Csv { delimiter } => {
            let reader = open(&file.path)?;
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .with_delimiter(delimiter)
                .infer_schema(BufReader::new(reader), Some(0))
                .map_err(|e| ScoreError::Input {
                    path: file.path.clone(),
                    message: format!("reading the header: {e}"),
                })?;
            if schema.fields().is_empty() {
                return Err(ScoreError::Input {
                    path: file.path.clone(),
                    message: "the file is empty: no header row names its columns".into(),
                });
            }
            let fields = schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), ArrowType::Utf8, true))
                .collect();
            Ok((fields, None))
        }
        Format::Parquet => {
            let builder = parquet_builder(file)?;
            let rows = builder.metadata().file_metadata().num_rows();
            let fields = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            Ok((fields, Some(rows.max(0) as u64)))
        }
    }
}

/// A batch of rows of one file.
pub struct Batch {
    /// The file's index in the list.
    pub file: usize,
    /// The first row's number in its file, counting from 0.
    pub first_row: u64,
    pub data: RecordBatch,
}

/// Reads `file` in batches of `batch_size` rows holding the columns `wanted` (file columns by
/// name; CSV columns are parsed as the type given, Parquet ones come as stored) and hands each
/// to `each`, which returns `false` to stop. `read_bytes` counts the bytes taken so far.
pub fn read(
    index: usize,
    file: &InputFile,
    wanted: &[(String, ArrowType)],
    batch_size: usize,
    read_bytes: &Arc<AtomicU64>,
    mut each: impl FnMut(Batch) -> bool,
) -> Result<(), ScoreError> {
    let (fields, _) = columns(file)?;
    let mut projection = Vec::with_capacity(wanted.len());
    for (name, _) in wanted {
        let Some(i) = fields.iter().position(|f| f.name() == name) else {
            // The caller checks every file's columns first; a file changed in between.
            return Err(ScoreError::Input {
                path: file.path.clone(),
                message: format!("column '{name}' is gone"),
            });
        };
        if !projection.contains(&i) {
            projection.push(i);
        }
    }
    projection.sort_unstable();
    let mut first_row = 0u64;
    match file.format {
        Format::Csv { delimiter } => {
            let schema = Schema::new(
                fields
                    .iter()
                    .map(|f| {
                        let ty = wanted
                            .iter()
                            .find(|(name, _)| name == f.name())
                            .map_or(ArrowType::Utf8, |(_, ty)| ty.clone());
                        Field::new(f.name(), ty, true)
                    })
                    .collect::<Vec<_>>(),
            );
            let schema = Arc::new(schema);
            let decoder = || {
                arrow_csv::ReaderBuilder::new(Arc::clone(&schema))
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .with_batch_size(batch_size)
                    .with_projection(projection.clone())
                    .build_decoder()
            };
            let plain = plain_csv::Layout::new(
                fields.len(),
                &projection,
                Arc::new(schema.project(&projection).map_err(|e| ScoreError::Input {
                    path: file.path.clone(),
                    message: e.to_string(),
                })?),
                delimiter,
                batch_size,
            );
            csv::read(
                open(&file.path)?,
                &decoder,
                plain.as_ref(),
                read_bytes,
                |rows_before, batches| {
                    let batches = batches.map_err(|e| csv_error(file, &fields, rows_before, e))?;
                    for data in batches {
                        let rows = data.num_rows() as u64;
                        if !each(Batch {
                            file: index,
                            first_row,
                            data,
                        }) {
                            return Ok(false);
                        }
                        first_row += rows;
                    }
                    Ok(true)
                },
            )
            .map_err(|e| match e {
                csv::Error::Io(e) => ScoreError::Input {
                    path: file.path.clone(),
                    message: e.to_string(),
                },
                csv::Error::Stop(e) => e,
            })?;
        }
        Format::Parquet => {
            let builder = parquet_builder(file)?;
            let total = builder.metadata().file_metadata().num_rows().max(1) as u64;
            let mask = ProjectionMask::roots(builder.parquet_schema(), projection);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(batch_size)
                .build()
                .map_err(|e| bad_parquet(file, e.to_string()))?;
            let mut counted = 0u64;
            for batch in reader {
                let data = batch.map_err(|e| bad_parquet(file, e.to_string()))?;
                let rows = data.num_rows() as u64;
                // Parquet is read by column chunks; rows tell how far along the file is.
                let done = file.bytes * (first_row + rows).min(total) / total;
                read_bytes.fetch_add(done - counted, Ordering::Relaxed);
                counted = done;
                if !each(Batch {
                    file: index,
                    first_row,
                    data,
                }) {
                    return Ok(());
                }
                first_row += rows;
            }
            read_bytes.fetch_add(file.bytes - counted, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<File, ScoreError> {
    File::open(path).map_err(|e| ScoreError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn parquet_builder(file: &InputFile) -> Result<ParquetRecordBatchReaderBuilder<File>, ScoreError> {
    ParquetRecordBatchReaderBuilder::try_new(open(&file.path)?)
        .map_err(|e| bad_parquet(file, e.to_string()))
}

fn bad_parquet(file: &InputFile, message: String) -> ScoreError {
    ScoreError::BadParquet {
        path: file.path.clone(),
        message,
    }
}

/// The Arrow CSV reader names a value that does not parse by column index and record number in
/// its chunk (from 0; `rows_before` rows came before the chunk): turned into the column's name
/// and the row's number in the file, from 1.
fn csv_error(
    file: &InputFile,
    fields: &[Field],
    rows_before: u64,
    e: arrow_schema::ArrowError,
) -> ScoreError {
    let message = e.to_string();
    let parsed = (|| {
        let value = message.split_once("value '")?.1;
        let (value, rest) = value.split_once("' as type '")?;
        let (datatype, rest) = rest.split_once("' for column ")?;
        let (column, rest) = rest.split_once(" at line ")?;
        let row: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let column: usize = column.parse().ok()?;
        Some((value.to_string(), datatype.to_string(), column, row))
    })();
    match parsed {
        Some((value, datatype, column, row)) => ScoreError::Cast {
            path: file.path.clone(),
            row: rows_before + row + 1,
            column: fields
                .get(column)
                .map_or_else(|| format!("#{column}"), |f| f.name().clone()),
            value,
            datatype,
        },
        None => ScoreError::Input {
            path: file.path.clone(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(
            Format::of(Path::new("a/b.CSV")),
            Some(Format::Csv { delimiter: b',' })
        );
        assert_eq!(Format::of(Path::new("x.parquet")), Some(Format::Parquet));
        assert_eq!(Format::of(Path::new("x.json")), None);
        assert_eq!(Format::of(Path::new("x")), None);
    }

    #[test]
    fn directories_are_walked_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in [
            "b.csv",
            "a.parquet",
            "sub/c.tsv",
            "_SUCCESS",
            ".hidden.csv",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "x\n1\n").unwrap();
        }
        let files = list(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["a.parquet", "b.csv", "sub/c.tsv"]);
        let empty = tempfile::tempdir().unwrap();
        let err = list(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(
            err.to_string().contains("no .csv, .tsv or .parquet"),
            "{err}"
        );
        let err = list(&[dir.path().join("notes.txt")]).unwrap_err();
        assert!(err.to_string().contains("name it .csv"), "{err}");
    }
}
