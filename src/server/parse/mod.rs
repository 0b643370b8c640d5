//! Request bodies, parsed in one pass straight into typed buffers: no `serde_json::Value` tree,
//! no per-element allocation for numbers, and limits enforced while parsing so that a request
//! declaring a huge shape or sending too many elements is refused before memory is committed.
//!
//! Two readers give the same answers: a direct scan of the bytes for bodies in the usual form
//! (`fast`), and the general `serde_json` one for everything else, errors included.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    let (json, binary) = split_binary(body, json_length)?;
    let raw = match fast::request(json, max_elements) {
        Some(raw) => raw,
        None => general_request(json, max_elements)?,
    };
    raw.finish(binary)
}

/// The general parser alone (tests compare it with [`parse_infer`]).
pub(crate) fn parse_infer_general(
    body: &[u8],
    json_length: Option<usize>,
    max_elements: usize,
) -> Result<InferRequest, String> {
    let (json, binary) = split_binary(body, json_length)?;
    general_request(json, max_elements)?.finish(binary)
}

fn split_binary(body: &[u8], json_length: Option<usize>) -> Result<(&[u8], Option<&[u8]>), String> {
    let Some(length) = json_length else {
        return Ok((body, None));
    };
    match body.split_at_checked(length) {
        Some((json, binary)) => Ok((json, Some(binary))),
        None => Err(format!(
            "Inference-Header-Content-Length is {length}, but the whole body has only {} bytes",
            body.len()
        )),
    }
}

fn general_request(body: &[u8], max_elements: usize) -> Result<RawRequest, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = RequestSeed {
        max_elements,
        max_capacity: capacity_bound(body.len()),
    }
    .deserialize(&mut de)
    .map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(raw)
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
        None => general_instances(body, datatype, max_elements)?,
    };
    finish_instances(parsed, datatype)
}

pub(crate) fn parse_instances_general(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<(Vec<usize>, TensorData), String> {
    finish_instances(general_instances(body, datatype, max_elements)?, datatype)
}

fn general_instances(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<Option<ParsedData>, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = InstancesSeed {
        datatype,
        max_elements,
    }
    .deserialize(&mut de)
    .map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(parsed)
}

fn finish_instances(
    parsed: Option<ParsedData>,
    datatype: DataType,
) -> Result<(Vec<usize>, TensorData), String> {
    let data = parsed.ok_or_else(|| "the request has no \"instances\"".to_string())?;
    let ParsedData {
        values,
        dims,
        error,
    } = data;
    if let Some(error) = error {
        return Err(format!(
            "instances: {}",
            error.replace("\"data\"", "\"instances\"")
        ));
    }
    let values = values.into_typed(datatype, "instances")?;
    match dims.first() {
        None => return Err("\"instances\" must be an array with one entry per row".into()),
        Some(0) => return Err("\"instances\" is empty; send at least one instance".into()),
        Some(_) => {}
    }
    Ok((dims, values))
}

fn json_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {e}")
        }
        _ => e.to_string(),
    }
}

/// `input 'name'`, or `input #i` while the name is not known.
fn label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(name) => format!("input '{name}'"),
        None => format!("input #{index}"),
    }
}

struct RawRequest {
    id: Option<String>,
    inputs: Option<Vec<RawInput>>,
    outputs: Option<Vec<RawOutput>>,
    /// `parameters.binary_data_output`.
    binary_output: Flag,
}

struct RawOutput {
    name: String,
    /// `parameters.binary_data`.
    binary: Flag,
}

/// A boolean parameter: absent (or null), its value, or what was sent instead.
type Flag = Option<Result<bool, String>>;

fn flag(value: Option<serde_json::Value>) -> Flag {
    value.map(|v| v.as_bool().ok_or_else(|| describe_value(&v)))
}

