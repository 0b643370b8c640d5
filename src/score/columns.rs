//! Which file columns feed which model input, and which output columns each model output
//! becomes: by name from the model's own metadata, with `--columns` to say otherwise.
//!
//! An input of shape `[N]` or `[N, 1]` takes the column of its own name. An input `[N, k]` takes
//! k columns: those the model lists under its `ferry.columns` metadata (a JSON object from input
//! or output name to column names, set at export), those `--columns` gives, or else
//! `<input>_0 … <input>_{k-1}`, the names `ferry score` gives such an output. Outputs are named
//! the same way, so that a scored file can be fed to a model that reads those columns.

use std::collections::BTreeMap;

use super::ScoreError;
use crate::server::model::{IoSpec, Signature};
use crate::server::tensor::DataType;

/// The ONNX metadata key that names the columns of multi-column inputs and outputs.
pub const METADATA_KEY: &str = "ferry.columns";

/// `--columns` as given: input name → column names, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnArgs(pub BTreeMap<String, Vec<String>>);

impl ColumnArgs {
    /// Parses `IN=COL,…`: `x=a,b,c,age=customer_age` gives `x` three columns and `age` one; an
    /// item without `=` continues the list of the input before it. Several `--columns` add up.
    pub fn parse(args: &[String]) -> Result<ColumnArgs, ScoreError> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for arg in args {
            let mut current: Option<String> = None;
            for item in arg.split(',') {
                let item = item.trim();
                let bad = |message: &str| ScoreError::ColumnsArg {
                    arg: arg.clone(),
                    message: message.to_string(),
                };
                if item.is_empty() {
                    return Err(bad("an empty column name"));
                }
                match item.split_once('=') {
                    Some((input, column)) => {
                        let (input, column) = (input.trim(), column.trim());
                        if input.is_empty() || column.is_empty() {
                            return Err(bad(&format!("'{item}' needs INPUT=COLUMN")));
                        }
                        if map.contains_key(input) {
                            return Err(bad(&format!("input '{input}' is given twice")));
                        }
                        map.insert(input.to_string(), vec![column.to_string()]);
                        current = Some(input.to_string());
                    }
                    None => match current.as_ref().and_then(|c| map.get_mut(c)) {
                        Some(list) => list.push(item.to_string()),
                        None => {
                            return Err(bad(&format!(
                                "'{item}' comes before any INPUT=; write e.g. x={item},…"
                            )));
                        }
                    },
                }
            }
        }
        Ok(ColumnArgs(map))
    }
}

/// The column names a model lists for its multi-column inputs and outputs.
pub fn parse_metadata(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    serde_json::from_str(text).map_err(|e| {
        format!("its `{METADATA_KEY}` metadata is not a JSON object of name → [columns]: {e}")
    })
}

/// One model input and the columns that fill it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputColumns {
    pub name: String,
    pub datatype: DataType,
    pub columns: Vec<String>,
    /// The tensor's rank: 1 (`[N]`) or 2 (`[N, k]`).
    pub rank: usize,
}

/// One model output and the columns it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputColumns {
    /// The output's index in the model's signature.
    pub index: usize,
    pub name: String,
    pub datatype: DataType,
    /// Empty when the model's shape leaves the width open: named from the first batch.
    pub columns: Vec<String>,
}

/// How a model reads and writes tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub inputs: Vec<InputColumns>,
    pub outputs: Vec<OutputColumns>,
    /// Rows per run when every input has the same fixed first dimension (a model exported
    /// without a dynamic batch axis); `None` when the batch size is free.
    pub fixed_batch: Option<usize>,
}

impl Mapping {
    /// `wanted`: the outputs to write (all when empty), in that order.
    pub fn new(
        signature: &Signature,
        metadata: &BTreeMap<String, Vec<String>>,
        args: &ColumnArgs,
        wanted: &[String],
    ) -> Result<Mapping, ScoreError> {
        let unsupported = |message: String| ScoreError::Unsupported { message };
        for name in args.0.keys() {
            if !signature.inputs.iter().any(|i| &i.name == name) {
                return Err(ScoreError::ColumnsArg {
                    arg: format!("{name}=…"),
                    message: format!(
                        "the model has no input '{name}'; its inputs are: {}",
                        signature.input_names()
                    ),
                });
            }
        }
        let fixed_batch = batch_dimension(&signature.inputs)?;
        let mut inputs = Vec::with_capacity(signature.inputs.len());
        for spec in &signature.inputs {
            let given = args.0.get(&spec.name).or_else(|| metadata.get(&spec.name));
            let (columns, rank) = match spec.shape.len() {
                1 => (vec![spec.name.clone()], 1),
                2 => (width_columns(spec, given, "input")?, 2),
                _ => {
                    return Err(unsupported(format!(
                        "input '{}' has shape {:?}: a table's rows fill inputs of shape [N] or [N, k] only",
                        spec.name, spec.shape
                    )));
                }
            };
            if let Some(given) = given
                && spec.shape.len() == 1
                && given.len() != 1
            {
                return Err(unsupported(format!(
                    "input '{}' of shape {:?} takes one column, not {} ({})",
                    spec.name,
                    spec.shape,
                    given.len(),
                    given.join(", ")
                )));
            }
            let columns = match (spec.shape.len(), given) {
                (1, Some(given)) => given.clone(),
                _ => columns,
            };
            inputs.push(InputColumns {
                name: spec.name.clone(),
                datatype: spec.datatype,
                columns,
                rank,
            });
        }
        let indices = if wanted.is_empty() {
            (0..signature.outputs.len()).collect()
        } else {
            signature
                .output_indices(Some(wanted))
                .map_err(|message| ScoreError::OutputsArg { message })?
        };
        let mut outputs = Vec::with_capacity(indices.len());
        for index in indices {
            let spec = &signature.outputs[index];
            let columns = match spec.shape.len() {
                0 => {
                    return Err(unsupported(format!(
                        "output '{}' is a scalar, not one value per row",
                        spec.name
                    )));
                }
                1 => vec![spec.name.clone()],
                _ => output_columns(spec, metadata.get(&spec.name))?,
            };
            outputs.push(OutputColumns {
                index,
                name: spec.name.clone(),
                datatype: spec.datatype,
                columns,
            });
        }
        Ok(Mapping {
            inputs,
            outputs,
            fixed_batch,
        })
    }

