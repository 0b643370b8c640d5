//! CSV parsed on every core. One thread cuts the file into chunks of whole records (a record
//! ends at a line break outside quotes), workers parse chunks at the same time (plain chunks
//! the quick way of `plain_csv`, the rest with the Arrow CSV decoder), and the caller gets their
//! batches back in file order. Parsing text is most of
//! the cost of scoring a CSV file; one thread left the model waiting.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_csv::reader::Decoder;
use arrow_schema::ArrowError;

use crate::score::ScoreError;

/// Bytes per chunk: thousands of rows, so a chunk's parse outweighs handing it over.
const CHUNK: usize = 4 << 20;

pub(crate) enum Error {
    Io(std::io::Error),
    /// The caller's own error, from `each`.
    Stop(ScoreError),
}

/// Parses `file` (its first record is the header, skipped) with decoders from `decoder`, and
/// hands each chunk's batches to `each` in order with the number of rows before the chunk;
/// `each` returns `Ok(false)` to stop early.
pub(crate) fn read(
    file: File,
    decoder: &(dyn Fn() -> Decoder + Sync),
    plain: Option<&super::plain_csv::Layout>,
    read_bytes: &AtomicU64,
    mut each: impl FnMut(u64, Result<Vec<RecordBatch>, ArrowError>) -> Result<bool, ScoreError>,
) -> Result<(), Error> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8));
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = sync_channel::<(u64, Vec<u8>)>(workers);
        let (result_tx, result_rx) = sync_channel(workers);
        // Owned by the workers alone: when they stop, the splitter's next send fails.
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers {
            let job_rx = Arc::clone(&job_rx);
            let result_tx = result_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("score-parse".into())
                .spawn_scoped(scope, move || {
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok((seq, bytes)) = job else { break };
                        let parsed = match plain.and_then(|l| super::plain_csv::decode(&bytes, l)) {
                            Some(batches) => Ok(batches),
                            None => decode(&mut decoder(), &bytes),
                        };
                        if result_tx.send((seq, parsed)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                return Err(Error::Io(e));
            }
        }
        drop(job_rx);
        drop(result_tx);
        let splitter = std::thread::Builder::new()
            .name("score-split".into())
            .spawn_scoped(scope, move || split(file, job_tx, read_bytes))
            .map_err(Error::Io)?;

        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut rows_before = 0u64;
        let mut outcome = Ok(());
        'results: for (seq, parsed) in result_rx.iter() {
            pending.insert(seq, parsed);
            while let Some(parsed) = pending.remove(&next) {
                next += 1;
                let rows: u64 = parsed.as_ref().map_or(0, |batches| {
                    batches.iter().map(|b| b.num_rows() as u64).sum()
                });
                match each(rows_before, parsed) {
                    Ok(true) => rows_before += rows,
                    Ok(false) => break 'results,
                    Err(e) => {
                        outcome = Err(Error::Stop(e));
                        break 'results;
                    }
                }
            }
        }
        // Stops the workers, and through them the splitter.
        drop(result_rx);
        let split = splitter
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the CSV splitter panicked")));
        outcome?;
        split.map_err(Error::Io)
    })
}

/// Cuts `file` into chunks of whole records after the header and sends them, numbered.
fn split(
    mut file: File,
    jobs: SyncSender<(u64, Vec<u8>)>,
    read_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut seq = 0u64;
    let mut header = true;
    loop {
        let mut buf = std::mem::take(&mut carry);
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let n = read_full(&mut file, &mut buf[start..])?;
        buf.truncate(start + n);
        read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let eof = n < CHUNK;
        let mut from = 0;
        if header {
            match record_end(&buf) {
                Some(end) => {
                    from = end;
                    header = false;
                }
                None if eof => return Ok(()),
                None => {
                    carry = buf;
                    continue;
                }
            }
        }
        let cut = if eof {
            buf.len()
        } else {
            match last_record_end(&buf[from..]) {
                Some(end) => from + end,
                None => {
                    // A record longer than a chunk: read on.
                    buf.drain(..from);
                    carry = buf;
                    continue;
                }
            }
        };
        carry = buf[cut..].to_vec();
        buf.truncate(cut);
        if from > 0 {
            buf.drain(..from);
        }
        if !buf.is_empty() {
            if jobs.send((seq, buf)).is_err() {
                return Ok(());
            }
            seq += 1;
        }
        if eof {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Just after the first record of `buf`, if it ends in `buf`.
fn record_end(buf: &[u8]) -> Option<usize> {
    let mut quoted = false;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Just after the last whole record of `buf`, which starts at a record's start. A doubled
/// quote inside a quoted field toggles twice, so counting quotes tells inside from outside.
fn last_record_end(buf: &[u8]) -> Option<usize> {
    if memchr::memchr(b'"', buf).is_none() {
        return memchr::memrchr(b'\n', buf).map(|i| i + 1);
    }
    let mut quoted = false;
    let mut last = None;
    for i in memchr::memchr2_iter(b'"', b'\n', buf) {
        if buf[i] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            last = Some(i + 1);
        }
    }
    last
}

/// Every record of `bytes` as batches of the decoder's batch size.
fn decode(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut batches = Vec::new();
    let mut pos = 0;
    loop {
        let n = decoder.decode(&bytes[pos..])?;
        pos += n;
        if n == 0 || decoder.capacity() == 0 {
            if let Some(batch) = decoder.flush()? {
                batches.push(batch);
                continue;
            }
            if n == 0 {
                return Ok(batches);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_end_at_line_breaks_outside_quotes() {
        assert_eq!(record_end(b"a,b\n1,2\n"), Some(4));
        assert_eq!(record_end(b"\"a\nb\",c\n1,2\n"), Some(8));
        assert_eq!(record_end(b"a,b"), None);
        assert_eq!(last_record_end(b"1,2\n3,4\n5,"), Some(8));
        assert_eq!(
            last_record_end(b"1,\"x\n\"\"y\"\"\n\",2\n3,\"open\n"),
            Some(15)
        );
        assert_eq!(last_record_end(b"1,\"still open\n"), None);
    }
}
