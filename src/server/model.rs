//! Models as served: their signature (inputs and outputs in protocol terms), the checks a
//! request must pass against it, and the weighted choice between a model's variants.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::Serialize;

use super::config::Device;
use super::parse::InputTensor;
use super::tensor::{DataType, TensorData};
use crate::onnx::OnnxError;

/// One input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct IoSpec {
    pub name: String,
    #[serde(serialize_with = "serialize_datatype")]
    pub datatype: DataType,
    /// `-1` for dynamic dimensions.
    pub shape: Vec<i64>,
}

fn serialize_datatype<S: serde::Serializer>(dt: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(dt.name())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signature {
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// A tensor on its way into or out of ONNX Runtime.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Why a model cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "model {}: output '{name}' is {onnx_type}, not a tensor, so the inference protocol cannot carry it; \
         hint: a scikit-learn classifier converted by skl2onnx has such a ZipMap output unless it is exported \
         with `to_onnx(model, ..., options={{id(clf): {{\"zipmap\": False}}}})`",
        path.display()
    )]
    NotTensorOutput {
        path: PathBuf,
        name: String,
        onnx_type: String,
    },
    #[error(
        "model {}: {kind} '{name}' is {onnx_type}, which the inference protocol cannot carry",
        path.display()
    )]
    Unsupported {
        path: PathBuf,
        kind: &'static str,
        name: String,
        onnx_type: String,
    },
}

