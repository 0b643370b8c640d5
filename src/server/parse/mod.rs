//! Request bodies, parsed in one pass straight into typed buffers: no `serde_json::Value` tree,
//! no per-element allocation for numbers, and limits enforced while parsing so that a request
//! declaring a huge shape or sending too many elements is refused before memory is committed.
//!
//! Two readers give the same answers: a direct scan of the bytes for bodies in the usual form
//! (`fast`), and the general `serde_json` one for everything else, errors included.
//!
//! For `infer`, both leave the request as it was sent (`raw`), its elements converted the same
//! way (`elements`), and `raw` then checks it into an [`InferRequest`]. `binary` is the binary
//! tensor data extension and `v1` the KServe v1 `predict` body.

mod binary;
mod elements;
mod fast;
mod general;
mod raw;
#[cfg(test)]
mod tests;
mod v1;

use super::tensor::{DataType, TensorData};

/// A parsed `infer` request, checked for shape/data agreement but not yet against the model.
#[derive(Debug)]
pub(crate) struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    /// Requested output names; `None` means all outputs.
    pub outputs: Option<Vec<String>>,
    /// For each requested output (as in `outputs`), its `parameters.binary_data`, if it has one.
    pub output_binary: Vec<Option<bool>>,
    /// The request's `parameters.binary_data_output`: outputs go in the binary part unless they
    /// say otherwise.
    pub binary_output: bool,
}

#[derive(Debug)]
pub(crate) struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Parses an Open Inference Protocol v2 `infer` body. The error is the message for a 400.
///
/// With `json_length` (the `Inference-Header-Content-Length` of the binary tensor data
/// extension), only that many bytes are JSON; the rest is the binary data of the inputs that
/// have `parameters.binary_data_size`, in input order.
///
/// JSON in the usual form (no escapes in strings, numbers that fit, no duplicate keys) takes a
/// direct scan of the bytes; everything else, errors included, goes through the general parser,
/// whose answer is the reference: the scan gives up rather than answer differently.
pub(crate) fn parse_infer(
    body: &[u8],
    json_length: Option<usize>,
    max_elements: usize,
) -> Result<InferRequest, String> {
    let (json, binary) = binary::split_binary(body, json_length)?;
    let raw = match fast::request(json, max_elements) {
        Some(raw) => raw,
        None => general::general_request(json, max_elements)?,
    };
    raw.finish(binary)
}

/// The general parser alone (tests compare it with [`parse_infer`]).
pub(crate) fn parse_infer_general(
    body: &[u8],
    json_length: Option<usize>,
    max_elements: usize,
) -> Result<InferRequest, String> {
    let (json, binary) = binary::split_binary(body, json_length)?;
    general::general_request(json, max_elements)?.finish(binary)
}

/// A tensor's `data` as a traffic log keeps it: a JSON array in the form `infer` accepts (flat or
/// nested as `shape`), converted to `datatype` as request data is. Floating-point data may also
/// hold the strings `"NaN"`, `"Infinity"` and `"-Infinity"`: model outputs can hold those values,
/// which JSON numbers cannot.
pub(crate) fn logged_data(
    datatype: DataType,
    shape: &[usize],
    data: serde_json::Value,
) -> Result<TensorData, String> {
    use serde::de::DeserializeSeed;

    let expected = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has more elements than memory can hold"))?;
    let floating = matches!(datatype, DataType::Fp16 | DataType::Fp32 | DataType::Fp64);
    // Numbers go straight into a typed buffer; only strings need the scalars first.
    let generic = floating && holds_string(&data);
    let flat_len = data.as_array().map_or(0, Vec::len);
    let seed = general::DataSeed {
        datatype: (!generic).then_some(datatype),
        capacity: expected.min(flat_len),
        max_elements: usize::MAX,
    };
    let elements::ParsedData {
        values,
        dims,
        error,
    } = seed
        .deserialize(data)
        .map_err(|e| format!("\"data\": {e}"))?;
    if let Some(error) = error {
        return Err(error);
    }
    let values = match values {
        elements::Values::Generic(scalars) if generic => {
            elements::Values::Generic(scalars.into_iter().map(non_finite).collect())
        }
        values => values,
    };
    let typed = values.into_typed(datatype, &"\"data\"")?;
    if dims.len() <= 1 {
        if typed.len() != expected {
            return Err(format!(
                "\"data\" has {} elements but shape {shape:?} needs {expected}",
                typed.len()
            ));
        }
    } else if dims != shape {
        return Err(format!(
            "nested \"data\" has shape {dims:?} but the declared shape is {shape:?}"
        ));
    }
    Ok(typed)
}

fn holds_string(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(_) => true,
        serde_json::Value::Array(items) => items.iter().any(holds_string),
        _ => false,
    }
}

fn non_finite(scalar: elements::Scalar) -> elements::Scalar {
    match scalar {
        elements::Scalar::Str(s) => match s.as_str() {
            "NaN" => elements::Scalar::Float(f64::NAN),
            "Infinity" => elements::Scalar::Float(f64::INFINITY),
            "-Infinity" => elements::Scalar::Float(f64::NEG_INFINITY),
            _ => elements::Scalar::Str(s),
        },
        other => other,
    }
}

/// The most elements a JSON array in `len` bytes can hold (`[0,0,...]`): buffers sized from a
/// declared shape are never larger than the body could fill.
fn capacity_bound(len: usize) -> usize {
    len / 2 + 1
}

/// Parses a KServe v1 `predict` body (`{"instances": [...]}`) into one tensor of `datatype`
/// whose first dimension is the number of instances.
pub(crate) fn parse_instances(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<(Vec<usize>, TensorData), String> {
    let parsed = match fast::instances(body, datatype, max_elements) {
        Some(parsed) => parsed,
        None => v1::general_instances(body, datatype, max_elements)?,
    };
    v1::finish_instances(parsed, datatype)
}

pub(crate) fn parse_instances_general(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<(Vec<usize>, TensorData), String> {
    v1::finish_instances(
        v1::general_instances(body, datatype, max_elements)?,
        datatype,
    )
}
