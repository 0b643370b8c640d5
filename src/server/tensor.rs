//! Tensors as the server holds them between JSON and ONNX Runtime: a datatype, a flat row-major
//! buffer of that type, and the conversions to and from `ort` values.

use std::ops::Range;

use half::f16;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType, ValueType};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// Open Inference Protocol datatypes the server can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// FP16, FP32 or FP64: scores rather than labels.
    pub(crate) fn is_floating(self) -> bool {
        matches!(self, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
    }

    pub(crate) fn from_name(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    pub(crate) fn from_ort(ty: TensorElementType) -> Option<DataType> {
        Some(match ty {
            TensorElementType::Bool => DataType::Bool,
            TensorElementType::Uint8 => DataType::Uint8,
            TensorElementType::Uint16 => DataType::Uint16,
            TensorElementType::Uint32 => DataType::Uint32,
            TensorElementType::Uint64 => DataType::Uint64,
            TensorElementType::Int8 => DataType::Int8,
            TensorElementType::Int16 => DataType::Int16,
            TensorElementType::Int32 => DataType::Int32,
            TensorElementType::Int64 => DataType::Int64,
            TensorElementType::Float16 => DataType::Fp16,
            TensorElementType::Float32 => DataType::Fp32,
            TensorElementType::Float64 => DataType::Fp64,
            TensorElementType::String => DataType::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element in binary tensor data; `None` for BYTES, whose elements are each a
    /// 4-byte little-endian length and that many bytes.
    pub(crate) fn byte_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub(crate) const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A flat, row-major tensor buffer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

/// Runs `$body` with `$v` bound to the buffer, whatever its type.
macro_rules! with_data {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub(crate) fn with_capacity(datatype: DataType, capacity: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(capacity)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(capacity)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(capacity)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(capacity)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// `n` zeros (empty strings for BYTES, `false` for BOOL).
    pub(crate) fn zeros(datatype: DataType, n: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::Uint8 => TensorData::Uint8(vec![0; n]),
            DataType::Uint16 => TensorData::Uint16(vec![0; n]),
            DataType::Uint32 => TensorData::Uint32(vec![0; n]),
            DataType::Uint64 => TensorData::Uint64(vec![0; n]),
            DataType::Int8 => TensorData::Int8(vec![0; n]),
            DataType::Int16 => TensorData::Int16(vec![0; n]),
            DataType::Int32 => TensorData::Int32(vec![0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            DataType::Fp16 => TensorData::Fp16(vec![f16::ZERO; n]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(vec![String::new(); n]),
        }
    }

    pub(crate) fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub(crate) fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    /// Appends `other`, which must have the same datatype (batching only merges those).
    pub(crate) fn extend_from(&mut self, other: &TensorData) -> Result<(), TensorError> {
        match (self, other) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::Uint8(a), TensorData::Uint8(b)) => a.extend_from_slice(b),
            (TensorData::Uint16(a), TensorData::Uint16(b)) => a.extend_from_slice(b),
            (TensorData::Uint32(a), TensorData::Uint32(b)) => a.extend_from_slice(b),
            (TensorData::Uint64(a), TensorData::Uint64(b)) => a.extend_from_slice(b),
            (TensorData::Int8(a), TensorData::Int8(b)) => a.extend_from_slice(b),
            (TensorData::Int16(a), TensorData::Int16(b)) => a.extend_from_slice(b),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
            (TensorData::Fp16(a), TensorData::Fp16(b)) => a.extend_from_slice(b),
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
            (a, b) => {
                return Err(TensorError(format!(
                    "cannot append {} data to {} data",
                    b.datatype(),
                    a.datatype()
                )));
            }
        }
        Ok(())
    }

    /// Moves the buffer into an ONNX Runtime value; primitive buffers are handed over without a
    /// copy.
    pub(crate) fn into_ort(self, shape: &[usize]) -> Result<DynValue, TensorError> {
        let shape = shape.to_vec();
        let value = match self {
            TensorData::Bool(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Uint8(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Uint16(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Uint32(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Uint64(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Int8(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Int16(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Int32(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Int64(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Fp32(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Fp64(v) => Tensor::from_array((shape, v))?.into_dyn(),
            TensorData::Bytes(v) => {
                let text: Vec<&str> = v.iter().map(String::as_str).collect();
                string_tensor(shape, &text)?.into_dyn()
            }
            TensorData::Fp16(v) => fp16_tensor(shape, &v)?.into_dyn(),
        };
        Ok(value)
    }
}

/// Little-endian, fixed-size elements of binary tensor data.
fn from_le<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    let (chunks, _) = bytes.as_chunks::<N>();
    chunks.iter().map(|&chunk| from(chunk)).collect()
}

fn to_le<T, const N: usize>(out: &mut Vec<u8>, values: &[T], to: impl Fn(&T) -> [u8; N]) {
    for value in values {
        out.extend_from_slice(&to(value));
    }
}

/// The binary tensor data extension's encoding (little-endian, row-major; BYTES elements as a
/// 4-byte little-endian length and the bytes).
impl TensorData {
    /// Decodes `count` elements of `datatype` that take exactly `bytes`.
    pub(crate) fn from_binary(
        datatype: DataType,
        bytes: &[u8],
        count: usize,
    ) -> Result<TensorData, String> {
        if let Some(width) = datatype.byte_size()
            && bytes.len() != count.saturating_mul(width)
        {
            return Err(format!(
                "binary data of {} bytes for {count} {datatype} elements of {width} bytes",
                bytes.len()
            ));
        }
        Ok(match datatype {
            DataType::Bool => TensorData::Bool(
                bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        other => Err(format!(
                            "element {i} of the binary data is {other}, not a BOOL (0 or 1)"
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
            DataType::Int8 => TensorData::Int8(from_le(bytes, i8::from_le_bytes)),
            DataType::Uint16 => TensorData::Uint16(from_le(bytes, u16::from_le_bytes)),
            DataType::Int16 => TensorData::Int16(from_le(bytes, i16::from_le_bytes)),
            DataType::Fp16 => {
                TensorData::Fp16(from_le(bytes, |b| f16::from_bits(u16::from_le_bytes(b))))
            }
            DataType::Uint32 => TensorData::Uint32(from_le(bytes, u32::from_le_bytes)),
            DataType::Int32 => TensorData::Int32(from_le(bytes, i32::from_le_bytes)),
            DataType::Fp32 => TensorData::Fp32(from_le(bytes, f32::from_le_bytes)),
            DataType::Uint64 => TensorData::Uint64(from_le(bytes, u64::from_le_bytes)),
            DataType::Int64 => TensorData::Int64(from_le(bytes, i64::from_le_bytes)),
            DataType::Fp64 => TensorData::Fp64(from_le(bytes, f64::from_le_bytes)),
            DataType::Bytes => TensorData::Bytes(bytes_elements(bytes, count)?),
        })
    }

    /// The length of the binary form.
    pub(crate) fn binary_size(&self) -> usize {
        match (self, self.datatype().byte_size()) {
            (TensorData::Bytes(v), _) => v.iter().map(|s| 4 + s.len()).sum(),
            (_, Some(width)) => self.len() * width,
            (_, None) => 0,
        }
    }

    /// Appends the binary form (`binary_size` bytes) to `out`.
    pub(crate) fn write_binary(&self, out: &mut Vec<u8>) -> Result<(), TensorError> {
        out.reserve(self.binary_size());
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Int8(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Uint16(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int16(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp16(v) => to_le(out, v, |x| x.to_bits().to_le_bytes()),
            TensorData::Uint32(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int32(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp32(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Uint64(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Int64(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Fp64(v) => to_le(out, v, |x| x.to_le_bytes()),
            TensorData::Bytes(v) => {
                for s in v {
                    let len = u32::try_from(s.len()).map_err(|_| {
                        TensorError(format!(
                            "a BYTES element of {} bytes is too long for binary data",
                            s.len()
                        ))
                    })?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        Ok(())
    }
}

/// `count` BYTES elements, each a 4-byte little-endian length and that many bytes, filling
/// `bytes` exactly. The server carries BYTES as text, so each must be UTF-8.
fn bytes_elements(mut bytes: &[u8], count: usize) -> Result<Vec<String>, String> {
    // Every element takes at least its 4-byte length.
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    for i in 0..count {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(format!(
                "the binary BYTES data ends before element {i} of {count}"
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some((element, rest)) = rest.split_at_checked(len) else {
            return Err(format!(
                "BYTES element {i} of the binary data says {len} bytes, but only {} are left",
                rest.len()
            ));
        };
        let text = std::str::from_utf8(element)
            .map_err(|_| format!("BYTES element {i} of the binary data is not UTF-8 text"))?;
        out.push(text.to_owned());
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(format!(
            "the binary BYTES data has {} bytes after its {count} elements",
            bytes.len()
        ));
    }
    Ok(out)
}

/// `ort` is built without its `half` feature, so FP16 tensors are filled through their raw
/// buffer.
fn fp16_tensor(shape: Vec<usize>, values: &[f16]) -> Result<DynTensor, TensorError> {
    let expected: usize = shape.iter().product();
    if expected != values.len() {
        return Err(TensorError(format!(
            "FP16 tensor of shape {shape:?} needs {expected} values, got {}",
            values.len()
        )));
    }
    let mut tensor = DynTensor::new(&Allocator::default(), TensorElementType::Float16, shape)?;
    if !values.is_empty() {
        let ptr = tensor.data_ptr_mut().cast::<u16>();
        if ptr.is_null() {
            return Err(TensorError(
                "ONNX Runtime gave no buffer for an FP16 tensor".into(),
            ));
        }
        // SAFETY: the tensor was just allocated on the CPU by ONNX Runtime with `values.len()`
        // 2-byte elements (checked above), is exclusively ours, and FP16 elements are u16 bits.
        let buffer = unsafe { std::slice::from_raw_parts_mut(ptr, values.len()) };
        for (slot, value) in buffer.iter_mut().zip(values) {
            *slot = value.to_bits();
        }
    }
    Ok(tensor)
}

/// A string tensor of `values` (row-major, `shape`), copied once: into one buffer of
/// NUL-terminated strings that ONNX Runtime copies into its own strings (short ones without an
/// allocation). `ort`'s own constructor wants owned strings and makes a C string of each, two
/// allocations per cell, which costs more than the model on a table with text columns.
pub(crate) fn string_tensor(shape: Vec<usize>, values: &[&str]) -> Result<DynTensor, TensorError> {
    use ort::AsPointer;
    let expected: usize = shape.iter().product();
    if expected != values.len() {
        return Err(TensorError(format!(
            "BYTES tensor of shape {shape:?} needs {expected} values, got {}",
            values.len()
        )));
    }
    let mut text = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    let mut starts = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        if value.as_bytes().contains(&0) {
            return Err(TensorError(format!(
                "BYTES element {i} holds a NUL character, which ONNX Runtime strings cannot"
            )));
        }
        starts.push(text.len());
        text.extend_from_slice(value.as_bytes());
        text.push(0);
    }
    let pointers: Vec<*const std::ffi::c_char> = starts
        .iter()
        .map(|&start| text[start..].as_ptr().cast())
        .collect();
    let mut tensor = DynTensor::new(&Allocator::default(), TensorElementType::String, shape)?;
    if pointers.is_empty() {
        return Ok(tensor);
    }
    let api = ort::api();
    // SAFETY: `tensor` is a string tensor ONNX Runtime just made with exactly `pointers.len()`
    // elements; every pointer points at a NUL-terminated string inside `text`, which outlives
    // the call; ONNX Runtime copies the strings and keeps no pointer.
    let status =
        unsafe { (api.FillStringTensor)(tensor.ptr_mut(), pointers.as_ptr(), pointers.len()) };
    if !status.0.is_null() {
        // SAFETY: a non-null status is an error ONNX Runtime allocated for us to read and free.
        let message = unsafe {
            let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            text
        };
        return Err(TensorError(format!("filling a string tensor: {message}")));
    }
    Ok(tensor)
}

/// A read-only view of one ONNX Runtime output, from which per-request slices are copied.
pub(crate) enum OutputView<'a> {
    Bool(&'a [bool]),
    Uint8(&'a [u8]),
    Uint16(&'a [u16]),
    Uint32(&'a [u32]),
    Uint64(&'a [u64]),
    Int8(&'a [i8]),
    Int16(&'a [i16]),
    Int32(&'a [i32]),
    Int64(&'a [i64]),
    /// FP16 as raw bits.
    Fp16(&'a [u16]),
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
    Bytes(Vec<String>),
}

impl<'a> OutputView<'a> {
    /// The shape and elements of `value`; fails for values that are not tensors.
    pub(crate) fn new(value: &'a DynValue) -> Result<(Vec<usize>, OutputView<'a>), TensorError> {
        let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
            return Err(TensorError(format!(
                "output is {}, not a tensor",
                value.dtype()
            )));
        };
        let dims = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TensorError(format!("output has a negative dimension: {shape:?}")))?;
        let view = match ty {
            TensorElementType::Bool => OutputView::Bool(value.try_extract_tensor()?.1),
            TensorElementType::Uint8 => OutputView::Uint8(value.try_extract_tensor()?.1),
            TensorElementType::Uint16 => OutputView::Uint16(value.try_extract_tensor()?.1),
            TensorElementType::Uint32 => OutputView::Uint32(value.try_extract_tensor()?.1),
            TensorElementType::Uint64 => OutputView::Uint64(value.try_extract_tensor()?.1),
            TensorElementType::Int8 => OutputView::Int8(value.try_extract_tensor()?.1),
            TensorElementType::Int16 => OutputView::Int16(value.try_extract_tensor()?.1),
            TensorElementType::Int32 => OutputView::Int32(value.try_extract_tensor()?.1),
            TensorElementType::Int64 => OutputView::Int64(value.try_extract_tensor()?.1),
            TensorElementType::Float32 => OutputView::Fp32(value.try_extract_tensor()?.1),
            TensorElementType::Float64 => OutputView::Fp64(value.try_extract_tensor()?.1),
            TensorElementType::String => OutputView::Bytes(value.try_extract_strings()?.1),
            TensorElementType::Float16 => {
                OutputView::Fp16(fp16_bits(value, dims.iter().product())?)
            }
            other => {
                return Err(TensorError(format!(
                    "output element type {other} has no inference-protocol datatype"
                )));
            }
        };
        if view.len() != dims.iter().product::<usize>() {
            return Err(TensorError(format!(
                "output has {} elements but shape {dims:?}",
                view.len()
            )));
        }
        Ok((dims, view))
    }

    /// A view of a host buffer, as if ONNX Runtime had returned it: the fuzz tests split
    /// batches without a model.
    pub(crate) fn of(data: &'a TensorData) -> OutputView<'a> {
        use half::slice::HalfFloatSliceExt;
        match data {
            TensorData::Bool(v) => OutputView::Bool(v),
            TensorData::Uint8(v) => OutputView::Uint8(v),
            TensorData::Uint16(v) => OutputView::Uint16(v),
            TensorData::Uint32(v) => OutputView::Uint32(v),
            TensorData::Uint64(v) => OutputView::Uint64(v),
            TensorData::Int8(v) => OutputView::Int8(v),
            TensorData::Int16(v) => OutputView::Int16(v),
            TensorData::Int32(v) => OutputView::Int32(v),
            TensorData::Int64(v) => OutputView::Int64(v),
            TensorData::Fp16(v) => OutputView::Fp16(v.reinterpret_cast()),
            TensorData::Fp32(v) => OutputView::Fp32(v),
            TensorData::Fp64(v) => OutputView::Fp64(v),
            TensorData::Bytes(v) => OutputView::Bytes(v.clone()),
        }
    }

    fn len(&self) -> usize {
        match self {
            OutputView::Bool(v) => v.len(),
            OutputView::Uint8(v) => v.len(),
            OutputView::Uint16(v) => v.len(),
            OutputView::Uint32(v) => v.len(),
            OutputView::Uint64(v) => v.len(),
            OutputView::Int8(v) => v.len(),
            OutputView::Int16(v) => v.len(),
            OutputView::Int32(v) => v.len(),
            OutputView::Int64(v) => v.len(),
            OutputView::Fp16(v) => v.len(),
            OutputView::Fp32(v) => v.len(),
            OutputView::Fp64(v) => v.len(),
            OutputView::Bytes(v) => v.len(),
        }
    }

    /// Copies the elements in `range` (the caller keeps it within bounds).
    pub(crate) fn copy(&self, range: Range<usize>) -> TensorData {
        match self {
            OutputView::Bool(v) => TensorData::Bool(v[range].to_vec()),
            OutputView::Uint8(v) => TensorData::Uint8(v[range].to_vec()),
            OutputView::Uint16(v) => TensorData::Uint16(v[range].to_vec()),
            OutputView::Uint32(v) => TensorData::Uint32(v[range].to_vec()),
            OutputView::Uint64(v) => TensorData::Uint64(v[range].to_vec()),
            OutputView::Int8(v) => TensorData::Int8(v[range].to_vec()),
            OutputView::Int16(v) => TensorData::Int16(v[range].to_vec()),
            OutputView::Int32(v) => TensorData::Int32(v[range].to_vec()),
            OutputView::Int64(v) => TensorData::Int64(v[range].to_vec()),
            OutputView::Fp16(v) => {
                TensorData::Fp16(v[range].iter().map(|&b| f16::from_bits(b)).collect())
            }
            OutputView::Fp32(v) => TensorData::Fp32(v[range].to_vec()),
            OutputView::Fp64(v) => TensorData::Fp64(v[range].to_vec()),
            OutputView::Bytes(v) => TensorData::Bytes(v[range].to_vec()),
        }
    }
}

fn fp16_bits(value: &DynValue, len: usize) -> Result<&[u16], TensorError> {
    if len == 0 {
        return Ok(&[]);
    }
    let tensor = value.view().downcast::<DynTensorValueType>()?;
    let ptr = tensor.data_ptr().cast::<u16>();
    if ptr.is_null() {
        return Err(TensorError(
            "ONNX Runtime gave no buffer for an FP16 output".into(),
        ));
    }
    // SAFETY: `value` is a CPU tensor of FP16 (2-byte) elements with `len` elements, owned by
    // the session outputs that outlive the returned borrow of `value`; nothing writes to it.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TensorError(pub(crate) String);

impl From<ort::Error> for TensorError {
    fn from(e: ort::Error) -> Self {
        TensorError(e.to_string())
    }
}

/// Like `with_data!`, with `$v` an iterator of serializable elements (FP16 as `f32`).
macro_rules! with_serializable {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Fp16(v) => {
                let $v = v.iter().map(|x| x.to_f32());
                $body
            }
            TensorData::Bool(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Uint8(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Uint16(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Uint32(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Uint64(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Int8(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Int16(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Int32(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Int64(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Fp32(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Fp64(v) => {
                let $v = v.iter();
                $body
            }
            TensorData::Bytes(v) => {
                let $v = v.iter();
                $body
            }
        }
    };
}

/// Serializes as a flat JSON array; FP16 goes out as ordinary numbers.
impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        with_serializable!(self, v => serializer.collect_seq(v))
    }
}

/// One element of a buffer, for nested (KServe v1) output.
pub(crate) struct Element<'a>(pub(crate) &'a TensorData, pub(crate) usize);

impl Serialize for Element<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Element(data, i) = *self;
        match data {
            // Mapped iterators do not skip in O(1).
            TensorData::Fp16(v) => v.get(i).map(|x| x.to_f32()).serialize(serializer),
            other => with_serializable!(other, v => {
                let mut v = v;
                v.nth(i).serialize(serializer)
            }),
        }
    }
}

/// The elements `offset..` of a buffer as nested arrays of `shape` (a scalar when the shape is
/// empty).
pub(crate) struct Nested<'a> {
    pub(crate) data: &'a TensorData,
    pub(crate) offset: usize,
    pub(crate) shape: &'a [usize],
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some((&outer, inner)) = self.shape.split_first() else {
            return Element(self.data, self.offset).serialize(serializer);
        };
        let stride: usize = inner.iter().product();
        let mut seq = serializer.serialize_seq(Some(outer))?;
        for i in 0..outer {
            seq.serialize_element(&Nested {
                data: self.data,
                offset: self.offset + i * stride,
                shape: inner,
            })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::from_name(dt.name()), Some(dt));
        }
        assert_eq!(DataType::from_name("fp32"), None);
        assert_eq!(DataType::from_name("FLOAT"), None);
    }

    #[test]
    fn binary_data_round_trips() {
        let all = [
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![1, 65535]),
            TensorData::Uint32(vec![2, u32::MAX]),
            TensorData::Uint64(vec![3, u64::MAX]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![-5, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, 6]),
            TensorData::Int64(vec![i64::MIN, 7]),
            TensorData::Fp16(vec![f16::from_f32(-0.5), f16::MAX]),
            TensorData::Fp32(vec![-0.0, f32::MIN_POSITIVE]),
            TensorData::Fp64(vec![1e300, -2.5]),
            TensorData::Bytes(vec!["".into(), "h\u{e9}".into()]),
        ];
        for data in all {
            let mut bytes = vec![9];
            data.write_binary(&mut bytes).unwrap();
            assert_eq!(bytes.len() - 1, data.binary_size(), "{data:?}");
            let back = TensorData::from_binary(data.datatype(), &bytes[1..], 2).unwrap();
            assert_eq!(back, data);
            if let Some(width) = data.datatype().byte_size() {
                assert_eq!(data.binary_size(), 2 * width);
                let err = TensorData::from_binary(data.datatype(), &bytes[2..], 2).unwrap_err();
                assert!(err.contains("elements"), "{err}");
            }
        }
        assert_eq!(
            TensorData::from_binary(DataType::Fp32, &1.5f32.to_le_bytes(), 1),
            Ok(TensorData::Fp32(vec![1.5]))
        );
        assert_eq!(
            TensorData::from_binary(DataType::Bytes, &[1, 0, 0, 0, b'x', 0, 0, 0, 0], 2),
            Ok(TensorData::Bytes(vec!["x".into(), "".into()]))
        );
        let err =
            TensorData::from_binary(DataType::Bytes, &[1, 0, 0, 0, b'x', 0, 0], 2).unwrap_err();
        assert!(err.contains("ends before element 1"), "{err}");
    }

    #[test]
    fn serializes_flat_and_nested() {
        let data = TensorData::Fp32(vec![1.0, 2.5, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            "[1.0,2.5,3.0,4.0,5.0,6.0]"
        );
        let nested = Nested {
            data: &data,
            offset: 0,
            shape: &[2, 3],
        };
        assert_eq!(
            serde_json::to_string(&nested).unwrap(),
            "[[1.0,2.5,3.0],[4.0,5.0,6.0]]"
        );
        let row = Nested {
            data: &data,
            offset: 3,
            shape: &[],
        };
        assert_eq!(serde_json::to_string(&row).unwrap(), "4.0");
        let halves = TensorData::Fp16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)]);
        assert_eq!(serde_json::to_string(&halves).unwrap(), "[0.5,-2.0]");
        let words = TensorData::Bytes(vec!["a\"b".into()]);
        assert_eq!(serde_json::to_string(&words).unwrap(), r#"["a\"b"]"#);
    }

    #[test]
    fn extend_refuses_mixed_types() {
        let mut a = TensorData::Int64(vec![1]);
        a.extend_from(&TensorData::Int64(vec![2, 3])).unwrap();
        assert_eq!(a, TensorData::Int64(vec![1, 2, 3]));
        assert!(a.extend_from(&TensorData::Fp32(vec![1.0])).is_err());
    }
}