/// Reads a `parameters` value for one key: its value unless null. The rest is skipped unread,
/// and parameters that are not an object are ignored, as they were before any was read.
struct ParamSeed(&'static str);

impl<'de> DeserializeSeed<'de> for ParamSeed {
    type Value = Option<serde_json::Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamSeed {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("parameters (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(StrSeed)? {
            if key == self.0 {
                let value: serde_json::Value = map.next_value()?;
                found = (!value.is_null()).then_some(value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn binary_data_parameter<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    ParamSeed("binary_data").deserialize(d)
}

/// A parameter value for a message, cut short.
fn describe_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl RawRequest {
    fn finish(self, binary: Option<&[u8]>) -> Result<InferRequest, String> {
        let mut part = BinaryPart {
            bytes: binary,
            used: 0,
        };
        let inputs = self
            .inputs
            .ok_or_else(|| "the request has no \"inputs\"".to_string())?
            .into_iter()
            .enumerate()
            .map(|(i, input)| input.finish(i, &mut part))
            .collect::<Result<Vec<_>, _>>()?;
        part.all_used()?;
        let binary_output = match self.binary_output {
            None => false,
            Some(Ok(b)) => b,
            Some(Err(v)) => {
                return Err(format!(
                    "\"parameters.binary_data_output\" must be true or false, not {v}"
                ));
            }
        };
        let (outputs, output_binary) = match self.outputs {
            None => (None, Vec::new()),
            Some(outputs) => {
                let mut names = Vec::with_capacity(outputs.len());
                let mut flags = Vec::with_capacity(outputs.len());
                for RawOutput { name, binary } in outputs {
                    flags.push(binary.transpose().map_err(|v| {
                        format!(
                            "output '{name}': \"parameters.binary_data\" must be true or false, not {v}"
                        )
                    })?);
                    names.push(name);
                }
                (Some(names), flags)
            }
        };
        Ok(InferRequest {
            id: self.id,
            inputs,
            outputs,
            output_binary,
            binary_output,
        })
    }
}

/// The binary part of a request, handed out to the binary inputs in order.
struct BinaryPart<'a> {
    /// `None` without an `Inference-Header-Content-Length`.
    bytes: Option<&'a [u8]>,
    used: usize,
}

impl BinaryPart<'_> {
    /// The next `size` bytes, as the data of an input of `datatype` and `shape`.
    fn take(
        &mut self,
        what: &str,
        size: u64,
        datatype: DataType,
        shape: &[usize],
    ) -> Result<TensorData, String> {
        let Some(bytes) = self.bytes else {
            return Err(format!(
                "{what}: \"parameters.binary_data_size\" is set, but the request has no binary \
                 part (send the Inference-Header-Content-Length header: the length of the JSON \
                 before the binary data)"
            ));
        };
        let count: usize = shape.iter().product();
        if let Some(width) = datatype.byte_size() {
            let need = count as u128 * width as u128;
            if u128::from(size) != need {
                return Err(format!(
                    "{what}: \"binary_data_size\" is {size} bytes, but shape {shape:?} of \
                     {datatype} takes {need} ({count} elements of {width} bytes)"
                ));
            }
        }
        let left = bytes.len().saturating_sub(self.used);
        let chunk = usize::try_from(size)
            .ok()
            .and_then(|size| bytes.get(self.used..self.used.checked_add(size)?))
            .ok_or_else(|| {
                format!(
                    "{what}: \"binary_data_size\" is {size} bytes, but only {left} bytes of \
                     binary data are left for it"
                )
            })?;
        self.used += chunk.len();
        TensorData::from_binary(datatype, chunk, count).map_err(|m| format!("{what}: {m}"))
    }

    fn all_used(&self) -> Result<(), String> {
        match self.bytes {
            Some(bytes) if bytes.len() > self.used => Err(format!(
                "the binary part of the request has {} bytes, but its inputs' \
                 \"binary_data_size\" add up to {}",
                bytes.len(),
                self.used
            )),
            _ => Ok(()),
        }
    }
}

struct RequestSeed {
    max_elements: usize,
    /// The largest buffer a declared shape may reserve (see [`capacity_bound`]).
    max_capacity: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Id,
    Inputs,
    Outputs,
    Parameters,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RawRequest;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawRequest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RawRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object with \"inputs\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest, A::Error> {
        let mut request = RawRequest {
            id: None,
            inputs: None,
            outputs: None,
            binary_output: None,
        };
        while let Some(field) = map.next_key::<RequestField>()? {
            match field {
                RequestField::Id => {
                    request.id =
                        Some(map.next_value::<String>().map_err(|e| {
                            A::Error::custom(format!("\"id\" must be a string: {e}"))
                        })?)
                }
                RequestField::Inputs => {
                    request.inputs = Some(map.next_value_seed(InputsSeed {
                        max_elements: self.max_elements,
                        max_capacity: self.max_capacity,
                    })?)
                }
                RequestField::Outputs => {
                    let outputs: Vec<RequestedOutput> = map.next_value()?;
                    request.outputs = Some(
                        outputs
                            .into_iter()
                            .map(|o| RawOutput {
                                name: o.name,
                                binary: flag(o.binary_data),
                            })
                            .collect(),
                    );
                }
                RequestField::Parameters => {
                    request.binary_output =
                        flag(map.next_value_seed(ParamSeed("binary_data_output"))?);
                }
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(request)
    }
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    /// `parameters.binary_data`.
    #[serde(
        default,
        rename = "parameters",
        deserialize_with = "binary_data_parameter"
    )]
    binary_data: Option<serde_json::Value>,
}

struct InputsSeed {
    max_elements: usize,
    max_capacity: usize,
}

impl<'de> DeserializeSeed<'de> for InputsSeed {
    type Value = Vec<RawInput>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<RawInput>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed {
    type Value = Vec<RawInput>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"inputs\" as an array of tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawInput>, A::Error> {
        let mut inputs = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
        while let Some(input) = seq.next_element_seed(InputSeed {
            max_elements: self.max_elements,
            max_capacity: self.max_capacity,
            index: inputs.len(),
        })? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

/// One input as it was sent. Problems found while parsing are kept and reported when the whole
/// object has been read, so that the message can name the tensor whatever the key order.
struct RawInput {
    name: Option<String>,
    shape: Option<Result<Vec<usize>, String>>,
    datatype: Option<Result<DataType, String>>,
    data: Option<ParsedData>,
    /// `parameters.binary_data_size`: the data is in the binary part.
    binary: Option<Result<u64, String>>,
}

impl RawInput {
    fn finish(self, index: usize, part: &mut BinaryPart) -> Result<InputTensor, String> {
        let Some(name) = self.name else {
            return Err(format!("input #{index}: missing \"name\""));
        };
        let what = format!("input '{name}'");
        let Some(shape) = self.shape else {
            return Err(format!("{what}: missing \"shape\""));
        };
        let shape = shape.map_err(|m| format!("{what}: {m}"))?;
        let Some(datatype) = self.datatype else {
            return Err(format!("{what}: missing \"datatype\""));
        };
        let datatype = datatype.map_err(|m| format!("{what}: {m}"))?;
        match self.binary {
            None => {}
            Some(Err(v)) => {
                return Err(format!(
                    "{what}: \"parameters.binary_data_size\" must be a number of bytes, not {v}"
                ));
            }
            Some(Ok(_)) if self.data.is_some() => {
                return Err(format!(
                    "{what}: both \"data\" and \"parameters.binary_data_size\" are set; send \
                     the data one way"
                ));
            }
            Some(Ok(size)) => {
                let data = part.take(&what, size, datatype, &shape)?;
                return Ok(InputTensor {
                    name,
                    datatype,
                    shape,
                    data,
                });
            }
        }
        let Some(ParsedData {
            values,
            dims,
            error,
        }) = self.data
        else {
            return Err(format!("input '{name}': missing \"data\""));
        };
        if let Some(error) = error {
            return Err(format!("{what}: {error}"));
        }
        let data = values.into_typed(datatype, &what)?;
        check_data_shape(&name, &shape, &dims, data.len())?;
        Ok(InputTensor {
            name,
            datatype,
            shape,
            data,
        })
    }
}

/// Flat data must have as many elements as the shape; nested data must nest exactly as the shape.
fn check_data_shape(name: &str, shape: &[usize], dims: &[usize], len: usize) -> Result<(), String> {
    let expected: usize = shape.iter().product();
    if dims.len() <= 1 {
        if len != expected {
            return Err(format!(
                "input '{name}': \"data\" has {len} elements but shape {shape:?} needs {expected}"
            ));
        }
    } else if dims != shape {
        return Err(format!(
            "input '{name}': nested \"data\" has shape {dims:?} but the declared shape is {shape:?}"
        ));
    }
    Ok(())
}

struct InputSeed {
    max_elements: usize,
    max_capacity: usize,
    index: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Data,
    Parameters,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for InputSeed {
    type Value = RawInput;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawInput, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InputSeed {
    type Value = RawInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor object with name, shape, datatype and data")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInput, A::Error> {
        let mut input = RawInput {
            name: None,
            shape: None,
            datatype: None,
            data: None,
            binary: None,
        };
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name => input.name = Some(map.next_value()?),
                InputField::Shape => {
                    let shape: Vec<i64> = map.next_value().map_err(|e| {
                        let what = label(input.name.as_deref(), self.index);
                        A::Error::custom(format!("{what}: bad \"shape\": {e}"))
                    })?;
                    input.shape = Some(check_shape(&shape, self.max_elements));
                }
                InputField::Datatype => {
                    let name: std::borrow::Cow<'de, str> = map.next_value_seed(StrSeed)?;
                    input.datatype = Some(DataType::from_name(&name).ok_or_else(|| {
                        let known: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
                        format!(
                            "unknown datatype \"{name}\" (expected one of {})",
                            known.join(", ")
                        )
                    }));
                }
                InputField::Data => {
                    input.data = Some(match &input.shape {
                        // A shape over the limit refuses the data unread.
                        Some(Err(_)) => {
                            map.next_value::<IgnoredAny>()?;
                            ParsedData::skipped()
                        }
                        shape => {
                            // Shape first (as clients send it) lets the buffer be allocated once.
                            let capacity = match shape {
                                Some(Ok(dims)) => {
                                    dims.iter().product::<usize>().min(self.max_capacity)
                                }
                                _ => 0,
                            };
                            map.next_value_seed(DataSeed {
                                datatype: input.datatype.clone().and_then(Result::ok),
                                capacity,
                                max_elements: self.max_elements,
                            })?
                        }
                    });
                }
                InputField::Parameters => {
                    input.binary = map
                        .next_value_seed(ParamSeed("binary_data_size"))?
                        .map(|v| v.as_u64().ok_or_else(|| describe_value(&v)));
                }
                InputField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(input)
    }
}

/// Refuses negative dimensions and shapes with more than `max_elements` elements, before any
/// buffer for them exists.
fn check_shape(shape: &[i64], max_elements: usize) -> Result<Vec<usize>, String> {
    let mut dims = Vec::with_capacity(shape.len());
    let mut product: u128 = 1;
    for &d in shape {
        let Ok(d) = usize::try_from(d) else {
            return Err(format!("shape {shape:?} has a negative dimension"));
        };
        product = product.saturating_mul(d as u128);
        dims.push(d);
    }
    if product > max_elements as u128 {
        return Err(format!(
            "shape {shape:?} declares {product} elements, more than the limit of {max_elements}"
        ));
    }
    Ok(dims)
}

/// A string, borrowed from the body when it has no escapes.
struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// Tensor elements as parsed: typed when the datatype was known before the data, otherwise kept
/// as JSON scalars and converted once the datatype is known.
enum Values {
    Typed(TensorData),
    Generic(Vec<Scalar>),
}

struct ParsedData {
    values: Values,
    /// The nesting of the data: `[n]` for a flat array, `[rows, cols]` for nested rows, `[]` for
    /// a bare scalar.
    dims: Vec<usize>,
    /// What was wrong with the data (the rest of it was read without being kept).
    error: Option<String>,
}

impl ParsedData {
    fn skipped() -> ParsedData {
        ParsedData {
            values: Values::Generic(Vec::new()),
            dims: Vec::new(),
            error: None,
        }
    }
}

impl Values {
    fn into_typed(self, datatype: DataType, what: &str) -> Result<TensorData, String> {
        match self {
            Values::Typed(data) if data.datatype() == datatype => Ok(data),
            Values::Typed(data) => Err(format!(
                "{what}: data was parsed as {} but the datatype is {datatype}",
                data.datatype()
            )),
            Values::Generic(scalars) => {
                macro_rules! convert {
                    ($t:ty, $variant:ident) => {
                        TensorData::$variant(convert::<$t>(scalars, what, datatype)?)
                    };
                }
                Ok(match datatype {
                    DataType::Bool => convert!(bool, Bool),
                    DataType::Uint8 => convert!(u8, Uint8),
                    DataType::Uint16 => convert!(u16, Uint16),
                    DataType::Uint32 => convert!(u32, Uint32),
                    DataType::Uint64 => convert!(u64, Uint64),
                    DataType::Int8 => convert!(i8, Int8),
                    DataType::Int16 => convert!(i16, Int16),
                    DataType::Int32 => convert!(i32, Int32),
                    DataType::Int64 => convert!(i64, Int64),
                    DataType::Fp16 => convert!(half::f16, Fp16),
                    DataType::Fp32 => convert!(f32, Fp32),
                    DataType::Fp64 => convert!(f64, Fp64),
                    DataType::Bytes => convert!(String, Bytes),
                })
            }
        }
    }
}

fn convert<T: Elem>(
    scalars: Vec<Scalar>,
    what: &str,
    datatype: DataType,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(scalars.len());
    for (i, scalar) in scalars.into_iter().enumerate() {
        let found = scalar.describe();
        let value = match scalar {
            Scalar::Bool(v) => T::from_bool(v),
            Scalar::Uint(v) => T::from_u64(v),
            Scalar::Int(v) => T::from_i64(v),
            Scalar::Float(v) => T::from_f64(v),
            Scalar::Str(v) => T::from_string(v),
        };
        match value {
            Some(v) => out.push(v),
            None => return Err(format!("{what}: {}", element_error(datatype, i, &found))),
        }
    }
    Ok(out)
}

fn element_error(datatype: DataType, index: usize, found: &str) -> String {
    format!("element {index} of \"data\" is {found}, not a valid {datatype} value")
}

/// A JSON scalar kept for later conversion.
enum Scalar {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn describe(&self) -> String {
        match self {
            Scalar::Bool(v) => v.to_string(),
            Scalar::Uint(v) => v.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::Float(v) => v.to_string(),
            Scalar::Str(v) => describe_str(v),
        }
    }
}

fn describe_str(v: &str) -> String {
    let short: String = v.chars().take(40).collect();
    let ellipsis = if short.len() < v.len() { "..." } else { "" };
    format!("the string {short:?}{ellipsis}")
}

/// How one element type accepts JSON scalars. Integers accept integral numbers in range only,
/// floats any number, booleans only `true`/`false`, BYTES only strings.
trait Elem: Sized {
    const DATATYPE: Option<DataType>;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_string(v: String) -> Option<Self> {
        Self::from_str(&v)
    }
}

impl Elem for bool {
    const DATATYPE: Option<DataType> = Some(DataType::Bool);
    fn from_bool(v: bool) -> Option<bool> {
        Some(v)
    }
}

macro_rules! int_elem {
    ($t:ty, $dt:ident) => {
        impl Elem for $t {
            const DATATYPE: Option<DataType> = Some(DataType::$dt);
            fn from_u64(v: u64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn from_f64(v: f64) -> Option<$t> {
                // Integral floats (`3.0`) are what some JSON encoders write for integers.
                if v.fract() != 0.0 {
                    return None;
                }
                let wide = v as i128;
                if wide as f64 != v {
                    return None;
                }
                <$t>::try_from(wide).ok()
            }
        }
    };
}
int_elem!(u8, Uint8);
int_elem!(u16, Uint16);
int_elem!(u32, Uint32);
int_elem!(u64, Uint64);
int_elem!(i8, Int8);
int_elem!(i16, Int16);
int_elem!(i32, Int32);
int_elem!(i64, Int64);

macro_rules! float_elem {
    ($t:ty, $dt:ident, $from:expr) => {
        impl Elem for $t {
            const DATATYPE: Option<DataType> = Some(DataType::$dt);
            fn from_u64(v: u64) -> Option<$t> {
                Some($from(v as f64))
            }
            fn from_i64(v: i64) -> Option<$t> {
                Some($from(v as f64))
            }
            fn from_f64(v: f64) -> Option<$t> {
                Some($from(v))
            }
        }
    };
}
float_elem!(f32, Fp32, |v: f64| v as f32);
float_elem!(f64, Fp64, |v: f64| v);
float_elem!(half::f16, Fp16, half::f16::from_f64);

impl Elem for String {
    const DATATYPE: Option<DataType> = Some(DataType::Bytes);
    fn from_str(v: &str) -> Option<String> {
        Some(v.to_owned())
    }
    fn from_string(v: String) -> Option<String> {
        Some(v)
    }
}

impl Elem for Scalar {
    const DATATYPE: Option<DataType> = None;
    fn from_bool(v: bool) -> Option<Scalar> {
        Some(Scalar::Bool(v))
    }
    fn from_u64(v: u64) -> Option<Scalar> {
        Some(Scalar::Uint(v))
    }
    fn from_i64(v: i64) -> Option<Scalar> {
        Some(Scalar::Int(v))
    }
    fn from_f64(v: f64) -> Option<Scalar> {
        Some(Scalar::Float(v))
    }
    fn from_str(v: &str) -> Option<Scalar> {
        Some(Scalar::Str(v.to_owned()))
    }
    fn from_string(v: String) -> Option<Scalar> {
        Some(Scalar::Str(v))
    }
}

/// Parses a `data` value (flat or nested) into a typed buffer, or into scalars when the datatype
/// is not known yet.
struct DataSeed {
    datatype: Option<DataType>,
    capacity: usize,
    max_elements: usize,
}

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = ParsedData;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ParsedData, D::Error> {
        macro_rules! typed {
            ($t:ty, $variant:ident) => {{
                let (out, dims, error) = parse_elements::<$t, D>(d, &self)?;
                ParsedData {
                    values: Values::Typed(TensorData::$variant(out)),
                    dims,
                    error,
                }
            }};
        }
        Ok(match self.datatype {
            Some(DataType::Bool) => typed!(bool, Bool),
            Some(DataType::Uint8) => typed!(u8, Uint8),
            Some(DataType::Uint16) => typed!(u16, Uint16),
            Some(DataType::Uint32) => typed!(u32, Uint32),
            Some(DataType::Uint64) => typed!(u64, Uint64),
            Some(DataType::Int8) => typed!(i8, Int8),
            Some(DataType::Int16) => typed!(i16, Int16),
            Some(DataType::Int32) => typed!(i32, Int32),
            Some(DataType::Int64) => typed!(i64, Int64),
            Some(DataType::Fp16) => typed!(half::f16, Fp16),
            Some(DataType::Fp32) => typed!(f32, Fp32),
            Some(DataType::Fp64) => typed!(f64, Fp64),
            Some(DataType::Bytes) => typed!(String, Bytes),
            None => {
                let (out, dims, error) = parse_elements::<Scalar, D>(d, &self)?;
                ParsedData {
                    values: Values::Generic(out),
                    dims,
                    error,
                }
            }
        })
    }
}

type Elements<T> = (Vec<T>, Vec<usize>, Option<String>);

fn parse_elements<'de, T: Elem, D: de::Deserializer<'de>>(
    d: D,
    seed: &DataSeed,
) -> Result<Elements<T>, D::Error> {
    let mut state = NestState {
        out: Vec::with_capacity(seed.capacity.min(seed.max_elements)),
        dims: Vec::new(),
        leaf_depth: None,
        max_elements: seed.max_elements,
        error: None,
    };
    Level {
        state: &mut state,
        depth: 0,
    }
    .deserialize(d)?;
    let dims = state.observed_dims();
    Ok((state.out, dims, state.error))
}

struct NestState<T> {
    out: Vec<T>,
    /// Length of the arrays at each depth (all must agree: the data is rectangular).
    dims: Vec<Option<usize>>,
    /// Depth at which scalars sit (all must agree).
    leaf_depth: Option<usize>,
    max_elements: usize,
    /// The first problem; once set, the rest of the data is read but not kept.
    error: Option<String>,
}

impl<T> NestState<T> {
    fn fail(&mut self, message: impl FnOnce() -> String) {
        if self.error.is_none() {
            self.error = Some(message());
            self.out = Vec::new();
        }
    }

    fn ragged(&mut self) {
        self.fail(|| {
            "nested \"data\" is ragged (arrays of different lengths or mixed nesting depths)"
                .to_string()
        });
    }

    fn array_done(&mut self, depth: usize, len: usize) {
        if self.leaf_depth.is_some_and(|k| depth >= k) {
            return self.ragged();
        }
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(seen) if seen != len => self.ragged(),
            Some(_) => {}
        }
    }

    fn observed_dims(&self) -> Vec<usize> {
        let rank = self.leaf_depth.unwrap_or(self.dims.len());
        (0..rank)
            .map(|d| self.dims.get(d).copied().flatten().unwrap_or(0))
            .collect()
    }
}

/// One nesting level of `data`.
struct Level<'s, T> {
    state: &'s mut NestState<T>,
    depth: usize,
}

impl<T: Elem> Level<'_, T> {
    fn push(self, value: Option<T>, found: impl FnOnce() -> String) {
        let state = self.state;
        if state.error.is_some() {
            return;
        }
        match state.leaf_depth {
            Some(k) if k == self.depth => {}
            Some(_) => return state.ragged(),
            None => {
                if state.dims.len() > self.depth {
                    return state.ragged();
                }
                state.leaf_depth = Some(self.depth);
            }
        }
        if state.out.len() >= state.max_elements {
            let limit = state.max_elements;
            return state.fail(|| format!("\"data\" has more than the limit of {limit} elements"));
        }
        match value {
            Some(v) => state.out.push(v),
            None => {
                let index = state.out.len();
                state.fail(|| match T::DATATYPE {
                    Some(dt) => element_error(dt, index, &found()),
                    None => format!("element {index} of \"data\" is {}", found()),
                });
            }
        }
    }
}

impl<'de, T: Elem> DeserializeSeed<'de> for Level<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Elem> Visitor<'de> for Level<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data (an array of values)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        if state.leaf_depth.is_some_and(|k| depth >= k) {
            state.ragged();
        }
        let mut len = 0usize;
        while seq
            .next_element_seed(Level {
                state: &mut *state,
                depth: depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        state.array_done(depth, len);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), || v.to_string());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), || v.to_string());
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), || v.to_string());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), || v.to_string());
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), || describe_str(v));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        let found = describe_str(&v);
        self.push(T::from_string(v), || found);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(None, || "null".to_string());
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.push(None, || "an object".to_string());
        Ok(())
    }
}

