//! Arrow columns into model input tensors (cast to the model's type, empty and NaN cells refused
//! or filled), and model outputs back into Arrow columns.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_cast::cast::{CastOptions, cast_with_options};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType as ArrowType;
use half::f16;

use super::ScoreError;
use super::columns::InputColumns;
use crate::server::model::HostTensor;
use crate::server::tensor::{DataType, OutputView, TensorData, TensorError, string_tensor};
use ort::value::DynValue;

/// The Arrow type a model's datatype reads from and writes to.
pub fn arrow_type(datatype: DataType) -> ArrowType {
    match datatype {
        DataType::Bool => ArrowType::Boolean,
        DataType::Uint8 => ArrowType::UInt8,
        DataType::Uint16 => ArrowType::UInt16,
        DataType::Uint32 => ArrowType::UInt32,
        DataType::Uint64 => ArrowType::UInt64,
        DataType::Int8 => ArrowType::Int8,
        DataType::Int16 => ArrowType::Int16,
        DataType::Int32 => ArrowType::Int32,
        DataType::Int64 => ArrowType::Int64,
        DataType::Fp16 => ArrowType::Float16,
        DataType::Fp32 => ArrowType::Float32,
        DataType::Fp64 => ArrowType::Float64,
        DataType::Bytes => ArrowType::Utf8,
    }
}

/// What `--fill` puts in empty and NaN cells, already parsed for one input's type.
#[derive(Clone, Debug)]
pub struct Fill(pub String);

/// Where a batch came from, for messages that name a file and a row.
pub struct Origin<'a> {
    pub path: &'a PathBuf,
    /// The batch's first row in its file, counting from 0.
    pub first_row: u64,
}

impl Origin<'_> {
    /// Rows are numbered from 1, as a spreadsheet or `pandas` (plus one) shows them.
    fn row(&self, index: usize) -> u64 {
        self.first_row + index as u64 + 1
    }
}

/// The tensor for `input`: its columns of `batch`, cast to its datatype, row-major.
pub fn input_tensor(
    input: &InputColumns,
    batch: &RecordBatch,
    origin: &Origin<'_>,
    fill: Option<&Fill>,
) -> Result<Prepared, ScoreError> {
    let rows = batch.num_rows();
    let target = arrow_type(input.datatype);
    let mut columns = Vec::with_capacity(input.columns.len());
    for name in &input.columns {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| ScoreError::Input {
                path: origin.path.clone(),
                message: format!("column '{name}' is missing from a batch"),
            })?;
        // Numbers into FP32 are converted while they are gathered: a cast first would write
        // every cell once more (Parquet files from pandas hold int64 and double).
        if input.datatype == DataType::Fp32 && widens_to_f32(array.data_type()) {
            columns.push(Arc::clone(array));
        } else {
            columns.push(cast(array, &target, name, origin)?);
        }
    }
    let cell = |j: usize, r: usize, problem: &'static str| ScoreError::Cell {
        path: origin.path.clone(),
        row: origin.row(r),
        column: input.columns[j].clone(),
        problem,
    };
    // Integers, which have no NaN.
    macro_rules! whole {
        ($t:ty) => {
            gather::<$t>(&columns, rows, parse_fill(fill, input)?, |_| false, &cell)?
        };
    }
    let data = match input.datatype {
        DataType::Fp32 => {
            TensorData::Fp32(gather_f32(&columns, rows, parse_fill(fill, input)?, &cell)?)
        }
        DataType::Fp64 => TensorData::Fp64(gather::<Float64Type>(
            &columns,
            rows,
            parse_fill(fill, input)?,
            f64::is_nan,
            &cell,
        )?),
        DataType::Fp16 => TensorData::Fp16(gather::<Float16Type>(
            &columns,
            rows,
            parse_fill::<f32>(fill, input)?.map(f16::from_f32),
            f16::is_nan,
            &cell,
        )?),
        DataType::Int64 => TensorData::Int64(whole!(Int64Type)),
        DataType::Int32 => TensorData::Int32(whole!(Int32Type)),
        DataType::Int16 => TensorData::Int16(whole!(Int16Type)),
        DataType::Int8 => TensorData::Int8(whole!(Int8Type)),
        DataType::Uint64 => TensorData::Uint64(whole!(UInt64Type)),
        DataType::Uint32 => TensorData::Uint32(whole!(UInt32Type)),
        DataType::Uint16 => TensorData::Uint16(whole!(UInt16Type)),
        DataType::Uint8 => TensorData::Uint8(whole!(UInt8Type)),
        DataType::Bool => {
            let fill = parse_fill::<bool>(fill, input)?;
            let arrays: Vec<&BooleanArray> = columns.iter().map(|c| c.as_boolean()).collect();
            let mut out = Vec::with_capacity(rows * arrays.len());
            for r in 0..rows {
                for (j, a) in arrays.iter().enumerate() {
                    out.push(if a.is_null(r) {
                        fill.ok_or_else(|| cell(j, r, "empty"))?
                    } else {
                        a.value(r)
                    });
                }
            }
            TensorData::Bool(out)
        }
        DataType::Bytes => {
            // Text stays in the batch's columns until ONNX Runtime copies it in: one copy, not
            // two. Empty cells are checked here, where their row is known.
            if fill.is_none() {
                for (j, column) in columns.iter().enumerate() {
                    if let Some(r) = (0..rows).find(|&r| column.is_null(r)) {
                        return Err(cell(j, r, "empty"));
                    }
                }
            }
            return Ok(Prepared::Text {
                shape: shape(input, rows),
                columns,
                fill: fill.map(|f| f.0.clone()),
            });
        }
    };
    Ok(Prepared::Host(HostTensor {
        shape: shape(input, rows),
        data,
    }))
}

