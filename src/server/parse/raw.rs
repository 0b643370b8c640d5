//! A request as either reader leaves it: the fields as sent, with what was wrong with each kept
//! until the whole input is read, so that messages name the tensor whatever the key order.
//! `finish` checks it into an [`InferRequest`].

use super::binary::BinaryPart;
use super::elements::ParsedData;
use super::{InferRequest, InputTensor};
use crate::server::tensor::DataType;

pub(super) struct RawRequest {
    pub(super) id: Option<String>,
    pub(super) inputs: Option<Vec<RawInput>>,
    pub(super) outputs: Option<Vec<RawOutput>>,
    /// `parameters.binary_data_output`.
    pub(super) binary_output: Flag,
}

pub(super) struct RawOutput {
    pub(super) name: String,
    /// `parameters.binary_data`.
    pub(super) binary: Flag,
}

/// A boolean parameter: absent (or null), its value, or what was sent instead.
pub(super) type Flag = Option<Result<bool, String>>;

impl RawRequest {
    pub(super) fn finish(self, binary: Option<&[u8]>) -> Result<InferRequest, String> {
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

/// One input as it was sent. Problems found while parsing are kept and reported when the whole
/// object has been read, so that the message can name the tensor whatever the key order.
pub(super) struct RawInput {
    pub(super) name: Option<String>,
    pub(super) shape: Option<Result<Vec<usize>, String>>,
    pub(super) datatype: Option<Result<DataType, String>>,
    pub(super) data: Option<ParsedData>,
    /// `parameters.binary_data_size`: the data is in the binary part.
    pub(super) binary: Option<Result<u64, String>>,
}

impl RawInput {
    fn finish(self, index: usize, part: &mut BinaryPart) -> Result<InputTensor, String> {
        let Some(name) = self.name else {
            return Err(format!("input #{index}: missing \"name\""));
        };
        // Formatted only into an error message: the usual request has none.
        let what = InputLabel(&name);
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

/// "input 'NAME'", as messages about an input begin.
struct InputLabel<'a>(&'a str);

impl std::fmt::Display for InputLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input '{}'", self.0)
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

/// Refuses negative dimensions and shapes with more than `max_elements` elements, before any
/// buffer for them exists.
pub(super) fn check_shape(shape: &[i64], max_elements: usize) -> Result<Vec<usize>, String> {
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