struct InstancesSeed {
    datatype: DataType,
    max_elements: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InstancesField {
    Instances,
    Inputs,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for InstancesSeed {
    type Value = Option<ParsedData>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<ParsedData>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed {
    type Value = Option<ParsedData>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with \"instances\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<ParsedData>, A::Error> {
        let mut data = None;
        while let Some(field) = map.next_key::<InstancesField>()? {
            match field {
                InstancesField::Instances => {
                    data = Some(map.next_value_seed(DataSeed {
                        datatype: Some(self.datatype),
                        capacity: 0,
                        max_elements: self.max_elements,
                    })?)
                }
                InstancesField::Inputs => {
                    return Err(A::Error::custom(
                        "the columnar \"inputs\" form of v1 predict is not supported; send \"instances\"",
                    ));
                }
                InstancesField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(data)
    }
}

/// The direct scan for bodies in the usual form. Every function answers `None` where the general
/// parser must decide: anything malformed, unusual (escapes in strings, duplicate keys, numbers
/// that overflow, deep nesting) or wrong (an element of the wrong type, too many elements). What
/// it does answer is exactly what the general parser gives: same structure, same numbers (the
/// arithmetic of `serde_json`'s number parser, step for step), same element conversions.
mod fast {
    use super::{
        DataType, Elem, ParsedData, RawInput, RawOutput, RawRequest, Scalar, TensorData, Values,
        capacity_bound, check_shape,
    };

    /// Nesting beyond this is left to the general parser (which has its own limit).
    const MAX_DEPTH: usize = 32;

    pub(super) fn request(body: &[u8], max_elements: usize) -> Option<RawRequest> {
        let mut c = Cursor { b: body, i: 0 };
        let mut request = RawRequest {
            id: None,
            inputs: None,
            outputs: None,
            binary_output: None,
        };
        let mut parameters = false;
        c.object(|c, key| {
            match key {
                "id" if request.id.is_none() => request.id = Some(c.str()?.to_owned()),
                "inputs" if request.inputs.is_none() => {
                    let mut inputs = Vec::new();
                    c.array(|c| {
                        inputs.push(input(c, max_elements)?);
                        Some(())
                    })?;
                    request.inputs = Some(inputs);
                }
                "outputs" if request.outputs.is_none() => {
                    let mut outputs = Vec::new();
                    c.array(|c| {
                        let mut name = None;
                        let mut binary = None;
                        let mut parameters = false;
                        c.object(|c, key| {
                            match key {
                                "name" if name.is_none() => name = Some(c.str()?.to_owned()),
                                "parameters" if !parameters => {
                                    parameters = true;
                                    binary = c.flag_parameter("binary_data")?;
                                }
                                "name" | "parameters" => return None,
                                _ => c.skip(3)?,
                            }
                            Some(())
                        })?;
                        outputs.push(RawOutput {
                            name: name?,
                            binary: binary.map(Ok),
                        });
                        Some(())
                    })?;
                    request.outputs = Some(outputs);
                }
                "parameters" if !parameters => {
                    parameters = true;
                    request.binary_output = c.flag_parameter("binary_data_output")?.map(Ok);
                }
                "id" | "inputs" | "outputs" | "parameters" => return None,
                _ => c.skip(1)?,
            }
            Some(())
        })?;
        c.end()?;
        Some(request)
    }

    fn input(c: &mut Cursor, max_elements: usize) -> Option<RawInput> {
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<usize>> = None;
        let mut datatype: Option<DataType> = None;
        let mut data: Option<ParsedData> = None;
        // Data sent before its datatype: where it is, read once the datatype is known.
        let mut deferred: Option<(usize, usize)> = None;
        let mut parameters = false;
        let mut binary: Option<u64> = None;
        c.object(|c, key| {
            match key {
                "name" if name.is_none() => name = Some(c.str()?.to_owned()),
                "shape" if shape.is_none() => {
                    let mut dims = Vec::new();
                    c.array(|c| {
                        // Negative dimensions are errors: the general parser words them.
                        match c.number()? {
                            Num::U64(d) => dims.push(i64::try_from(d).ok()?),
                            Num::I64(_) | Num::F64(_) => return None,
                        }
                        Some(())
                    })?;
                    shape = Some(check_shape(&dims, max_elements).ok()?);
                }
                "datatype" if datatype.is_none() => {
                    datatype = Some(DataType::from_name(c.str()?)?);
                }
                "data" if data.is_none() && deferred.is_none() => {
                    if datatype.is_some() {
                        let capacity = shape
                            .as_ref()
                            .map_or(0, |dims| dims.iter().product::<usize>());
                        data = Some(c.data(datatype, capacity, max_elements)?);
                    } else {
                        c.ws();
                        let start = c.i;
                        c.skip_array()?;
                        deferred = Some((start, c.i));
                    }
                }
                "parameters" if !parameters => {
                    parameters = true;
                    c.parameters(|c, key| match key {
                        "binary_data_size" if binary.is_none() => match c.number()? {
                            Num::U64(size) => {
                                binary = Some(size);
                                Some(())
                            }
                            Num::I64(_) | Num::F64(_) => None,
                        },
                        "binary_data_size" => None,
                        _ => c.skip(4),
                    })?;
                }
                "name" | "shape" | "datatype" | "data" | "parameters" => return None,
                _ => c.skip(3)?,
            }
            Some(())
        })?;
        if let Some((start, end)) = deferred {
            // Typed straight away: the general parser keeps JSON scalars and converts them
            // with the same functions, to the same values.
            let capacity = shape
                .as_ref()
                .map_or(0, |dims| dims.iter().product::<usize>());
            let mut at = Cursor { b: c.b, i: start };
            data = Some(at.data(datatype, capacity, max_elements)?);
            if at.i != end {
                return None;
            }
        }
        Some(RawInput {
            name,
            shape: shape.map(Ok),
            datatype: datatype.map(Ok),
            data,
            binary: binary.map(Ok),
        })
    }

    pub(super) fn instances(
        body: &[u8],
        datatype: DataType,
        max_elements: usize,
    ) -> Option<Option<ParsedData>> {
        let mut c = Cursor { b: body, i: 0 };
        let mut data = None;
        c.object(|c, key| {
            match key {
                "instances" if data.is_none() => {
                    data = Some(c.data(Some(datatype), 0, max_elements)?);
                }
                "instances" | "inputs" => return None,
                _ => c.skip(1)?,
            }
            Some(())
        })?;
        c.end()?;
        Some(data)
    }

    /// A JSON number as `serde_json` reads it (its `ParserNumber`, without `arbitrary_precision`).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) enum Num {
        U64(u64),
        I64(i64),
        F64(f64),
    }

    struct Cursor<'a> {
        b: &'a [u8],
        i: usize,
    }

    /// The rectangular nesting of `data`, tracked as the general parser's `NestState` does.
    struct Grid<T> {
        out: Vec<T>,
        dims: Vec<Option<usize>>,
        leaf_depth: Option<usize>,
        max_elements: usize,
    }

    impl<'a> Cursor<'a> {
        #[inline]
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        #[inline]
        fn ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
                self.i += 1;
            }
        }

        /// Skips whitespace and takes `byte` if it comes next.
        #[inline]
        fn eat(&mut self, byte: u8) -> bool {
            self.ws();
            if self.peek() == Some(byte) {
                self.i += 1;
                true
            } else {
                false
            }
        }

        fn end(&mut self) -> Option<()> {
            self.ws();
            (self.i == self.b.len()).then_some(())
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            let end = self.i.checked_add(word.len())?;
            (self.b.get(self.i..end)? == word).then(|| self.i = end)
        }

        /// A string without escapes or control characters, valid UTF-8.
        fn str(&mut self) -> Option<&'a str> {
            if !self.eat(b'"') {
                return None;
            }
            let rest = self.b.get(self.i..)?;
            let len = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            if rest[len] != b'"' {
                return None;
            }
            self.i += len + 1;
            std::str::from_utf8(&rest[..len]).ok()
        }

