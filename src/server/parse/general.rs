//! The general reader: `serde_json`, with seeds that parse straight into typed buffers and
//! enforce the limits as they read. It takes any body, and its answer, errors included, is the
//! one the scan must give.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::capacity_bound;
use super::elements::{Elem, ParsedData, Scalar, Values, describe_str, element_error};
use super::raw::{Flag, RawInput, RawOutput, RawRequest, check_shape};
use crate::server::tensor::{DataType, TensorData};

pub(super) fn general_request(body: &[u8], max_elements: usize) -> Result<RawRequest, String> {
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

pub(super) fn json_error(e: serde_json::Error) -> String {
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

/// Parses a `data` value (flat or nested) into a typed buffer, or into scalars when the datatype
/// is not known yet.
pub(super) struct DataSeed {
    pub(super) datatype: Option<DataType>,
    pub(super) capacity: usize,
    pub(super) max_elements: usize,
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
