//! The quick way through the usual CSV chunk: valid UTF-8, no carriage returns, no blank lines,
//! and quotes only around whole cells that hold no quote, delimiter or line break (as pandas and
//! Arrow write text). Such a chunk needs no CSV state machine: cells end at a delimiter or a line
//! break, and each is parsed at once into its column by the same
//! parsers Arrow's decoder uses (`arrow_cast::parse::Parser`), empty cells null as there. The
//! batches are the ones Arrow's decoder makes of it; a chunk this does not take, or a cell that
//! does not parse, goes to Arrow's decoder, which also says what is wrong.

use std::sync::Arc;

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_cast::parse::Parser;
use arrow_schema::{DataType, SchemaRef};

/// Where the columns read are among a file's columns, and their types.
pub(crate) struct Layout {
    /// Every column of the file: the position among those read, if read.
    slots: Vec<Option<usize>>,
    types: Vec<DataType>,
    schema: SchemaRef,
    delimiter: u8,
    batch_size: usize,
}

impl Layout {
    /// For `columns` columns, those at `projection` (in order) read as `schema` says; `None`
    /// when a type is one this path does not parse.
    pub(crate) fn new(
        columns: usize,
        projection: &[usize],
        schema: SchemaRef,
        delimiter: u8,
        batch_size: usize,
    ) -> Option<Layout> {
        let types: Vec<DataType> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let handled = |t: &DataType| {
            matches!(
                t,
                DataType::Float32
                    | DataType::Float64
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Utf8
            )
        };
        if types.len() != projection.len() || !types.iter().all(handled) || columns == 0 {
            return None;
        }
        let mut slots = vec![None; columns];
        for (k, &i) in projection.iter().enumerate() {
            *slots.get_mut(i)? = Some(k);
        }
        Some(Layout {
            slots,
            types,
            schema,
            delimiter,
            batch_size: batch_size.max(1),
        })
    }
}

enum Column {
    F32(Float32Builder),
    F64(Float64Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Text(StringBuilder),
}

impl Column {
    fn new(t: &DataType, rows: usize) -> Column {
        match t {
            DataType::Float32 => Column::F32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => Column::F64(Float64Builder::with_capacity(rows)),
            DataType::Int32 => Column::I32(Int32Builder::with_capacity(rows)),
            DataType::Int64 => Column::I64(Int64Builder::with_capacity(rows)),
            _ => Column::Text(StringBuilder::with_capacity(rows, rows * 8)),
        }
    }

