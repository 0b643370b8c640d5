//! Tensor elements: how each datatype accepts JSON scalars, and data kept as scalars when it came
//! before its datatype. Both readers convert through here, so they give the same values.

use crate::server::tensor::{DataType, TensorData};

/// Tensor elements as parsed: typed when the datatype was known before the data, otherwise kept
/// as JSON scalars and converted once the datatype is known.
pub(super) enum Values {
    Typed(TensorData),
    Generic(Vec<Scalar>),
}

pub(super) struct ParsedData {
    pub(super) values: Values,
    /// The nesting of the data: `[n]` for a flat array, `[rows, cols]` for nested rows, `[]` for
    /// a bare scalar.
    pub(super) dims: Vec<usize>,
    /// What was wrong with the data (the rest of it was read without being kept).
    pub(super) error: Option<String>,
}

impl ParsedData {
    pub(super) fn skipped() -> ParsedData {
        ParsedData {
            values: Values::Generic(Vec::new()),
            dims: Vec::new(),
            error: None,
        }
    }
}

impl Values {
    pub(super) fn into_typed(
        self,
        datatype: DataType,
        what: &dyn std::fmt::Display,
    ) -> Result<TensorData, String> {
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
    what: &dyn std::fmt::Display,
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

pub(super) fn element_error(datatype: DataType, index: usize, found: &str) -> String {
    format!("element {index} of \"data\" is {found}, not a valid {datatype} value")
}

/// A JSON scalar kept for later conversion.
pub(super) enum Scalar {
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

pub(super) fn describe_str(v: &str) -> String {
    let short: String = v.chars().take(40).collect();
    let ellipsis = if short.len() < v.len() { "..." } else { "" };
    format!("the string {short:?}{ellipsis}")
}

/// How one element type accepts JSON scalars. Integers accept integral numbers in range only,
/// floats any number, booleans only `true`/`false`, BYTES only strings.
pub(super) trait Elem: Sized {
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