/// The text of string columns row by row, `fill` in empty cells.
fn text_cells<'a>(columns: &'a [ArrayRef], fill: &'a str) -> Vec<&'a str> {
    let arrays: Vec<&StringArray> = columns.iter().map(|c| c.as_string::<i32>()).collect();
    let rows = arrays.first().map_or(0, |a| a.len());
    let mut values = Vec::with_capacity(rows * arrays.len());
    for r in 0..rows {
        for a in &arrays {
            values.push(if a.is_null(r) { fill } else { a.value(r) });
        }
    }
    values
}

fn shape(input: &InputColumns, rows: usize) -> Vec<usize> {
    if input.rank == 1 {
        vec![rows]
    } else {
        vec![rows, input.columns.len()]
    }
}

/// An input ready for ONNX Runtime: numbers in a buffer of the model's type, or text still in
/// its Arrow columns (with what fills their empty cells).
#[derive(Debug)]
pub enum Prepared {
    Host(HostTensor),
    Text {
        /// The shape the model gets: more rows than the columns hold when padded.
        shape: Vec<usize>,
        columns: Vec<ArrayRef>,
        fill: Option<String>,
    },
}

impl Prepared {
    /// The rows the model gets, padding included.
    pub fn rows(&self) -> usize {
        match self {
            Prepared::Host(t) => t.shape.first().copied().unwrap_or(0),
            Prepared::Text { shape, .. } => shape.first().copied().unwrap_or(0),
        }
    }

    pub fn into_ort(self) -> Result<DynValue, TensorError> {
        match self {
            Prepared::Host(t) => t.data.into_ort(&t.shape),
            Prepared::Text {
                shape,
                columns,
                fill,
            } => {
                let mut values = text_cells(&columns, fill.as_deref().unwrap_or_default());
                // Padding repeats the last row.
                let width = columns.len();
                while values.len() < shape.iter().product::<usize>() && !values.is_empty() {
                    values.extend_from_within(values.len() - width..);
                }
                Ok(string_tensor(shape, &values)?.into_dyn())
            }
        }
    }

    /// Repeats the last of `rows` rows until there are `to`: a model with a fixed batch size
    /// gets full batches; the padding's answers are dropped.
    pub fn pad(&mut self, rows: usize, to: usize) -> Result<(), ScoreError> {
        match self {
            Prepared::Host(t) => pad(t, rows, to),
            Prepared::Text { shape, .. } => {
                if rows > 0 && rows < to {
                    shape[0] = to;
                }
                Ok(())
            }
        }
    }