        /// `{ "key": value, ... }`, `value` read by `f` (which sees the cursor just after the
        /// colon).
        fn object(&mut self, mut f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
            if !self.eat(b'{') {
                return None;
            }
            if self.eat(b'}') {
                return Some(());
            }
            loop {
                let key = self.str()?;
                if !self.eat(b':') {
                    return None;
                }
                f(self, key)?;
                if self.eat(b',') {
                    continue;
                }
                return self.eat(b'}').then_some(());
            }
        }

        /// `[ value, ... ]`, each value read by `f`.
        fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
            if !self.eat(b'[') {
                return None;
            }
            if self.eat(b']') {
                return Some(());
            }
            loop {
                f(self)?;
                if self.eat(b',') {
                    continue;
                }
                return self.eat(b']').then_some(());
            }
        }

        /// Passes over an array without reading its elements (they are read later, from its
        /// start): only brackets and strings count.
        fn skip_array(&mut self) -> Option<()> {
            let b = self.b;
            let mut i = self.i;
            let mut depth = 0usize;
            if b.get(i) != Some(&b'[') {
                return None;
            }
            loop {
                match *b.get(i)? {
                    b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                    }
                    b']' => {
                        depth -= 1;
                        if depth == 0 {
                            self.i = i + 1;
                            return Some(());
                        }
                    }
                    b'"' => {
                        i += 1;
                        i += b.get(i..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
                        if b[i] != b'"' {
                            return None;
                        }
                    }
                    b'{' => return None,
                    _ => {}
                }
                i += 1;
            }
        }

        /// A `parameters` value: null, or an object whose entries `f` reads. Anything else is
        /// the general parser's.
        fn parameters(&mut self, f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
            self.ws();
            if self.peek()? == b'n' {
                self.literal(b"null")
            } else {
                self.object(f)
            }
        }

        /// `parameters` with one boolean of interest: `true`, `false` or null (absent).
        fn flag_parameter(&mut self, wanted: &str) -> Option<Option<bool>> {
            let mut value = None;
            let mut seen = false;
            self.parameters(|c, key| {
                if key != wanted {
                    return c.skip(4);
                }
                if seen {
                    return None;
                }
                seen = true;
                c.ws();
                value = match c.peek()? {
                    b't' => Some(true),
                    b'f' => Some(false),
                    b'n' => None,
                    _ => return None,
                };
                c.literal(match value {
                    Some(true) => b"true",
                    Some(false) => b"false",
                    None => b"null",
                })
            })?;
            Some(value)
        }

        /// Any JSON value, checked and dropped.
        fn skip(&mut self, depth: usize) -> Option<()> {
            if depth > MAX_DEPTH {
                return None;
            }
            self.ws();
            match self.peek()? {
                b'{' => self.object(|c, _| c.skip(depth + 1)),
                b'[' => self.array(|c| c.skip(depth + 1)),
                b'"' => self.str().map(drop),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                b'n' => self.literal(b"null"),
                _ => self.number().map(drop),
            }
        }

        /// A number, after optional whitespace, computed as `serde_json` computes it, branch for
        /// branch: the significand as a `u64` (digits past its range only scale it), then one
        /// multiplication or division by a table power of ten (`f64_from_parts`).
        #[inline]
        fn number(&mut self) -> Option<Num> {
            self.ws();
            self.number_here()
        }

        #[inline]
        fn number_here(&mut self) -> Option<Num> {
            let b = self.b;
            let mut i = self.i;
            let positive = b.get(i) != Some(&b'-');
            if !positive {
                i += 1;
            }
            let first = *b.get(i)?;
            if !first.is_ascii_digit() {
                return None;
            }
            i += 1;
            let mut significand = u64::from(first - b'0');
            let mut exponent: i32 = 0;
            let mut float = false;
            if first == b'0' {
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            } else {
                while let Some(&c @ b'0'..=b'9') = b.get(i) {
                    match next_digit(significand, c) {
                        Some(s) => significand = s,
                        None => {
                            // `parse_long_integer`: a float; the remaining digits only scale.
                            float = true;
                            while let Some(b'0'..=b'9') = b.get(i) {
                                exponent = exponent.checked_add(1)?;
                                i += 1;
                            }
                            break;
                        }
                    }
                    i += 1;
                }
            }
            if b.get(i) == Some(&b'.') {
                float = true;
                i += 1;
                let start = i;
                while let Some(&c @ b'0'..=b'9') = b.get(i) {
                    match next_digit(significand, c) {
                        Some(s) => {
                            significand = s;
                            exponent = exponent.checked_sub(1)?;
                            i += 1;
                        }
                        None => {
                            // `parse_decimal_overflow`: the remaining digits are dropped.
                            while let Some(b'0'..=b'9') = b.get(i) {
                                i += 1;
                            }
                            break;
                        }
                    }
                }
                if i == start {
                    return None;
                }
            }
            if let Some(b'e' | b'E') = b.get(i) {
                float = true;
                i += 1;
                let positive_exp = match b.get(i) {
                    Some(b'+') => {
                        i += 1;
                        true
                    }
                    Some(b'-') => {
                        i += 1;
                        false
                    }
                    _ => true,
                };
                let mut exp: i32 = match b.get(i) {
                    Some(&c @ b'0'..=b'9') => i32::from(c - b'0'),
                    _ => return None,
                };
                i += 1;
                while let Some(&c @ b'0'..=b'9') = b.get(i) {
                    i += 1;
                    match exp
                        .checked_mul(10)
                        .and_then(|e| e.checked_add(i32::from(c - b'0')))
                    {
                        Some(e) => exp = e,
                        None => {
                            // `parse_exponent_overflow`: out of range, or zero.
                            if significand != 0 && positive_exp {
                                return None;
                            }
                            while let Some(b'0'..=b'9') = b.get(i) {
                                i += 1;
                            }
                            self.i = i;
                            return Some(Num::F64(if positive { 0.0 } else { -0.0 }));
                        }
                    }
                }
                exponent = if positive_exp {
                    exponent.saturating_add(exp)
                } else {
                    exponent.saturating_sub(exp)
                };
            }
            self.i = i;
            if !float {
                return Some(if positive {
                    Num::U64(significand)
                } else {
                    // As serde_json: `-0` and values below i64::MIN become floats.
                    let negative = (significand as i64).wrapping_neg();
                    if negative >= 0 {
                        Num::F64(-(significand as f64))
                    } else {
                        Num::I64(negative)
                    }
                });
            }
            let f = f64_from_parts(significand, exponent)?;
            Some(Num::F64(if positive { f } else { -f }))
        }

        /// One element of `data`, converted as the general parser's `Level` converts it.
        #[inline]
        fn scalar<T: Elem>(&mut self, first: u8) -> Option<T> {
            match first {
                b'-' | b'0'..=b'9' => match self.number_here()? {
                    Num::U64(v) => T::from_u64(v),
                    Num::I64(v) => T::from_i64(v),
                    Num::F64(v) => T::from_f64(v),
                },
                b't' => {
                    self.literal(b"true")?;
                    T::from_bool(true)
                }
                b'f' => {
                    self.literal(b"false")?;
                    T::from_bool(false)
                }
                b'"' => T::from_str(self.str()?),
                _ => None,
            }
        }

        /// A `data` (or `instances`) value: typed when the datatype is known, else JSON scalars.
        fn data(
            &mut self,
            datatype: Option<DataType>,
            capacity: usize,
            max_elements: usize,
        ) -> Option<ParsedData> {
            // Never more than the rest of the body could hold, whatever the shape says.
            let capacity = capacity
                .min(max_elements)
                .min(capacity_bound(self.b.len().saturating_sub(self.i)));
            macro_rules! typed {
                ($t:ty, $variant:ident) => {{
                    let (out, dims) = self.elements::<$t>(capacity, max_elements)?;
                    (Values::Typed(TensorData::$variant(out)), dims)
                }};
            }
            let (values, dims) = match datatype {
                Some(DataType::Bool) => typed!(bool, Bool),
                Some(DataType::Uint8) => typed!(u8, Uint8),
                Some(DataType::Uint16) => typed!(u16, Uint16),
                Some(DataType::Uint32) => typed!(u32, Uint32),
                Some(DataType::Uint64) => typed!(u64, Uint64),
                Some(DataType::Int8) => typed!(i8, Int8),
                Some(DataType::Int16) => typed!(i16, Int16),
                Some(DataType::Int32) => typed!(i32, Int32),
                Some(DataType::Int64) => typed!(i64, Int64),
                Some(DataType::Fp16) => typed!(half::f16, Fp16),
                Some(DataType::Fp32) => typed!(f32, Fp32),
                Some(DataType::Fp64) => typed!(f64, Fp64),
                Some(DataType::Bytes) => typed!(String, Bytes),
                None => {
                    let (out, dims) = self.elements::<Scalar>(capacity, max_elements)?;
                    (Values::Generic(out), dims)
                }
            };
            Some(ParsedData {
                values,
                dims,
                error: None,
            })
        }

        fn elements<T: Elem>(
            &mut self,
            capacity: usize,
            max_elements: usize,
        ) -> Option<(Vec<T>, Vec<usize>)> {
            self.ws();
            if self.peek()? != b'[' {
                // A bare scalar: the general parser says what is wrong with it.
                return None;
            }
            let mut grid = Grid {
                out: Vec::with_capacity(capacity),
                dims: Vec::new(),
                leaf_depth: None,
                max_elements,
            };
            self.level(&mut grid, 0)?;
            let rank = grid.leaf_depth.unwrap_or(grid.dims.len());
            let dims = (0..rank)
                .map(|d| grid.dims.get(d).copied().flatten().unwrap_or(0))
                .collect();
            Some((grid.out, dims))
        }

        /// The array at `depth` (the cursor is on its `[`), into `grid`; `None` where the general
        /// parser would find the nesting ragged or an element wrong.
        fn level<T: Elem>(&mut self, grid: &mut Grid<T>, depth: usize) -> Option<()> {
            if depth >= MAX_DEPTH || grid.leaf_depth.is_some_and(|k| depth >= k) {
                return None;
            }
            self.i += 1;
            self.ws();
            let mut len = 0usize;
            if self.peek()? == b']' {
                self.i += 1;
            } else {
                let inner = depth + 1;
                loop {
                    let first = self.peek()?;
                    if first == b'[' {
                        self.level(grid, inner)?;
                    } else {
                        if grid.leaf_depth != Some(inner) {
                            if grid.leaf_depth.is_some() || grid.dims.len() > inner {
                                return None;
                            }
                            grid.leaf_depth = Some(inner);
                        }
                        if grid.out.len() >= grid.max_elements {
                            return None;
                        }
                        let value = self.scalar::<T>(first)?;
                        grid.out.push(value);
                    }
                    len += 1;
                    // `1,2,3` and `1, 2, 3` without a call to skip whitespace.
                    let mut next = self.peek()?;
                    if next != b',' && next != b']' {
                        self.ws();
                        next = self.peek()?;
                    }
                    self.i += 1;
                    match next {
                        b',' => {
                            if self.peek()? <= b' ' {
                                self.ws();
                            }
                        }
                        b']' => break,
                        _ => return None,
                    }
                }
            }
            // As `NestState::array_done`.
            if grid.leaf_depth.is_some_and(|k| depth >= k) {
                return None;
            }
            if grid.dims.len() <= depth {
                grid.dims.resize(depth + 1, None);
            }
            match grid.dims[depth] {
                None => grid.dims[depth] = Some(len),
                Some(seen) if seen != len => return None,
                Some(_) => {}
            }
            Some(())
        }
    }

    /// `significand * 10 + digit`, `None` past `u64::MAX`.
    #[inline]
    fn next_digit(significand: u64, digit: u8) -> Option<u64> {
        significand
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))
    }

    /// `serde_json`'s `f64_from_parts` without `float_roundtrip`: `None` where it reports the
    /// number out of range.
    pub(super) fn f64_from_parts(significand: u64, mut exponent: i32) -> Option<f64> {
        let mut f = significand as f64;
        loop {
            match POW10.get(exponent.wrapping_abs() as usize) {
                Some(&pow) => {
                    if exponent >= 0 {
                        f *= pow;
                        if f.is_infinite() {
                            return None;
                        }
                    } else {
                        f /= pow;
                    }
                    return Some(f);
                }
                None => {
                    if f == 0.0 {
                        return Some(f);
                    }
                    if exponent >= 0 {
                        return None;
                    }
                    f /= 1e308;
                    exponent += 308;
                }
            }
        }
    }

    /// A JSON number read alone (tests compare it with `serde_json`).
    #[cfg(test)]
    pub(super) fn number(text: &str) -> Option<Num> {
        let mut c = Cursor {
            b: text.as_bytes(),
            i: 0,
        };
        let n = c.number()?;
        c.end()?;
        Some(n)
    }

    /// Powers of ten as `serde_json` has them (each literal correctly rounded).
    #[rustfmt::skip]
    pub(super) static POW10: [f64; 309] = [
    1e000, 1e001, 1e002, 1e003, 1e004, 1e005, 1e006, 1e007, 1e008, 1e009,
    1e010, 1e011, 1e012, 1e013, 1e014, 1e015, 1e016, 1e017, 1e018, 1e019,
    1e020, 1e021, 1e022, 1e023, 1e024, 1e025, 1e026, 1e027, 1e028, 1e029,
    1e030, 1e031, 1e032, 1e033, 1e034, 1e035, 1e036, 1e037, 1e038, 1e039,
    1e040, 1e041, 1e042, 1e043, 1e044, 1e045, 1e046, 1e047, 1e048, 1e049,
    1e050, 1e051, 1e052, 1e053, 1e054, 1e055, 1e056, 1e057, 1e058, 1e059,
    1e060, 1e061, 1e062, 1e063, 1e064, 1e065, 1e066, 1e067, 1e068, 1e069,
    1e070, 1e071, 1e072, 1e073, 1e074, 1e075, 1e076, 1e077, 1e078, 1e079,
    1e080, 1e081, 1e082, 1e083, 1e084, 1e085, 1e086, 1e087, 1e088, 1e089,
    1e090, 1e091, 1e092, 1e093, 1e094, 1e095, 1e096, 1e097, 1e098, 1e099,
    1e100, 1e101, 1e102, 1e103, 1e104, 1e105, 1e106, 1e107, 1e108, 1e109,
    1e110, 1e111, 1e112, 1e113, 1e114, 1e115, 1e116, 1e117, 1e118, 1e119,
    1e120, 1e121, 1e122, 1e123, 1e124, 1e125, 1e126, 1e127, 1e128, 1e129,
    1e130, 1e131, 1e132, 1e133, 1e134, 1e135, 1e136, 1e137, 1e138, 1e139,
    1e140, 1e141, 1e142, 1e143, 1e144, 1e145, 1e146, 1e147, 1e148, 1e149,
    1e150, 1e151, 1e152, 1e153, 1e154, 1e155, 1e156, 1e157, 1e158, 1e159,
    1e160, 1e161, 1e162, 1e163, 1e164, 1e165, 1e166, 1e167, 1e168, 1e169,
    1e170, 1e171, 1e172, 1e173, 1e174, 1e175, 1e176, 1e177, 1e178, 1e179,
    1e180, 1e181, 1e182, 1e183, 1e184, 1e185, 1e186, 1e187, 1e188, 1e189,
    1e190, 1e191, 1e192, 1e193, 1e194, 1e195, 1e196, 1e197, 1e198, 1e199,
    1e200, 1e201, 1e202, 1e203, 1e204, 1e205, 1e206, 1e207, 1e208, 1e209,
    1e210, 1e211, 1e212, 1e213, 1e214, 1e215, 1e216, 1e217, 1e218, 1e219,
    1e220, 1e221, 1e222, 1e223, 1e224, 1e225, 1e226, 1e227, 1e228, 1e229,
    1e230, 1e231, 1e232, 1e233, 1e234, 1e235, 1e236, 1e237, 1e238, 1e239,
    1e240, 1e241, 1e242, 1e243, 1e244, 1e245, 1e246, 1e247, 1e248, 1e249,
    1e250, 1e251, 1e252, 1e253, 1e254, 1e255, 1e256, 1e257, 1e258, 1e259,
    1e260, 1e261, 1e262, 1e263, 1e264, 1e265, 1e266, 1e267, 1e268, 1e269,
    1e270, 1e271, 1e272, 1e273, 1e274, 1e275, 1e276, 1e277, 1e278, 1e279,
    1e280, 1e281, 1e282, 1e283, 1e284, 1e285, 1e286, 1e287, 1e288, 1e289,
    1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299,
    1e300, 1e301, 1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    /// Parses `body` both ways and checks that they agree, bit for bit.
    fn parse(body: &str) -> Result<InferRequest, String> {
        parse_limited(body.as_bytes(), LIMIT)
    }

    fn parse_limited(body: &[u8], limit: usize) -> Result<InferRequest, String> {
        let got = parse_infer(body, None, limit);
        let general = parse_infer_general(body, None, limit);
        assert_eq!(
            format!("{got:?}"),
            format!("{general:?}"),
            "the scan and the general parser disagree on {}",
            String::from_utf8_lossy(body)
        );
        got
    }

    /// A body of JSON and binary data, parsed both ways.
    fn parse_binary(json: &str, binary: &[u8]) -> Result<InferRequest, String> {
        let body = [json.as_bytes(), binary].concat();
        let got = parse_infer(&body, Some(json.len()), LIMIT);
        let general = parse_infer_general(&body, Some(json.len()), LIMIT);
        assert_eq!(format!("{got:?}"), format!("{general:?}"), "{json}");
        got
    }

    fn le_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn instances(
        body: &[u8],
        datatype: DataType,
        limit: usize,
    ) -> Result<(Vec<usize>, TensorData), String> {
        let got = parse_instances(body, datatype, limit);
        let general = parse_instances_general(body, datatype, limit);
        assert_eq!(
            format!("{got:?}"),
            format!("{general:?}"),
            "{}",
            String::from_utf8_lossy(body)
        );
        got
    }

    #[test]
    fn flat_request_parses_into_typed_buffers() {
        let req = parse(
            r#"{"id":"r1","parameters":{"x":1},"inputs":[{"name":"X","shape":[2,2],"datatype":"FP32","data":[1,2.5,-3,4e1]},
                {"name":"B","shape":[3],"datatype":"BOOL","data":[true,false,true]}],
                "outputs":[{"name":"Y","parameters":{}}]}"#,
        )
        .unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.outputs, Some(vec!["Y".to_string()]));
        assert_eq!(req.inputs.len(), 2);
        assert_eq!(req.inputs[0].name, "X");
        assert_eq!(req.inputs[0].shape, vec![2, 2]);
        assert_eq!(
            req.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.5, -3.0, 40.0])
        );
        assert_eq!(
            req.inputs[1].data,
            TensorData::Bool(vec![true, false, true])
        );
    }

    #[test]
    fn nested_data_must_match_the_shape() {
        let ok = parse(
            r#"{"inputs":[{"name":"X","shape":[2,3],"datatype":"INT64","data":[[1,2,3],[4,5,6]]}]}"#,
        )
        .unwrap();
        assert_eq!(ok.inputs[0].data, TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));

        let transposed = parse(
            r#"{"inputs":[{"name":"X","shape":[2,3],"datatype":"INT64","data":[[1,2],[3,4],[5,6]]}]}"#,
        )
        .unwrap_err();
        assert!(transposed.contains("input 'X'"), "{transposed}");
        assert!(transposed.contains("[3, 2]"), "{transposed}");

        let ragged = parse(
            r#"{"inputs":[{"name":"X","shape":[2,2],"datatype":"INT64","data":[[1,2],[3]]}]}"#,
        )
        .unwrap_err();
        assert!(ragged.contains("ragged"), "{ragged}");

        let mixed =
            parse(r#"{"inputs":[{"name":"X","shape":[2,2],"datatype":"INT64","data":[1,[2,3]]}]}"#)
                .unwrap_err();
        assert!(mixed.contains("ragged"), "{mixed}");
    }

    #[test]
    fn data_length_must_equal_shape_product() {
        let err = parse(
            r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("input 'features'"), "{err}");
        assert!(err.contains("3 elements"), "{err}");
        assert!(err.contains("needs 4"), "{err}");
    }

    #[test]
    fn huge_shape_is_refused_before_data() {
        let err = parse(
            r#"{"inputs":[{"name":"features","shape":[1000000000,78],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("78000000000 elements"), "{err}");
        assert!(err.contains("input 'features'"), "{err}");
        let negative =
            parse(r#"{"inputs":[{"name":"X","shape":[-1,3],"datatype":"FP32","data":[]}]}"#)
                .unwrap_err();
        assert!(negative.contains("negative"), "{negative}");
    }

    #[test]
    fn too_much_data_is_refused_while_parsing() {
        let data: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let body = format!(
            r#"{{"inputs":[{{"data":[{}],"name":"X","shape":[20],"datatype":"INT32"}}]}}"#,
            data.join(",")
        );
        let err = parse_limited(body.as_bytes(), 10).unwrap_err();
        assert!(err.contains("more than the limit of 10"), "{err}");
    }

    #[test]
    fn data_before_datatype_is_converted_afterwards() {
        let req =
            parse(r#"{"inputs":[{"data":[[1,2]],"shape":[1,2],"name":"X","datatype":"UINT8"}]}"#)
                .unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Uint8(vec![1, 2]));
        let err =
            parse(r#"{"inputs":[{"data":[1,300],"shape":[2],"name":"X","datatype":"UINT8"}]}"#)
                .unwrap_err();
        assert!(err.contains("element 1"), "{err}");
        assert!(err.contains("300"), "{err}");
        assert!(err.contains("UINT8"), "{err}");
    }

    #[test]
    fn element_types_are_checked() {
        for (datatype, data, bad) in [
            ("INT64", "[1, 1.5]", "1.5"),
            ("INT8", "[1, 128]", "128"),
            ("UINT32", "[1, -1]", "-1"),
            ("BOOL", "[true, 1]", "1"),
            ("FP32", r#"[1, "x"]"#, "\"x\""),
            ("BYTES", r#"["a", 1]"#, "1"),
            ("FP64", "[1, null]", "null"),
        ] {
            let body = format!(
                r#"{{"inputs":[{{"name":"X","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#
            );
            let err = parse(&body).unwrap_err();
            assert!(err.contains("element 1"), "{datatype}: {err}");
            assert!(err.contains(bad), "{datatype}: {err}");
            assert!(err.contains("input 'X'"), "{datatype}: {err}");
        }
        let ints = parse(r#"{"inputs":[{"name":"X","shape":[2],"datatype":"INT64","data":[3.0,-9007199254740993]}]}"#).unwrap();
        assert_eq!(
            ints.inputs[0].data,
            TensorData::Int64(vec![3, -9007199254740993])
        );
        let words = parse(
            r#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["hé","a\nb"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            words.inputs[0].data,
            TensorData::Bytes(vec!["hé".into(), "a\nb".into()])
        );
    }

    #[test]
    fn missing_fields_and_bad_json_are_named() {
        let err = parse(r#"{"inputs":[{"name":"X","datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(err.contains("input 'X': missing \"shape\""), "{err}");
        let err = parse(r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(err.contains("input #0: missing \"name\""), "{err}");
        let err = parse(r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FLOAT","data":[1]}]}"#)
            .unwrap_err();
        assert!(err.contains("unknown datatype \"FLOAT\""), "{err}");
        let err = parse(r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#)
            .unwrap_err();
        assert!(err.contains("binary"), "{err}");
        let err = parse(r#"{"inputs": [{"name": "X""#).unwrap_err();
        assert!(err.starts_with("malformed JSON"), "{err}");
        let err = parse(r#"{"inputs": []} trailing"#).unwrap_err();
        assert!(err.starts_with("malformed JSON"), "{err}");
        let err = parse(r#"{"id": 5, "inputs": []}"#).unwrap_err();
        assert!(err.contains("\"id\" must be a string"), "{err}");
        let err = parse(r#"{"model": "x"}"#).unwrap_err();
        assert!(err.contains("no \"inputs\""), "{err}");
    }

    #[test]
    fn instances_become_rows() {
        let (dims, data) = instances(
            br#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#,
            DataType::Fp32,
            LIMIT,
        )
        .unwrap();
        assert_eq!(dims, vec![3, 2]);
        assert_eq!(data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let (dims, _) = instances(br#"{"instances": [1, 2]}"#, DataType::Int64, LIMIT).unwrap();
        assert_eq!(dims, vec![2]);
        let err = instances(br#"{"instances": [[1], [2, 3]]}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("ragged"), "{err}");
        let err = instances(br#"{"rows": []}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("no \"instances\""), "{err}");
        let err = instances(br#"{"instances": 5}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("must be an array"), "{err}");
    }

    #[test]
    fn binary_inputs_take_their_bytes_in_order() {
        let json = r#"{"inputs":[{"name":"A","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},
            {"name":"J","shape":[2],"datatype":"INT64","data":[5,-6]},
            {"name":"S","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}},
            {"name":"B","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}},
            {"name":"H","shape":[1],"datatype":"FP16","parameters":{"binary_data_size":2}},
            {"name":"I","shape":[1],"datatype":"INT16","parameters":{"binary_data_size":2}}],
            "parameters":{"binary_data_output":true},
            "outputs":[{"name":"Y","parameters":{"binary_data":false}},{"name":"Z"}]}"#;
        let mut binary = le_f32(&[1.5, -0.0, 3.4028235e38, 1e-45]);
        binary.extend(2u32.to_le_bytes());
        binary.extend(b"hi");
        binary.extend(3u32.to_le_bytes());
        binary.extend("h\u{e9}".as_bytes());
        binary.extend([1, 0, 1]);
        binary.extend(half::f16::from_f32(0.5).to_bits().to_le_bytes());
        binary.extend((-2i16).to_le_bytes());
        let request = parse_binary(json, &binary).unwrap();
        let data: Vec<&TensorData> = request.inputs.iter().map(|t| &t.data).collect();
        assert_eq!(
            data,
            [
                &TensorData::Fp32(vec![1.5, -0.0, 3.4028235e38, 1e-45]),
                &TensorData::Int64(vec![5, -6]),
                &TensorData::Bytes(vec!["hi".into(), "h\u{e9}".into()]),
                &TensorData::Bool(vec![true, false, true]),
                &TensorData::Fp16(vec![half::f16::from_f32(0.5)]),
                &TensorData::Int16(vec![-2]),
            ]
        );
        assert_eq!(request.inputs[0].shape, vec![2, 2]);
        assert!(request.binary_output);
        assert_eq!(request.outputs, Some(vec!["Y".into(), "Z".into()]));
        assert_eq!(request.output_binary, vec![Some(false), None]);
        // The same JSON with nothing after it, as a plain JSON request, has no binary flags.
        let plain =
            parse(r#"{"inputs":[{"name":"J","shape":[1],"datatype":"INT8","data":[1]}]}"#).unwrap();
        assert!(!plain.binary_output && plain.output_binary.is_empty());
    }

    #[test]
    fn binary_sizes_are_checked_exactly() {
        let input = |size: &str, shape: &str, datatype: &str| {
            format!(
                r#"{{"inputs":[{{"name":"X","shape":{shape},"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}]}}"#
            )
        };
        let four = le_f32(&[1.0, 2.0, 3.0, 4.0]);
        for (json, binary, needles) in [
            (
                input("12", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "binary_data_size\" is 12", "takes 16"],
            ),
            (
                input("16", "[4]", "FP32"),
                &four[..12],
                vec!["input 'X'", "only 12 bytes"],
            ),
            (
                input("8", "[2]", "FP32"),
                &four[..],
                vec!["16 bytes", "add up to 8"],
            ),
            (
                input("-1", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "number of bytes, not -1"],
            ),
            (
                input("\"16\"", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "not \"16\""],
            ),
            (
                input("3", "[3]", "BOOL"),
                &[1, 2, 0][..],
                vec!["input 'X'", "element 1", "BOOL"],
            ),
            (
                input("6", "[2]", "BYTES"),
                &[1, 0, 0, 0, b'a', 9][..],
                vec!["input 'X'", "element 1"],
            ),
            (
                input("7", "[1]", "BYTES"),
                &[1, 0, 0, 0, b'a', 9, 9][..],
                vec!["input 'X'", "2 bytes after"],
            ),
            (
                input("6", "[1]", "BYTES"),
                &[2, 0, 0, 0, 0xff, 0xfe][..],
                vec!["input 'X'", "UTF-8"],
            ),
            (
                input("8", "[1]", "BYTES"),
                &[9, 0, 0, 0, 1, 2, 3, 4][..],
                vec!["input 'X'", "says 9 bytes"],
            ),
        ] {
            let err = parse_binary(&json, binary).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{json}: {err:?} lacks {needle:?}");
            }
        }
        let json = input("16", "[4]", "FP32");
        let err = parse_infer(json.as_bytes(), Some(json.len() + 1), LIMIT).unwrap_err();
        assert!(err.contains("Inference-Header-Content-Length is"), "{err}");
        let err = parse(&json).unwrap_err();
        assert!(err.contains("Inference-Header-Content-Length"), "{err}");
        let both = r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        let err = parse_binary(both, &le_f32(&[1.0])).unwrap_err();
        assert!(err.contains("both"), "{err}");
        // A header length that covers the whole body: a JSON request.
        let json = r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        parse_binary(json, &[]).unwrap();
        let err = parse_binary(json, &[0]).unwrap_err();
        assert!(err.contains("add up to 0"), "{err}");
        for (json, needle) in [
            (
                r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#,
                "binary_data_output\" must be true or false, not 1",
            ),
            (
                r#"{"inputs":[],"outputs":[{"name":"Y","parameters":{"binary_data":"yes"}}]}"#,
                "output 'Y'",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        // Parameters that are not objects are ignored, as they always were.
        let odd =
            parse(r#"{"inputs":[],"parameters":[1],"outputs":[{"name":"Y","parameters":5}]}"#)
                .unwrap();
        assert!(!odd.binary_output);
        assert_eq!(odd.output_binary, vec![None]);
    }

    /// SplitMix64: reproducible test data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// How `serde_json` hands a number to a `deserialize_any` visitor.
    struct Captured(fast::Num);

    impl<'de> Deserialize<'de> for Captured {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Captured, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Captured;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a number")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Captured, E> {
                    Ok(Captured(fast::Num::U64(v)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Captured, E> {
                    Ok(Captured(fast::Num::I64(v)))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Captured, E> {
                    Ok(Captured(fast::Num::F64(v)))
                }
            }
            d.deserialize_any(V)
        }
    }

    fn same_number(a: fast::Num, b: fast::Num) -> bool {
        match (a, b) {
            (fast::Num::F64(a), fast::Num::F64(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }

    const EDGE_NUMBERS: &[&str] = &[
        "0",
        "-0",
        "0.0",
        "-0.0",
        "0e0",
        "-0E-0",
        "1",
        "-1",
        "1.5",
        "1E+2",
        "1e-2",
        "2.5e+10",
        "17.99",
        "0.1",
        "0.30000000000000004",
        "1e-45",
        "1.4e-45",
        "1.401298464324817e-45",
        "7e-46",
        "3.4028235e38",
        "3.4028234663852886e38",
        "3.4028236e38",
        "1e39",
        "-3.4028235e38",
        "1.1754944e-38",
        "16777216",
        "16777217",
        "16777219",
        "9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "4.9e-324",
        "5e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e308",
        "1e309",
        "1e-400",
        "-1e-400",
        "1e-330",
        "0e400",
        "1.00000005960464477539062501",
        "1.000000059604644775390625",
        "0.000000000000000000000000000000000000000000001",
        "12345678901234567890.5",
        "1.2345678901234567890e5",
        "99999999999999999999e-5",
        "1e2147483647",
        "1e2147483648",
        "1e-2147483648",
        "0e99999999999",
        // Not numbers: both must refuse them.
        "00",
        "01",
        "-",
        "+1",
        ".5",
        "1.",
        "1.e5",
        "1e",
        "1e+",
        "--1",
        "0x10",
        "1_000",
    ];

    /// Number texts as clients write them, and some no client would.
    fn number_texts(rng: &mut Rng, count: usize) -> Vec<String> {
        let mut texts: Vec<String> = EDGE_NUMBERS.iter().map(|s| s.to_string()).collect();
        while texts.len() < count {
            let f32_value = f32::from_bits(rng.next() as u32);
            let f64_value = f64::from_bits(rng.next());
            let text = match rng.below(10) {
                _ if !f32_value.is_finite() || !f64_value.is_finite() => continue,
                0 => format!("{f32_value}"),
                1 => format!("{f32_value:e}"),
                2 => format!("{f32_value:?}"),
                // numpy float32 -> Python float -> json.dumps: the f32 value, 17 digits.
                3 => format!("{:?}", f64::from(f32_value)),
                4 => format!("{f64_value:e}"),
                5 => format!("{f64_value:.16e}"),
                6 => format!("{}", rng.next() as i64 >> rng.below(64)),
                7 => format!(
                    "{:.*}",
                    rng.below(8) as usize,
                    (rng.below(2_000_000) as f64 - 1e6) / 64.0
                ),
                _ => {
                    // Random digits, point and exponent.
                    let digits = 1 + rng.below(24) as usize;
                    let mut t: String = (0..digits)
                        .map(|_| char::from(b'0' + rng.below(10) as u8))
                        .collect();
                    let t2 = t.trim_start_matches('0');
                    t = if t2.is_empty() {
                        "0".into()
                    } else {
                        t2.to_string()
                    };
                    if rng.below(2) == 0 {
                        let frac: String = (0..1 + rng.below(12))
                            .map(|_| char::from(b'0' + rng.below(10) as u8))
                            .collect();
                        t = format!("{t}.{frac}");
                    }
                    if rng.below(2) == 0 {
                        t = format!("{t}e{}", rng.below(700) as i64 - 350);
                    }
                    if rng.below(2) == 0 {
                        format!("-{t}")
                    } else {
                        t
                    }
                }
            };
            texts.push(text);
        }
        texts
    }

    #[test]
    fn numbers_are_read_as_serde_json_reads_them() {
        let mut rng = Rng(7);
        for text in number_texts(&mut rng, 300_000) {
            let reference = serde_json::from_str::<Captured>(&text).map(|c| c.0);
            match (fast::number(&text), reference) {
                (Some(got), Ok(want)) => {
                    assert!(same_number(got, want), "{text}: {got:?} != {want:?}")
                }
                (Some(got), Err(e)) => panic!("{text}: read as {got:?}, serde_json says {e}"),
                (None, Ok(want)) => panic!("{text}: not read directly, serde_json reads {want:?}"),
                (None, Err(_)) => {}
            }
        }
    }

    #[test]
    fn the_power_table_is_serde_jsons() {
        for (i, &pow) in fast::POW10.iter().enumerate() {
            let want: f64 = serde_json::from_str(&format!("1e{i}")).unwrap();
            assert_eq!(pow.to_bits(), want.to_bits(), "1e{i}");
            assert_eq!(
                pow.to_bits(),
                format!("1e{i}").parse::<f64>().unwrap().to_bits()
            );
        }
    }

    #[test]
    fn fp32_data_is_what_serde_json_gives() {
        let mut rng = Rng(11);
        let texts: Vec<String> = number_texts(&mut rng, 20_000)
            .into_iter()
            .filter(|t| serde_json::from_str::<f64>(t).is_ok())
            .collect();
        for chunk in texts.chunks(1000) {
            for datatype in ["FP32", "FP64", "FP16"] {
                let body = format!(
                    r#"{{"inputs":[{{"name":"X","shape":[{}],"datatype":"{datatype}","data":[{}]}}]}}"#,
                    chunk.len(),
                    chunk.join(",")
                );
                let request = parse(&body).unwrap();
                let data = &request.inputs[0].data;
                for (i, text) in chunk.iter().enumerate() {
                    let want = serde_json::from_str::<f64>(text).unwrap();
                    let same = match data {
                        TensorData::Fp32(v) => v[i].to_bits() == (want as f32).to_bits(),
                        TensorData::Fp64(v) => v[i].to_bits() == want.to_bits(),
                        TensorData::Fp16(v) => {
                            v[i].to_bits() == half::f16::from_f64(want).to_bits()
                        }
                        other => panic!("{other:?}"),
                    };
                    assert!(same, "{datatype} {text}");
                }
            }
        }
        let edges = parse(
            r#"{"inputs":[{"name":"X","shape":[6],"datatype":"FP32","data":[-0.0,1e-45,3.4028235e38,16777217,-0,8e-46]}]}"#,
        )
        .unwrap();
        let TensorData::Fp32(v) = &edges.inputs[0].data else {
            panic!()
        };
        let bits: Vec<u32> = v.iter().map(|f| f.to_bits()).collect();
        assert_eq!(
            bits,
            [
                (-0.0f32).to_bits(),
                1,
                f32::MAX.to_bits(),
                16777216f32.to_bits(),
                (-0.0f32).to_bits(),
                1,
            ]
        );
    }

    #[test]
    fn integer_data_is_range_checked_the_same_way() {
        for (datatype, data, ok) in [
            ("INT8", "[-128,127,0,-0,1e2,100.0]", true),
            ("INT8", "[1,128]", false),
            ("INT8", "[1,-129]", false),
            ("INT8", "[1,1.5]", false),
            ("INT8", "[1,1e3]", false),
            ("UINT8", "[0,255]", true),
            ("UINT8", "[0,-1]", false),
            ("UINT64", "[0,18446744073709551615]", true),
            ("UINT64", "[0,18446744073709551616]", false),
            ("INT64", "[-9223372036854775808,9223372036854775807]", true),
            ("INT64", "[0,9223372036854775808]", false),
            ("INT32", "[1,2147483648]", false),
            ("BOOL", "[true,false]", true),
            ("BOOL", "[true,0]", false),
            ("BYTES", r#"["a","b"]"#, true),
            ("BYTES", r#"["a\"","\u00e9"]"#, true),
            ("FP32", r#"[1,"2"]"#, false),
            ("FP32", "[1,null]", false),
            ("FP32", "[1,{}]", false),
            ("FP32", "[1,1e400]", false),
        ] {
            let n = data.matches(',').count() + 1;
            let body = format!(
                r#"{{"inputs":[{{"name":"X","shape":[{n}],"datatype":"{datatype}","data":{data}}}]}}"#
            );
            let result = parse(&body);
            assert_eq!(result.is_ok(), ok, "{datatype} {data}: {result:?}");
            if let Err(e) = result {
                assert!(
                    e.contains("input 'X'") || e.contains("number out of range"),
                    "{e}"
                );
            }
        }
    }

    /// Bodies in many forms, then thousands of random edits of them: the scan and the general
    /// parser must give the same answer (or the same error) for every one.
    #[test]
    fn scan_and_general_parser_agree_on_mangled_bodies() {
        let seeds: Vec<String> = vec![
            r#"{"id":"a","inputs":[{"name":"X","shape":[2,3],"datatype":"FP32","data":[1,2.5,-3e2,0,-0,7]}],"outputs":[{"name":"Y"}]}"#.into(),
            r#"{"inputs":[{"data":[[1,2],[3,4]],"datatype":"INT64","name":"X","shape":[2,2],"parameters":{"a":[1,{"b":null}]}}],"parameters":{"binary_data_output":false}}"#.into(),
            r#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["x","y"]},{"name":"B","shape":[1],"datatype":"BOOL","data":[true]}]}"#.into(),
            r#" { "inputs" : [ { "name" : "X" , "shape" : [ 1 , 2 ] , "datatype" : "FP64" , "data" : [ [ 1.5 , 2 ] ] } ] } "#.into(),
            r#"{"inputs":[{"name":"X","shape":[2,2,2],"datatype":"UINT8","data":[[[1,2],[3,4]],[[5,6],[7,8]]]}]}"#.into(),
            r#"{"inputs":[{"name":"X","shape":[0,3],"datatype":"FP16","data":[]}],"outputs":[{"name":"a","parameters":{}},{"name":"b"}]}"#.into(),
            r#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"a","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#.into(),
        ];
        let alphabet: &[&str] = &[
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"",
            "\\",
            " ",
            "-",
            "0",
            "1",
            "9",
            ".",
            "e",
            "E",
            "+",
            "true",
            "null",
            "\"data\"",
            "\"shape\"",
            "\"name\"",
            "\"datatype\"",
            "\"id\"",
            "\"inputs\"",
            "\"outputs\"",
            "\"parameters\"",
            "\"binary_data_size\"",
            "\"FP32\"",
            "\"INT8\"",
            "1e400",
            "[[1]]",
            "\u{e9}",
            "\u{1}",
            "\t",
            "\"binary_data\"",
            "\"binary_data_output\"",
            "false",
        ];
        let mut rng = Rng(3);
        for seed in &seeds {
            // The binary one has its data missing: an error, the same both ways.
            assert_eq!(parse(seed).is_ok(), !seed.contains("binary_data_size"));
        }
        for _ in 0..20_000 {
            let mut body = seeds[rng.below(seeds.len() as u64) as usize]
                .clone()
                .into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(body.len() as u64 + 1) as usize;
                match rng.below(3) {
                    0 if at < body.len() => {
                        body.remove(at);
                    }
                    1 => {
                        let piece = alphabet[rng.below(alphabet.len() as u64) as usize];
                        body.splice(at..at, piece.bytes());
                    }
                    _ if at < body.len() => {
                        body[at] =
                            alphabet[rng.below(alphabet.len() as u64) as usize].as_bytes()[0];
                    }
                    _ => {}
                }
            }
            let _ = parse_limited(&body, 5);
            let _ = parse_limited(&body, LIMIT);
            let _ = instances(&body, DataType::Fp32, LIMIT);
        }
    }

    #[test]
    fn the_usual_bodies_take_the_scan() {
        for body in [
            churn_64(),
            br#"{"id":"r","inputs":[{"name":"X","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]],"parameters":{"content_type":"x"}}],"outputs":[{"name":"Y","parameters":{}}],"parameters":{"priority":1}}"#.to_vec(),
            // Sorted keys (Go maps, serde_json::Value): the data comes before its datatype.
            br#"{"inputs":[{"data":[1,2,3],"datatype":"INT64","name":"X","shape":[3]}]}"#.to_vec(),
            br#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["a","b"]},{"name":"B","shape":[1],"datatype":"BOOL","data":[false]}]}"#.to_vec(),
        ] {
            assert!(
                fast::request(&body, LIMIT).is_some(),
                "{}",
                String::from_utf8_lossy(&body)
            );
            parse_limited(&body, LIMIT).unwrap();
        }
        let body = br#"{"instances": [[1, 2], [3, 4]]}"#;
        assert!(fast::instances(body, DataType::Fp32, LIMIT).is_some());
        // What the scan leaves to the general parser.
        for body in [
            &br#"{"inputs":[{"name":"X\u0041","shape":[1],"datatype":"FP32","data":[1]}]}"#[..],
            br#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[null]}]}"#,
            br#"{"inputs":[{"name":"X","name":"Y","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            br#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP32","data":[[1],[2,3]]}]}"#,
        ] {
            assert!(fast::request(body, LIMIT).is_none());
        }
    }

    /// The 64-row churn request of the serving benchmark (64 x 78 FP32), or one like it.
    fn churn_64() -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Ok(body) = std::fs::read(root.join("bench/serve/infer-64.json")) {
            return body;
        }
        let text = std::fs::read_to_string(root.join("tests/fixtures/server/churn_expected.json"))
            .unwrap();
        let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rows = expected["features"].as_array().unwrap();
        let data: Vec<&serde_json::Value> = rows
            .iter()
            .cycle()
            .take(64)
            .flat_map(|r| r.as_array().unwrap())
            .collect();
        serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "features", "shape": [64, 78], "datatype": "FP32", "data": data}]})).unwrap()
    }

    /// Decoding speed of the 64-row churn request, old path against new. Run optimised:
    /// `cargo test --release --lib server::parse::tests::decode_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run it with --release --ignored --nocapture"]
    fn decode_speed() {
        let body = churn_64();
        let numbers = 64 * 78;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let flat = v["inputs"][0]["data"].as_array().unwrap().clone();
        let rows: Vec<&[serde_json::Value]> = flat.chunks(78).collect();
        // Keys as clients usually send them, and sorted (data before datatype).
        let client_order = |data: String| {
            format!(
                r#"{{"inputs":[{{"name":"features","shape":[64,78],"datatype":"FP32","data":{data}}}]}}"#
            )
            .into_bytes()
        };
        let nested = client_order(serde_json::to_string(&rows).unwrap());
        let sorted = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "features",
            "shape": [64, 78], "datatype": "FP32", "data": flat}]}))
        .unwrap();
        let header = br#"{"inputs":[{"name":"features","shape":[64,78],"datatype":"FP32","parameters":{"binary_data_size":19968}}]}"#;
        let values: Vec<f32> = flat.iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let binary = [&header[..], &le_f32(&values)].concat();
        for body in [&body, &nested, &sorted] {
            assert_eq!(
                format!("{:?}", parse_infer(body, None, LIMIT)),
                format!("{:?}", parse_infer_general(body, None, LIMIT))
            );
        }
        let from_binary = parse_infer(&binary, Some(header.len()), LIMIT).unwrap();
        assert_eq!(
            format!("{:?}", from_binary.inputs),
            format!("{:?}", parse_infer(&body, None, LIMIT).unwrap().inputs)
        );
        let time = |f: &dyn Fn() -> usize| {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let started = std::time::Instant::now();
                let mut sink = 0;
                let rounds = 400;
                for _ in 0..rounds {
                    sink += f();
                }
                std::hint::black_box(sink);
                best = best.min(started.elapsed().as_secs_f64() / rounds as f64);
            }
            best
        };
        let len = |r: Result<InferRequest, String>| r.map_or(0, |r| r.inputs[0].data.len());
        println!("64-row churn request, {numbers} FP32 numbers");
        for (what, body) in [
            ("flat", &body),
            ("nested rows", &nested),
            ("sorted keys", &sorted),
        ] {
            let general =
                time(&|| len(parse_infer_general(std::hint::black_box(body), None, LIMIT)));
            let scan = time(&|| len(parse_infer(std::hint::black_box(body), None, LIMIT)));
            println!(
                "{what:>12} ({:5} bytes): general parser {:6.1} us/request {:5.2} ns/number | scan {:6.1} us/request {:5.2} ns/number | x{:.2}",
                body.len(),
                general * 1e6,
                general * 1e9 / numbers as f64,
                scan * 1e6,
                scan * 1e9 / numbers as f64,
                general / scan
            );
        }
        let decode = time(&|| {
            len(parse_infer(
                std::hint::black_box(&binary),
                Some(header.len()),
                LIMIT,
            ))
        });
        println!(
            "{:>12} ({:5} bytes): {:6.1} us/request {:5.2} ns/number",
            "binary",
            binary.len(),
            decode * 1e6,
            decode * 1e9 / numbers as f64
        );
    }
}