impl Signature {
    pub(crate) fn of(session: &Session, path: &Path) -> Result<Signature, SignatureError> {
        let describe = |outlets: &[ort::value::Outlet], kind: &'static str| {
            outlets
                .iter()
                .map(|o| io_spec(o.name(), o.dtype(), kind, path))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Signature {
            inputs: describe(session.inputs(), "input")?,
            outputs: describe(session.outputs(), "output")?,
        })
    }

    /// `Ok` when requests can be merged along the first axis: every input and output has a
    /// dynamic first dimension. Otherwise the reason, for the log.
    pub(crate) fn batchable(&self) -> Result<(), String> {
        for (kind, list) in [("input", &self.inputs), ("output", &self.outputs)] {
            for spec in list {
                match spec.shape.first() {
                    None => return Err(format!("{kind} '{}' is a scalar", spec.name)),
                    Some(&d) if d >= 0 => {
                        return Err(format!(
                            "{kind} '{}' has a fixed first dimension ({d}) in shape {:?}",
                            spec.name, spec.shape
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    pub(crate) fn input_names(&self) -> String {
        names(&self.inputs)
    }

    pub(crate) fn output_names(&self) -> String {
        names(&self.outputs)
    }

    /// Checks the request's inputs against the model and orders them as the session expects.
    pub(crate) fn check_inputs(&self, inputs: Vec<InputTensor>) -> Result<Vec<HostTensor>, String> {
        let mut slots: Vec<Option<HostTensor>> = vec![None; self.inputs.len()];
        for input in inputs {
            let Some(i) = self.inputs.iter().position(|s| s.name == input.name) else {
                return Err(format!(
                    "unknown input '{}'; the model's inputs are: {}",
                    input.name,
                    self.input_names()
                ));
            };
            if slots[i].is_some() {
                return Err(format!("input '{}' is given more than once", input.name));
            }
            let spec = &self.inputs[i];
            check_tensor(spec, &input.shape, input.datatype)?;
            slots[i] = Some(HostTensor {
                shape: input.shape,
                data: input.data,
            });
        }
        slots
            .into_iter()
            .zip(&self.inputs)
            .map(|(slot, spec)| {
                slot.ok_or_else(|| {
                    format!(
                        "missing input '{}'; the model's inputs are: {}",
                        spec.name,
                        self.input_names()
                    )
                })
            })
            .collect()
    }

    /// Indices of the requested outputs, in request order; `None` asks for all of them.
    pub(crate) fn output_indices(
        &self,
        requested: Option<&[String]>,
    ) -> Result<Vec<usize>, String> {
        let Some(requested) = requested else {
            return Ok((0..self.outputs.len()).collect());
        };
        let mut indices = Vec::with_capacity(requested.len());
        for name in requested {
            let Some(i) = self.outputs.iter().position(|o| &o.name == name) else {
                return Err(format!(
                    "unknown output '{name}'; the model's outputs are: {}",
                    self.output_names()
                ));
            };
            if !indices.contains(&i) {
                indices.push(i);
            }
        }
        Ok(indices)
    }

    /// Variants of one model must look the same to clients.
    pub(crate) fn same_interface(&self, other: &Signature) -> bool {
        let key = |list: &[IoSpec]| {
            list.iter()
                .map(|s| (s.name.clone(), s.datatype, s.shape.len()))
                .collect::<Vec<_>>()
        };
        key(&self.inputs) == key(&other.inputs) && key(&self.outputs) == key(&other.outputs)
    }
}

/// Datatype, rank and fixed dimensions must match the model; no dimension may be zero.
pub(crate) fn check_tensor(
    spec: &IoSpec,
    shape: &[usize],
    datatype: DataType,
) -> Result<(), String> {
    let name = &spec.name;
    if datatype != spec.datatype {
        return Err(format!(
            "input '{name}': datatype {datatype} does not match the model's {}",
            spec.datatype
        ));
    }
    if shape.len() != spec.shape.len() {
        return Err(format!(
            "input '{name}': shape {shape:?} has {} dimensions but the model's shape {:?} has {}",
            shape.len(),
            spec.shape,
            spec.shape.len()
        ));
    }
    for (axis, (&got, &want)) in shape.iter().zip(&spec.shape).enumerate() {
        if want >= 0 && got as u64 != want as u64 {
            return Err(format!(
                "input '{name}': shape {shape:?} does not match the model's {:?} (dimension {axis} must be {want})",
                spec.shape
            ));
        }
    }
    if let Some(axis) = shape.iter().position(|&d| d == 0) {
        return Err(if axis == 0 {
            format!("input '{name}': shape {shape:?} is an empty batch; send at least one row")
        } else {
            format!("input '{name}': shape {shape:?} has an empty dimension {axis}")
        });
    }
    Ok(())
}

fn names(list: &[IoSpec]) -> String {
    list.iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_spec(
    name: &str,
    dtype: &ValueType,
    kind: &'static str,
    path: &Path,
) -> Result<IoSpec, SignatureError> {
    if let ValueType::Tensor { ty, shape, .. } = dtype
        && let Some(datatype) = DataType::from_ort(*ty)
    {
        return Ok(IoSpec {
            name: name.to_string(),
            datatype,
            shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        });
    }
    let onnx_type = onnx_type_name(dtype);
    if kind == "output" && !matches!(dtype, ValueType::Tensor { .. }) {
        return Err(SignatureError::NotTensorOutput {
            path: path.to_path_buf(),
            name: name.to_string(),
            onnx_type,
        });
    }
    Err(SignatureError::Unsupported {
        path: path.to_path_buf(),
        kind,
        name: name.to_string(),
        onnx_type,
    })
}

/// ONNX's own spelling, e.g. `seq(map(int64,tensor(float)))`.
fn onnx_type_name(dtype: &ValueType) -> String {
    match dtype {
        ValueType::Tensor { ty, .. } => format!("tensor({})", onnx_element_name(*ty)),
        ValueType::Map { key, value } => format!(
            "map({},tensor({}))",
            onnx_element_name(*key),
            onnx_element_name(*value)
        ),
        ValueType::Sequence(inner) => format!("seq({})", onnx_type_name(inner)),
        ValueType::Optional(inner) => format!("optional({})", onnx_type_name(inner)),
    }
}

fn onnx_element_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float".into(),
        TensorElementType::Float64 => "double".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Bfloat16 => "bfloat16".into(),
        TensorElementType::String => "string".into(),
        TensorElementType::Bool => "bool".into(),
        other => match DataType::from_ort(other) {
            Some(dt) => dt.name().to_ascii_lowercase(),
            None => other.to_string(),
        },
    }
}

/// Opens `path` in the process's ONNX Runtime environment with `intra_threads` threads for
/// each operator (see `cores` for how many the server gives each session).
///
/// On `Device::Cuda` the CUDA execution provider must register: a library without it, or one
/// that cannot start it (no GPU, no CUDA libraries), is an error, never a quiet fall back to the
/// CPU.
pub(crate) fn open_session_with(
    path: &Path,
    device: Device,
    intra_threads: usize,
) -> Result<Session, OnnxError> {
    let model_error = |message: String| OnnxError::ModelLoad {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(OnnxError::ModelNotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        return Err(model_error("is a directory, not an ONNX model file".into()));
    }
    let env = crate::onnx::environment()?;
    let builder = Session::builder(env)
        .map_err(|e| model_error(e.to_string()))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| model_error(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| model_error(e.to_string()))?;
    let mut builder = match device {
        Device::Cpu => builder,
        Device::Cuda => builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| OnnxError::Provider {
                provider: crate::onnx::CUDA_PROVIDER,
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
    };
    builder
        .commit_from_file(path)
        .map_err(|e| model_error(e.to_string()))
}

/// Picks a variant index by weight. A key (from the sticky header) always lands on the same
/// variant, in every replica and across restarts, as long as the weights stay the same.
pub(crate) fn pick_variant(weights: &[u32], key: Option<&[u8]>) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if weights.len() <= 1 || total == 0 {
        return 0;
    }
    let point = match key {
        Some(key) => stable_hash(key) % total,
        None => rand::random_range(0..total),
    };
    let mut acc = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        acc += u64::from(w);
        if point < acc {
            return i;
        }
    }
    weights.len() - 1
}

/// FNV-1a with a final avalanche, so that similar keys spread evenly. Fixed forever: changing it
/// would move sticky clients between variants.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> IoSpec {
        IoSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn input(name: &str, datatype: DataType, shape: &[usize]) -> InputTensor {
        let n = shape.iter().product();
        let data = match datatype {
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            _ => unimplemented!(),
        };
        InputTensor {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            data,
        }
    }

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                spec("a", DataType::Fp32, &[-1, 3]),
                spec("b", DataType::Int64, &[-1]),
            ],
            outputs: vec![
                spec("y", DataType::Fp32, &[-1, 3]),
                spec("z", DataType::Int64, &[-1]),
            ],
        }
    }

    #[test]
    fn inputs_are_ordered_and_checked() {
        let sig = signature();
        let ordered = sig
            .check_inputs(vec![
                input("b", DataType::Int64, &[2]),
                input("a", DataType::Fp32, &[2, 3]),
            ])
            .unwrap();
        assert_eq!(ordered[0].shape, vec![2, 3]);
        assert_eq!(ordered[1].shape, vec![2]);

        let cases = [
            (
                vec![input("c", DataType::Fp32, &[1, 3])],
                "unknown input 'c'; the model's inputs are: a, b",
            ),
            (
                vec![input("a", DataType::Int64, &[1, 3])],
                "input 'a': datatype INT64 does not match the model's FP32",
            ),
            (
                vec![input("a", DataType::Fp32, &[1, 4])],
                "dimension 1 must be 3",
            ),
            (vec![input("a", DataType::Fp32, &[3])], "has 1 dimensions"),
            (vec![input("a", DataType::Fp32, &[0, 3])], "empty batch"),
            (
                vec![input("a", DataType::Fp32, &[1, 3])],
                "missing input 'b'",
            ),
            (
                vec![
                    input("a", DataType::Fp32, &[1, 3]),
                    input("a", DataType::Fp32, &[1, 3]),
                ],
                "more than once",
            ),
        ];
        for (inputs, expected) in cases {
            let err = sig.check_inputs(inputs).unwrap_err();
            assert!(err.contains(expected), "{err} (wanted {expected})");
        }
    }

    #[test]
    fn outputs_can_be_selected() {
        let sig = signature();
        assert_eq!(sig.output_indices(None).unwrap(), vec![0, 1]);
        assert_eq!(
            sig.output_indices(Some(&["z".to_string(), "z".to_string()]))
                .unwrap(),
            vec![1]
        );
        let err = sig.output_indices(Some(&["q".to_string()])).unwrap_err();
        assert_eq!(err, "unknown output 'q'; the model's outputs are: y, z");
    }

    #[test]
    fn batchable_needs_dynamic_first_dims() {
        assert!(signature().batchable().is_ok());
        let mut fixed = signature();
        fixed.outputs[1].shape = vec![1];
        let reason = fixed.batchable().unwrap_err();
        assert!(reason.contains("output 'z'"), "{reason}");
    }

    #[test]
    fn weighted_pick_is_sticky_and_proportional() {
        let weights = [90, 10];
        for key in ["alice", "bob", "carol"] {
            let first = pick_variant(&weights, Some(key.as_bytes()));
            for _ in 0..10 {
                assert_eq!(pick_variant(&weights, Some(key.as_bytes())), first);
            }
        }
        let keyed_b = (0..10_000)
            .filter(|i| pick_variant(&weights, Some(format!("user-{i}").as_bytes())) == 1)
            .count();
        assert!((700..1300).contains(&keyed_b), "{keyed_b}");
        let random_b = (0..10_000)
            .filter(|_| pick_variant(&weights, None) == 1)
            .count();
        assert!((700..1300).contains(&random_b), "{random_b}");
        assert_eq!(pick_variant(&[0, 5], None), 1);
        assert_eq!(pick_variant(&[7], Some(b"x")), 0);
    }
}