    /// The model's inputs as `name [shape] ← columns`, for messages.
    pub fn describe_inputs(&self) -> String {
        const SHOWN: usize = 10;
        let mut text = self
            .inputs
            .iter()
            .take(SHOWN)
            .map(|i| {
                if i.columns.len() == 1 && i.columns[0] == i.name {
                    format!("{} ({})", i.name, i.datatype)
                } else {
                    format!("{} ({}) ← {}", i.name, i.datatype, i.columns.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        if self.inputs.len() > SHOWN {
            text.push_str(&format!(
                "; … ({} inputs in all, each from the column of its name)",
                self.inputs.len()
            ));
        }
        text
    }
}

/// Names `width` columns after an output of unknown width, once a batch shows it.
pub fn numbered(name: &str, width: usize) -> Vec<String> {
    (0..width).map(|i| format!("{name}_{i}")).collect()
}

/// The k columns of an `[N, k]` input: given (by `--columns` or the model), or numbered.
fn width_columns(
    spec: &IoSpec,
    given: Option<&Vec<String>>,
    kind: &str,
) -> Result<Vec<String>, ScoreError> {
    let width = spec.shape[1];
    match given {
        Some(list) => {
            if width >= 0 && list.len() as i64 != width {
                return Err(ScoreError::Unsupported {
                    message: format!(
                        "{kind} '{}' of shape {:?} takes {width} columns, but {} are named: {}",
                        spec.name,
                        spec.shape,
                        list.len(),
                        list.join(", ")
                    ),
                });
            }
            Ok(list.clone())
        }
        // `[N, 1]` is one column, named as the input, as `[N]` is.
        None if width == 1 => Ok(vec![spec.name.clone()]),
        None if width > 0 => Ok(numbered(&spec.name, width as usize)),
        None => Err(ScoreError::Unsupported {
            message: format!(
                "{kind} '{}' has shape {:?}: its number of columns is open, so they must be named; \
                 hint: --columns {}=COL1,COL2,… or the model's `{METADATA_KEY}` metadata",
                spec.name, spec.shape, spec.name
            ),
        }),
    }
}

fn output_columns(spec: &IoSpec, given: Option<&Vec<String>>) -> Result<Vec<String>, ScoreError> {
    let width: i64 = spec.shape[1..]
        .iter()
        .try_fold(1i64, |acc, &d| (d >= 0).then_some(acc * d))
        .unwrap_or(-1);
    if let Some(list) = given
        && (width < 0 || list.len() as i64 == width)
    {
        return Ok(list.clone());
    }
    Ok(if width == 1 {
        vec![spec.name.clone()]
    } else if width >= 0 {
        numbered(&spec.name, width as usize)
    } else {
        Vec::new()
    })
}

/// Inputs must agree on their first dimension: all dynamic, or all the same fixed size.
fn batch_dimension(inputs: &[IoSpec]) -> Result<Option<usize>, ScoreError> {
    let mut dims = inputs.iter().map(|s| (s, s.shape.first().copied()));
    let Some((first, first_dim)) = dims.next() else {
        return Err(ScoreError::Unsupported {
            message: "the model has no inputs".into(),
        });
    };
    for (spec, dim) in inputs.iter().map(|s| (s, s.shape.first().copied())) {
        if dim.is_none() {
            return Err(ScoreError::Unsupported {
                message: format!("input '{}' is a scalar, not one value per row", spec.name),
            });
        }
        if dim != first_dim {
            return Err(ScoreError::Unsupported {
                message: format!(
                    "inputs '{}' {:?} and '{}' {:?} differ in their first dimension, so they cannot both be rows of one table",
                    first.name, first.shape, spec.name, spec.shape
                ),
            });
        }
    }
    Ok(match first_dim {
        Some(d) if d > 0 => Some(d as usize),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn io(name: &str, datatype: DataType, shape: &[i64]) -> IoSpec {
        IoSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn sig(inputs: Vec<IoSpec>, outputs: Vec<IoSpec>) -> Signature {
        Signature { inputs, outputs }
    }

    fn args(list: &[&str]) -> ColumnArgs {
        ColumnArgs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn columns_arg_groups_items_after_their_input() {
        let parsed = args(&["x=a,b,c,age=customer_age", "plan=tier"]);
        assert_eq!(parsed.0["x"], vec!["a", "b", "c"]);
        assert_eq!(parsed.0["age"], vec!["customer_age"]);
        assert_eq!(parsed.0["plan"], vec!["tier"]);
        for bad in ["a,b", "x=", "=a", "x=a,,b", "x=a,x=b"] {
            let err = ColumnArgs::parse(&[bad.to_string()]).unwrap_err();
            assert!(matches!(err, ScoreError::ColumnsArg { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn inputs_take_their_own_column_or_the_named_ones() {
        let s = sig(
            vec![
                io("age", DataType::Fp32, &[-1, 1]),
                io("plan", DataType::Bytes, &[-1]),
                io("x", DataType::Fp32, &[-1, 3]),
            ],
            vec![
                io("label", DataType::Int64, &[-1]),
                io("probabilities", DataType::Fp32, &[-1, 2]),
            ],
        );
        let mut meta = BTreeMap::new();
        meta.insert("x".to_string(), vec!["f0".into(), "f1".into(), "f2".into()]);
        meta.insert(
            "probabilities".to_string(),
            vec!["p_stay".into(), "p_churn".into()],
        );
        let m = Mapping::new(&s, &meta, &ColumnArgs::default(), &[]).unwrap();
        assert_eq!(m.inputs[0].columns, vec!["age"]);
        assert_eq!(m.inputs[1].columns, vec!["plan"]);
        assert_eq!(m.inputs[2].columns, vec!["f0", "f1", "f2"]);
        assert_eq!(m.outputs[1].columns, vec!["p_stay", "p_churn"]);
        assert_eq!(m.fixed_batch, None);

        let m = Mapping::new(
            &s,
            &BTreeMap::new(),
            &args(&["x=a,b,c,age=years"]),
            &["probabilities".into()],
        )
        .unwrap();
        assert_eq!(m.inputs[0].columns, vec!["years"]);
        assert_eq!(m.inputs[2].columns, vec!["a", "b", "c"]);
        assert_eq!(m.outputs.len(), 1);
        assert_eq!(
            m.outputs[0].columns,
            vec!["probabilities_0", "probabilities_1"]
        );

        let m = Mapping::new(&s, &BTreeMap::new(), &ColumnArgs::default(), &[]).unwrap();
        assert_eq!(m.inputs[2].columns, vec!["x_0", "x_1", "x_2"]);
    }

    #[test]
    fn wrong_widths_and_unknown_names_are_refused() {
        let s = sig(
            vec![
                io("x", DataType::Fp32, &[-1, 3]),
                io("y", DataType::Fp32, &[-1, -1]),
            ],
            vec![io("out", DataType::Fp32, &[-1])],
        );
        let err = Mapping::new(&s, &BTreeMap::new(), &args(&["x=a,b"]), &[]).unwrap_err();
        assert!(
            err.to_string().contains("takes 3 columns, but 2 are named"),
            "{err}"
        );
        let err = Mapping::new(&s, &BTreeMap::new(), &args(&["x=a,b,c"]), &[]).unwrap_err();
        assert!(err.to_string().contains("--columns y=COL1"), "{err}");
        let err = Mapping::new(&s, &BTreeMap::new(), &args(&["z=a"]), &[]).unwrap_err();
        assert!(err.to_string().contains("no input 'z'"), "{err}");
        let err = Mapping::new(
            &s,
            &BTreeMap::new(),
            &args(&["x=a,b,c", "y=d"]),
            &["nope".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown output 'nope'"), "{err}");
    }

    #[test]
    fn first_dimensions_must_agree() {
        let outputs = vec![io("out", DataType::Fp32, &[-1])];
        let s = sig(
            vec![
                io("a", DataType::Fp32, &[-1]),
                io("b", DataType::Fp32, &[1]),
            ],
            outputs.clone(),
        );
        let err = Mapping::new(&s, &BTreeMap::new(), &ColumnArgs::default(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("differ in their first dimension"),
            "{err}"
        );
        let s = sig(
            vec![
                io("a", DataType::Fp32, &[1, 4]),
                io("b", DataType::Fp32, &[1]),
            ],
            outputs,
        );
        let m = Mapping::new(&s, &BTreeMap::new(), &ColumnArgs::default(), &[]).unwrap();
        assert_eq!(m.fixed_batch, Some(1));
    }
}
