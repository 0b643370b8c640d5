//! Request bodies, parsed in one pass straight into typed buffers: no `serde_json::Value` tree,
//! no per-element allocation for numbers, and limits enforced while parsing so that a request
//! declaring a huge shape or sending too many elements is refused before memory is committed.

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
}

#[derive(Debug)]
pub(crate) struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Parses an Open Inference Protocol v2 `infer` body. The error is the message for a 400.
pub(crate) fn parse_infer(body: &[u8], max_elements: usize) -> Result<InferRequest, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = RequestSeed { max_elements }
        .deserialize(&mut de)
        .map_err(json_error)?;
    de.end().map_err(json_error)?;
    let inputs = raw
        .inputs
        .ok_or_else(|| "the request has no \"inputs\"".to_string())?
        .into_iter()
        .enumerate()
        .map(|(i, input)| input.finish(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InferRequest {
        id: raw.id,
        inputs,
        outputs: raw.outputs,
    })
}

/// Parses a KServe v1 `predict` body (`{"instances": [...]}`) into one tensor of `datatype`
/// whose first dimension is the number of instances.
pub(crate) fn parse_instances(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<(Vec<usize>, TensorData), String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = InstancesSeed {
        datatype,
        max_elements,
    }
    .deserialize(&mut de)
    .map_err(json_error)?;
    de.end().map_err(json_error)?;
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
    outputs: Option<Vec<String>>,
}

struct RequestSeed {
    max_elements: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Id,
    Inputs,
    Outputs,
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
                    })?)
                }
                RequestField::Outputs => {
                    let outputs: Vec<RequestedOutput> = map.next_value()?;
                    request.outputs = Some(outputs.into_iter().map(|o| o.name).collect());
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
}

struct InputsSeed {
    max_elements: usize,
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
    binary: bool,
}

impl RawInput {
    fn finish(self, index: usize) -> Result<InputTensor, String> {
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
        let Some(ParsedData {
            values,
            dims,
            error,
        }) = self.data
        else {
            if self.binary {
                return Err(format!(
                    "input '{name}': binary tensor data is not supported; send \"data\" as JSON"
                ));
            }
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

#[derive(Deserialize)]
struct InputParameters {
    binary_data_size: Option<IgnoredAny>,
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
            binary: false,
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
                                Some(Ok(dims)) => dims.iter().product::<usize>(),
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
                    let params: Option<InputParameters> = map.next_value()?;
                    input.binary = params.is_some_and(|p| p.binary_data_size.is_some());
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn parse(body: &str) -> Result<InferRequest, String> {
        parse_infer(body.as_bytes(), LIMIT)
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
        let err = parse_infer(body.as_bytes(), 10).unwrap_err();
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
        let (dims, data) = parse_instances(
            br#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#,
            DataType::Fp32,
            LIMIT,
        )
        .unwrap();
        assert_eq!(dims, vec![3, 2]);
        assert_eq!(data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let (dims, _) =
            parse_instances(br#"{"instances": [1, 2]}"#, DataType::Int64, LIMIT).unwrap();
        assert_eq!(dims, vec![2]);
        let err =
            parse_instances(br#"{"instances": [[1], [2, 3]]}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("ragged"), "{err}");
        let err = parse_instances(br#"{"rows": []}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("no \"instances\""), "{err}");
        let err = parse_instances(br#"{"instances": 5}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("must be an array"), "{err}");
    }
}