    /// Adds a cell; `None` when it does not parse.
    #[inline]
    fn push(&mut self, cell: &str) -> Option<()> {
        macro_rules! number {
            ($b:expr, $t:ty) => {
                if cell.is_empty() {
                    $b.append_null()
                } else {
                    $b.append_value(<$t as Parser>::parse(cell)?)
                }
            };
        }
        match self {
            // Counts and flags (most cells of a typical table) skip the float parser; the
            // value is the same, every integer below 10^7 being exact in an f32.
            Column::F32(b) => match small_integer(cell) {
                Some(v) => b.append_value(v as f32),
                None => number!(b, Float32Type),
            },
            Column::F64(b) => match small_integer(cell) {
                Some(v) => b.append_value(f64::from(v)),
                None => number!(b, Float64Type),
            },
            Column::I32(b) => number!(b, Int32Type),
            Column::I64(b) => number!(b, Int64Type),
            Column::Text(b) => {
                if cell.is_empty() {
                    b.append_null()
                } else {
                    b.append_value(cell)
                }
            }
        }
        Some(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::F32(b) => Arc::new(b.finish()),
            Column::F64(b) => Arc::new(b.finish()),
            Column::I32(b) => Arc::new(b.finish()),
            Column::I64(b) => Arc::new(b.finish()),
            Column::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// A cell of one to seven digits, optionally after a minus sign (not `-0`, whose sign a float
/// keeps), as its value.
#[inline]
fn small_integer(cell: &str) -> Option<i32> {
    let (negative, digits) = match cell.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || digits.len() > 7 {
        return None;
    }
    let mut v: i32 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i32::from(d);
    }
    match (negative, v) {
        (true, 0) => None,
        (true, v) => Some(-v),
        (false, v) => Some(v),
    }
}

/// The cell between `start` and `end` (a delimiter, a line break or the end; all ASCII, so on
/// character boundaries), its quotes taken off; `None` for a quote anywhere else (a doubled
/// quote, a quoted delimiter cut in two by the search for cell ends, a quote inside a cell).
#[inline]
fn cell(text: &str, start: usize, end: usize, quoted: bool) -> Option<&str> {
    let raw = &text[start..end];
    if !quoted {
        return Some(raw);
    }
    let b = raw.as_bytes();
    match b.first() {
        Some(b'"') => {
            let inner = b.get(1..b.len().checked_sub(1)?)?;
            (b.len() >= 2 && b[b.len() - 1] == b'"' && !inner.contains(&b'"'))
                .then(|| &raw[1..raw.len() - 1])
        }
        // Cells are short: a plain loop beats setting up a vector search for each.
        _ => (!b.contains(&b'"')).then_some(raw),
    }
}

/// The records of `bytes` (whole records, no header) as batches, or `None` for Arrow's decoder.
pub(crate) fn decode(bytes: &[u8], layout: &Layout) -> Option<Vec<RecordBatch>> {
    if memchr::memchr(b'\r', bytes).is_some() {
        return None;
    }
    let quoted = memchr::memchr(b'"', bytes).is_some();
    let text = std::str::from_utf8(bytes).ok()?;
    let fields = layout.slots.len();
    let rows_hint = layout.batch_size;
    let mut columns: Vec<Column> = layout
        .types
        .iter()
        .map(|t| Column::new(t, rows_hint))
        .collect();
    let mut batches = Vec::new();
    let mut flush = |columns: &mut Vec<Column>| -> Option<()> {
        let arrays: Vec<ArrayRef> = columns.iter_mut().map(Column::finish).collect();
        batches.push(RecordBatch::try_new(Arc::clone(&layout.schema), arrays).ok()?);
        Some(())
    };
    let mut start = 0;
    let mut field = 0;
    let mut rows = 0;
    let delimiter = layout.delimiter;
    // Cells are a few bytes each: a plain loop beats a vector search restarted for every cell.
    for (end, &byte) in bytes.iter().enumerate() {
        if byte != delimiter && byte != b'\n' {
            continue;
        }
        let newline = byte == b'\n';
        // A blank line is no record to Arrow's decoder.
        if newline && field == 0 && end == start {
            return None;
        }
        if field >= fields {
            return None;
        }
        if let Some(k) = layout.slots[field] {
            columns[k].push(cell(text, start, end, quoted)?)?;
        } else if quoted {
            cell(text, start, end, quoted)?;
        }
        field += 1;
        if newline {
            if field != fields {
                return None;
            }
            field = 0;
            rows += 1;
            if rows == layout.batch_size {
                flush(&mut columns)?;
                rows = 0;
            }
        }
        start = end + 1;
    }
    if start < bytes.len() {
        // The file's last record, without a line break.
        if field >= fields {
            return None;
        }
        if let Some(k) = layout.slots[field] {
            columns[k].push(cell(text, start, bytes.len(), quoted)?)?;
        } else if quoted {
            cell(text, start, bytes.len(), quoted)?;
        }
        field += 1;
        if field != fields {
            return None;
        }
        rows += 1;
    } else if field != 0 {
        return None;
    }
    if rows > 0 {
        flush(&mut columns)?;
    }
    Some(batches)
}

#[cfg(test)]
mod tests {
    use arrow_schema::{Field, Schema};

    use super::*;

    /// Arrow's decoder over the same bytes, for comparison.
    fn arrow(
        bytes: &[u8],
        schema: &SchemaRef,
        all: &Schema,
        projection: &[usize],
    ) -> Vec<RecordBatch> {
        let mut d = arrow_csv::ReaderBuilder::new(Arc::new(all.clone()))
            .with_header(false)
            .with_batch_size(2)
            .with_projection(projection.to_vec())
            .build_decoder();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let n = d.decode(&bytes[pos..]).unwrap();
            pos += n;
            if n == 0 || d.capacity() == 0 {
                match d.flush().unwrap() {
                    Some(b) => out.push(b),
                    None if n == 0 => break,
                    None => {}
                }
            }
        }
        assert_eq!(out[0].schema(), *schema);
        out
    }

    #[test]
    fn plain_chunks_read_as_arrow_reads_them() {
        let all = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("skip", DataType::Utf8, true),
            Field::new("x", DataType::Float32, true),
            Field::new("n", DataType::Int64, true),
            Field::new("y", DataType::Float64, true),
        ]);
        let projection = [0, 2, 3, 4];
        let schema: SchemaRef = Arc::new(all.project(&projection).unwrap());
        let layout = Layout::new(5, &projection, Arc::clone(&schema), b',', 2).unwrap();
        let bytes =
            b"\"a\",q,1.5,3,1e-3\nb,\"\",,-7,\n\"c\",\"z\",-0.0,0,inf\n\xc3\xa9,w,3.4028235e38,9,NaN";
        let ours = decode(bytes, &layout).unwrap();
        let theirs = arrow(bytes, &schema, &all, &projection);
        assert_eq!(
            ours.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [2, 2]
        );
        let join = |b: &[RecordBatch]| arrow_select::concat::concat_batches(&schema, b).unwrap();
        let (a, b) = (join(&ours), join(&theirs));
        // NaN != NaN: compare the bits of the floats, the rest as they are.
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a.num_rows(), 4);
    }

    #[test]
    fn small_integers_are_the_values_the_parser_gives() {
        for cell in [
            "0", "7", "-3", "9999999", "-9999999", "0012", "-0", "10000000", "1.0", "+5", "-", "",
        ] {
            let ours = small_integer(cell);
            let parsed = <Float32Type as Parser>::parse(cell);
            match ours {
                Some(v) => assert_eq!(Some(v as f32), parsed, "{cell}"),
                None => assert!(
                    ["-0", "10000000", "1.0", "+5", "-", ""].contains(&cell),
                    "{cell}"
                ),
            }
        }
        assert_eq!(small_integer("-0"), None);
        assert!(
            <Float32Type as Parser>::parse("-0")
                .unwrap()
                .is_sign_negative()
        );
    }

    #[test]
    fn anything_else_is_left_to_arrow() {
        let all = Schema::new(vec![
            Field::new("a", DataType::Float32, true),
            Field::new("b", DataType::Utf8, true),
        ]);
        let schema: SchemaRef = Arc::new(all.clone());
        let layout = Layout::new(2, &[0, 1], schema, b',', 8).unwrap();
        for bytes in [
            &b"1,\"quo,ted\"\n"[..],
            b"1,\"say \"\"hi\"\"\"\n",
            b"1,a\"b\n",
            b"1,\"open\n",
            b"1,\"\n",
            b"1,x\r\n",
            b"1,x\n\n2,y\n",
            b"1,x,extra\n",
            b"1\n",
            b"one,x\n",
            b"1,\xff\n",
        ] {
            assert!(decode(bytes, &layout).is_none(), "{bytes:?}");
        }
        assert_eq!(decode(b"", &layout).unwrap().len(), 0);
        let dates = Schema::new(vec![Field::new("d", DataType::Date32, true)]);
        assert!(Layout::new(1, &[0], Arc::new(dates), b',', 8).is_none());
    }
}
