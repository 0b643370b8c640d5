//! The scored table on its way to disk: CSV or Parquet by the output's extension, written to a
//! temporary file beside it, hashed as it is written, and renamed into place only when whole.
//! A failure (a full disk, Ctrl-C) removes the temporary file; the final name never holds half
//! an output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::ScoreError;
use super::source::Format;

/// Rows per Parquet row group: the writer holds one group in memory, so this bounds it.
const ROW_GROUP_ROWS: usize = 512 * 1024;

/// Where the output goes; created with [`Sink::create`], written batch by batch.
pub struct Sink {
    path: PathBuf,
    temp: PathBuf,
    format: Format,
    file: Option<Hashing<BufWriter<File>>>,
    writer: Option<Writer>,
    /// Bytes were written as they are (CSV parts being joined), not through a writer.
    raw: bool,
    done: bool,
}

// Both boxed: one sink per run, and the CSV writer's state is larger than the rest of the sink.
enum Writer {
    Csv(Box<arrow_csv::Writer<Hashing<BufWriter<File>>>>),
    Parquet(Box<ArrowWriter<Hashing<BufWriter<File>>>>),
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub sha256: String,
    pub bytes: u64,
}

impl Sink {
    /// Checks the output can be written (its format, an existing file without `force`, its
    /// directory) and opens the temporary file, before any row is read.
    pub fn create(path: &Path, force: bool) -> Result<Sink, ScoreError> {
        let format = Format::of(path).ok_or_else(|| ScoreError::Output {
            path: path.to_path_buf(),
            message: "name the output .csv, .tsv or .parquet: its extension chooses the format"
                .into(),
        })?;
        if path.is_dir() {
            return Err(ScoreError::Output {
                path: path.to_path_buf(),
                message: "is a directory; name a file".into(),
            });
        }
        if path.exists() && !force {
            return Err(ScoreError::OutputExists {
                path: path.to_path_buf(),
            });
        }
        let name = path.file_name().ok_or_else(|| ScoreError::Output {
            path: path.to_path_buf(),
            message: "has no file name".into(),
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(ScoreError::Output {
                path: path.to_path_buf(),
                message: format!("its directory {} does not exist", dir.display()),
            });
        }
        let temp = temporary(&dir, name);
        let file = File::create(&temp).map_err(|e| ScoreError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Sink {
            path: path.to_path_buf(),
            temp,
            format,
            file: Some(Hashing::new(BufWriter::with_capacity(1 << 20, file))),
            writer: None,
            raw: false,
            done: false,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ScoreError> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                let file = self.file.take().ok_or_else(|| self.failed("closed"))?;
                let writer = match self.format {
                    Format::Csv { delimiter } => Writer::Csv(Box::new(
                        arrow_csv::WriterBuilder::new()
                            .with_header(true)
                            .with_delimiter(delimiter)
                            .build(file),
                    )),
                    Format::Parquet => {
                        let props = WriterProperties::builder()
                            .set_compression(Compression::SNAPPY)
                            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                            .set_created_by(format!("ferry {}", env!("CARGO_PKG_VERSION")))
                            .build();
                        Writer::Parquet(Box::new(
                            ArrowWriter::try_new(file, batch.schema(), Some(props))
                                .map_err(|e| self.failed(&e.to_string()))?,
                        ))
                    }
                };
                self.writer.insert(writer)
            }
        };
        let result = match writer {
            Writer::Csv(w) => w.write(batch).map_err(|e| e.to_string()),
            Writer::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
        };
        result.map_err(|message| self.failed(&message))
    }

    /// Writes `bytes` as they are: already-written CSV joined into one file. Not for a sink
    /// that has written batches, nor for Parquet.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ScoreError> {
        if self.writer.is_some() || !matches!(self.format, Format::Csv { .. }) {
            return Err(self.failed("raw bytes go only into a CSV output written no other way"));
        }
        self.raw = true;
        let file = self.file.as_mut().ok_or_else(|| ScoreError::Write {
            path: self.path.clone(),
            message: "closed".into(),
        })?;
        file.write_all(bytes)
            .map_err(|e| self.failed(&e.to_string()))
    }

    /// Closes the file, makes it durable and renames it to the output's name.
    pub fn finish(mut self, empty: &RecordBatch) -> Result<Written, ScoreError> {
        if self.writer.is_none() && !self.raw {
            // No rows: the file still has the columns (a CSV header, a Parquet schema).
            self.write(empty)?;
        }
        let hashing = match self.writer.take() {
            Some(Writer::Csv(w)) => w.into_inner(),
            Some(Writer::Parquet(w)) => w.into_inner().map_err(|e| self.failed(&e.to_string()))?,
            None => match self.file.take() {
                Some(f) if self.raw => f,
                _ => return Err(self.failed("nothing was written")),
            },
        };
        let Hashing {
            inner,
            hasher,
            bytes,
        } = hashing;
        let file = inner
            .into_inner()
            .map_err(|e| self.failed(&e.error().to_string()))?;
        file.sync_all().map_err(|e| self.failed(&e.to_string()))?;
        drop(file);
        std::fs::rename(&self.temp, &self.path).map_err(|e| self.failed(&e.to_string()))?;
        self.done = true;
        Ok(Written {
            sha256: hex::encode(hasher.finalize()),
            bytes,
        })
    }

    fn failed(&self, message: &str) -> ScoreError {
        ScoreError::Write {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !self.done {
            // Close before removing; errors here have nowhere to go but the removal.
            self.writer = None;
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The temporary file an output is written to before its rename: beside it, hidden, named by
/// this process.
fn temporary(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    dir.join(format!(
        ".{}.ferry-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ))
}

/// Removes what this process has written of `output` so far, for a caller that cannot wait
/// for the writing thread to stop (it may be blocked on a slow input).
pub fn remove_partial(output: &Path) {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Some(name) = output.file_name() {
        let _ = std::fs::remove_file(temporary(&dir, name));
    }
}

/// Hashes what passes through it, so the output's sha256 needs no second read.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