    /// The tensor as the server holds a request's.
    pub fn into_host(self) -> HostTensor {
        match self {
            Prepared::Host(t) => t,
            Prepared::Text {
                shape,
                columns,
                fill,
            } => {
                let values = text_cells(&columns, fill.as_deref().unwrap_or_default())
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                HostTensor {
                    shape,
                    data: TensorData::Bytes(values),
                }
            }
        }
    }
}

/// `array` as `target`; a value that does not convert is named with its row.
fn cast(
    array: &ArrayRef,
    target: &ArrowType,
    column: &str,
    origin: &Origin<'_>,
) -> Result<ArrayRef, ScoreError> {
    if array.data_type() == target {
        return Ok(Arc::clone(array));
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let unsupported = |e: arrow_schema::ArrowError| ScoreError::Unsupported {
        message: format!(
            "{}: column '{column}' is {}, which does not convert to {target}: {e}",
            origin.path.display(),
            array.data_type()
        ),
    };
    match cast_with_options(array, target, &strict) {
        Ok(cast) => Ok(cast),
        Err(e) => {
            // The strict cast does not say where; the lenient one leaves the bad cells empty.
            let lenient =
                cast_with_options(array, target, &CastOptions::default()).map_err(unsupported)?;
            let Some(r) = (0..array.len()).find(|&r| array.is_valid(r) && lenient.is_null(r))
            else {
                return Err(unsupported(e));
            };
            let value = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                .map(|f| f.value(r).to_string())
                .unwrap_or_default();
            Err(ScoreError::Cast {
                path: origin.path.clone(),
                row: origin.row(r),
                column: column.to_string(),
                value,
                datatype: target.to_string(),
            })
        }
    }
}

fn parse_fill<T: std::str::FromStr>(
    fill: Option<&Fill>,
    input: &InputColumns,
) -> Result<Option<T>, ScoreError> {
    fill.map(|f| {
        f.0.trim().parse::<T>().map_err(|_| ScoreError::FillArg {
            value: f.0.clone(),
            input: input.name.clone(),
            datatype: input.datatype.to_string(),
        })
    })
    .transpose()
}

/// The source types [`gather_f32`] converts itself, as Arrow's cast would (`as f32`).
fn widens_to_f32(ty: &ArrowType) -> bool {
    matches!(
        ty,
        ArrowType::Float32 | ArrowType::Float64 | ArrowType::Int64 | ArrowType::Int32
    )
}

/// [`gather`] for FP32 from any [`widens_to_f32`] column, converting on the way.
fn gather_f32(
    columns: &[ArrayRef],
    rows: usize,
    fill: Option<f32>,
    cell: &dyn Fn(usize, usize, &'static str) -> ScoreError,
) -> Result<Vec<f32>, ScoreError> {
    fn place<T: ArrowPrimitiveType>(
        out: &mut [f32],
        (j, k): (usize, usize),
        column: &dyn Array,
        convert: impl Fn(T::Native) -> f32,
        fill: Option<f32>,
        cell: &dyn Fn(usize, usize, &'static str) -> ScoreError,
    ) -> Result<(), ScoreError> {
        let a = column.as_primitive::<T>();
        let nulls = a.null_count() > 0;
        for (r, &v) in a.values().iter().enumerate() {
            let x = if nulls && a.is_null(r) {
                fill.ok_or_else(|| cell(j, r, "empty"))?
            } else {
                let x = convert(v);
                if x.is_nan() {
                    fill.ok_or_else(|| cell(j, r, "NaN"))?
                } else {
                    x
                }
            };
            out[r * k + j] = x;
        }
        Ok(())
    }
    let k = columns.len();
    let mut out = vec![0f32; rows * k];
    for (j, column) in columns.iter().enumerate() {
        let at = (j, k);
        match column.data_type() {
            ArrowType::Float32 => place::<Float32Type>(&mut out, at, column, |v| v, fill, cell)?,
            ArrowType::Float64 => {
                place::<Float64Type>(&mut out, at, column, |v| v as f32, fill, cell)?
            }
            ArrowType::Int64 => place::<Int64Type>(&mut out, at, column, |v| v as f32, fill, cell)?,
            ArrowType::Int32 => place::<Int32Type>(&mut out, at, column, |v| v as f32, fill, cell)?,
            other => {
                return Err(ScoreError::Unsupported {
                    message: format!("a {other} column reached the FP32 gathering"),
                });
            }
        }
    }
    Ok(out)
}

/// The columns' values row by row; an empty cell or a NaN takes `fill` or is refused.
fn gather<T: ArrowPrimitiveType>(
    columns: &[ArrayRef],
    rows: usize,
    fill: Option<T::Native>,
    nan: fn(T::Native) -> bool,
    cell: &dyn Fn(usize, usize, &'static str) -> ScoreError,
) -> Result<Vec<T::Native>, ScoreError> {
    let arrays: Vec<&PrimitiveArray<T>> = columns.iter().map(|c| c.as_primitive::<T>()).collect();
    let clean = arrays
        .iter()
        .all(|a| a.null_count() == 0 && !a.values().iter().any(|&v| nan(v)));
    if clean && arrays.len() == 1 {
        return Ok(arrays[0].values().to_vec());
    }
    let mut out = Vec::with_capacity(rows * arrays.len());
    if clean {
        let values: Vec<&[T::Native]> = arrays.iter().map(|a| a.values().as_ref()).collect();
        for r in 0..rows {
            out.extend(values.iter().map(|v| v[r]));
        }
        return Ok(out);
    }
    for r in 0..rows {
        for (j, a) in arrays.iter().enumerate() {
            let value = if a.is_null(r) {
                fill.ok_or_else(|| cell(j, r, "empty"))?
            } else {
                let v = a.value(r);
                if nan(v) {
                    fill.ok_or_else(|| cell(j, r, "NaN"))?
                } else {
                    v
                }
            };
            out.push(value);
        }
    }
    Ok(out)
}

/// The `width` columns of an output (row-major, `width` values per row), the first `keep` rows
/// of each.
pub fn output_arrays(view: &OutputView<'_>, width: usize, keep: usize) -> Vec<ArrayRef> {
    fn split<T: ArrowPrimitiveType>(v: &[T::Native], width: usize, keep: usize) -> Vec<ArrayRef> {
        (0..width)
            .map(|j| {
                let column: Vec<T::Native> = if width == 1 {
                    v[..keep].to_vec()
                } else {
                    (0..keep).map(|r| v[r * width + j]).collect()
                };
                Arc::new(PrimitiveArray::<T>::from_iter_values(column)) as ArrayRef
            })
            .collect()
    }
    match view {
        OutputView::Fp32(v) => split::<Float32Type>(v, width, keep),
        OutputView::Fp64(v) => split::<Float64Type>(v, width, keep),
        OutputView::Fp16(bits) => {
            let v: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
            split::<Float16Type>(&v, width, keep)
        }
        OutputView::Int64(v) => split::<Int64Type>(v, width, keep),
        OutputView::Int32(v) => split::<Int32Type>(v, width, keep),
        OutputView::Int16(v) => split::<Int16Type>(v, width, keep),
        OutputView::Int8(v) => split::<Int8Type>(v, width, keep),
        OutputView::Uint64(v) => split::<UInt64Type>(v, width, keep),
        OutputView::Uint32(v) => split::<UInt32Type>(v, width, keep),
        OutputView::Uint16(v) => split::<UInt16Type>(v, width, keep),
        OutputView::Uint8(v) => split::<UInt8Type>(v, width, keep),
        OutputView::Bool(v) => (0..width)
            .map(|j| {
                Arc::new(BooleanArray::from_iter(
                    (0..keep).map(|r| Some(v[r * width + j])),
                )) as ArrayRef
            })
            .collect(),
        OutputView::Bytes(v) => (0..width)
            .map(|j| {
                Arc::new(StringArray::from_iter_values(
                    (0..keep).map(|r| v[r * width + j].as_str()),
                )) as ArrayRef
            })
            .collect(),
    }
}

fn pad(tensor: &mut HostTensor, rows: usize, to: usize) -> Result<(), ScoreError> {
    if rows == 0 || rows >= to {
        return Ok(());
    }
    let row_len = tensor.data.len() / rows;
    let last = OutputView::of(&tensor.data).copy((rows - 1) * row_len..rows * row_len);
    for _ in rows..to {
        tensor
            .data
            .extend_from(&last)
            .map_err(|e| ScoreError::Inference {
                message: e.to_string(),
            })?;
    }
    tensor.shape[0] = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array};

    fn origin() -> (PathBuf, u64) {
        (PathBuf::from("data/x.parquet"), 100)
    }

    fn input(name: &str, datatype: DataType, columns: &[&str], rank: usize) -> InputColumns {
        InputColumns {
            name: name.into(),
            datatype,
            columns: columns.iter().map(|s| s.to_string()).collect(),
            rank,
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn columns_interleave_into_rows() {
        let b = batch(vec![
            (
                "a",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
            ("b", Arc::new(Int64Array::from(vec![10, 20])) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ]);
        let (path, first_row) = origin();
        let o = Origin {
            path: &path,
            first_row,
        };
        let t = input_tensor(&input("x", DataType::Fp32, &["a", "b"], 2), &b, &o, None)
            .unwrap()
            .into_host();
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.data, TensorData::Fp32(vec![1.0, 10.0, 2.0, 20.0]));
        let t = input_tensor(&input("s", DataType::Bytes, &["s"], 1), &b, &o, None)
            .unwrap()
            .into_host();
        assert_eq!(t.shape, vec![2]);
        assert_eq!(t.data, TensorData::Bytes(vec!["x".into(), "y".into()]));
    }

    #[test]
    fn bad_cells_are_named_by_file_row_and_column() {
        let b = batch(vec![
            (
                "a",
                Arc::new(StringArray::from(vec!["1.5", "oops"])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef,
            ),
            (
                "m",
                Arc::new(Float64Array::from(vec![f64::NAN, 2.0])) as ArrayRef,
            ),
        ]);
        let (path, first_row) = origin();
        let o = Origin {
            path: &path,
            first_row,
        };
        let err = input_tensor(&input("a", DataType::Fp32, &["a"], 1), &b, &o, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("data/x.parquet") && text.contains("row 102"),
            "{text}"
        );
        assert!(text.contains("'a'") && text.contains("oops"), "{text}");
        let err = input_tensor(&input("n", DataType::Fp32, &["n"], 1), &b, &o, None).unwrap_err();
        assert!(err.to_string().contains("row 102") && err.to_string().contains("empty"));
        let err = input_tensor(&input("m", DataType::Fp64, &["m"], 1), &b, &o, None).unwrap_err();
        assert!(err.to_string().contains("row 101") && err.to_string().contains("NaN"));
        let fill = Fill("-1".into());
        let t = input_tensor(
            &input("n", DataType::Fp32, &["n", "m"], 2),
            &b,
            &o,
            Some(&fill),
        )
        .unwrap()
        .into_host();
        assert_eq!(t.data, TensorData::Fp32(vec![1.0, -1.0, -1.0, 2.0]));
        let bad_fill = Fill("zero".into());
        let err = input_tensor(
            &input("n", DataType::Fp32, &["n"], 1),
            &b,
            &o,
            Some(&bad_fill),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--fill zero"), "{err}");
    }

    #[test]
    fn outputs_split_into_columns_and_padding_repeats_the_last_row() {
        let data = TensorData::Fp32(vec![0.1, 0.9, 0.2, 0.8, 0.3, 0.7]);
        let arrays = output_arrays(&OutputView::of(&data), 2, 2);
        assert_eq!(arrays.len(), 2);
        assert_eq!(
            arrays[0].as_primitive::<Float32Type>().values().as_ref(),
            &[0.1, 0.2]
        );
        assert_eq!(
            arrays[1].as_primitive::<Float32Type>().values().as_ref(),
            &[0.9, 0.8]
        );
        let mut t = HostTensor {
            shape: vec![2, 2],
            data: TensorData::Int64(vec![1, 2, 3, 4]),
        };
        pad(&mut t, 2, 4).unwrap();
        assert_eq!(t.shape, vec![4, 2]);
        assert_eq!(t.data, TensorData::Int64(vec![1, 2, 3, 4, 3, 4, 3, 4]));
    }
}
