//! Entry points for the fuzz targets in `fuzz/`: not an API (hidden from the docs, free to
//! change). Each runs hostile input through the server's real code and returns `Err` only when
//! an invariant broke; the fuzz target turns that into a crash. Errors the code reports to a
//! client are the expected outcome of most inputs and count as success here.

use super::batch::{RunError, merge_inputs, split_outputs};
use super::model::{HostTensor, IoSpec, Signature, check_tensor};
use super::parse::{
    InferRequest, parse_infer, parse_infer_general, parse_instances, parse_instances_general,
};
use super::tensor::{DataType, OutputView, TensorData};

/// How many model signatures [`infer_v2`] and [`infer_v1`] choose from.
pub const MODELS: usize = 5;

fn io(name: &str, datatype: DataType, shape: &[i64]) -> IoSpec {
    IoSpec {
        name: name.to_string(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// Signatures like the test models': the churn model, every datatype, two inputs, a fixed
/// shape, a scalar and several dynamic axes.
fn model(index: usize) -> Signature {
    let inputs = match index % MODELS {
        0 => vec![io("features", DataType::Fp32, &[-1, 78])],
        1 => DataType::ALL
            .iter()
            .map(|&dt| io(&format!("{}_in", dt.name().to_lowercase()), dt, &[-1, 2]))
            .collect(),
        2 => vec![
            io("a", DataType::Fp32, &[-1, 2]),
            io("b", DataType::Fp32, &[-1, 2]),
        ],
        3 => vec![
            io("X", DataType::Fp16, &[2, 3]),
            io("s", DataType::Fp64, &[]),
        ],
        _ => vec![
            io("X", DataType::Int64, &[-1, -1, 3]),
            io("tokens", DataType::Bytes, &[-1]),
        ],
    };
    let outputs = inputs
        .iter()
        .map(|s| io(&format!("{}_out", s.name), s.datatype, &s.shape))
        .collect();
    Signature { inputs, outputs }
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// A decoded tensor must hold exactly the elements its shape declares, within the limit.
fn check_decoded(
    what: &str,
    shape: &[usize],
    data: &TensorData,
    max_elements: usize,
) -> Result<(), String> {
    let declared = elements(shape).ok_or_else(|| format!("{what}: shape {shape:?} overflows"))?;
    if declared != data.len() {
        return Err(format!(
            "{what}: shape {shape:?} declares {declared} elements but {} were decoded",
            data.len()
        ));
    }
    if declared > max_elements {
        return Err(format!(
            "{what}: {declared} elements passed the limit of {max_elements}"
        ));
    }
    Ok(())
}

/// Element limits [`infer`] chooses from: tiny, usual, and one far beyond what a fuzz input's
/// body could fill, so that buffers sized from a declared shape rather than from the body show.
const LIMITS: [usize; 4] = [16, 4096, 1 << 20, 1 << 26];

/// The `infer` fuzz target's input: byte 0 picks the model, byte 1 the element limit (bits
/// 0-1) and whether the body uses the binary extension (bit 2: then bytes 2-3 are the JSON
/// length, little-endian); the rest is the body, decoded as v2 and, without the extension, v1.
pub fn infer(data: &[u8]) -> Result<(), String> {
    let [model, flags, rest @ ..] = data else {
        return Ok(());
    };
    let model = usize::from(*model);
    let max_elements = LIMITS[usize::from(flags & 3)];
    let (json_length, body) = match (flags & 4 != 0, rest) {
        (true, [lo, hi, body @ ..]) => (Some(usize::from(u16::from_le_bytes([*lo, *hi]))), body),
        _ => (None, rest),
    };
    infer_v2(model, body, json_length, max_elements)?;
    if json_length.is_none() {
        infer_v1(model, body, max_elements)?;
    }
    Ok(())
}

/// `body` as a v2 `infer` request (`json_length`: the binary extension's JSON length) for model
/// `model` (modulo [`MODELS`]): the fast and general readers must agree, decoded tensors must
/// match their shapes and the limit, and the checks against the model must not fail otherwise
/// than with a message.
pub fn infer_v2(
    model_index: usize,
    body: &[u8],
    json_length: Option<usize>,
    max_elements: usize,
) -> Result<(), String> {
    let got = parse_infer(body, json_length, max_elements);
    let general = parse_infer_general(body, json_length, max_elements);
    let (got_text, general_text) = (format!("{got:?}"), format!("{general:?}"));
    if got_text != general_text {
        return Err(format!(
            "the scan and the general parser disagree:\n scan:    {got_text}\n general: {general_text}"
        ));
    }
    let Ok(InferRequest {
        inputs, outputs, ..
    }) = got
    else {
        return Ok(());
    };
    for input in &inputs {
        if input.data.datatype() != input.datatype {
            return Err(format!(
                "input '{}' is declared {} but decoded as {}",
                input.name,
                input.datatype,
                input.data.datatype()
            ));
        }
        check_decoded(&input.name, &input.shape, &input.data, max_elements)?;
    }
    let signature = model(model_index);
    let _ = signature.output_indices(outputs.as_deref());
    if let Ok(checked) = signature.check_inputs(inputs) {
        for (tensor, spec) in checked.iter().zip(&signature.inputs) {
            if tensor.data.datatype() != spec.datatype || tensor.shape.len() != spec.shape.len() {
                return Err(format!(
                    "input '{}' passed the model's checks with {} {:?}",
                    spec.name,
                    tensor.data.datatype(),
                    tensor.shape
                ));
            }
        }
    }
    Ok(())
}

/// `body` as a v1 `predict` request (`instances`) for the first input of model `model`.
pub fn infer_v1(model_index: usize, body: &[u8], max_elements: usize) -> Result<(), String> {
    let signature = model(model_index);
    let Some(spec) = signature.inputs.first() else {
        return Ok(());
    };
    let got = parse_instances(body, spec.datatype, max_elements);
    let general = parse_instances_general(body, spec.datatype, max_elements);
    let (got_text, general_text) = (format!("{got:?}"), format!("{general:?}"));
    if got_text != general_text {
        return Err(format!(
            "the scan and the general parser disagree on instances:\n scan:    {got_text}\n general: {general_text}"
        ));
    }
    if let Ok((shape, data)) = got {
        check_decoded("instances", &shape, &data, max_elements)?;
        let _ = check_tensor(spec, &shape, spec.datatype);
    }
    Ok(())
}

/// One request of a batch: its rows and which outputs it asks for (indices into the inputs,
/// taken modulo their number), in that order.
#[derive(Clone, Debug)]
pub struct BatchJob {
    pub rows: usize,
    pub outputs: Vec<usize>,
}

/// Requests for one model whose inputs have the datatypes `datatypes` (indices, modulo 13) and
/// the dimensions `inner` after the first, and a model that returns its inputs unchanged:
/// merged and split back, each request must get its own rows exactly. With `extra_row`, the
/// model returns one row too many, which must be refused, not split.
#[derive(Clone, Debug)]
pub struct BatchCase {
    pub datatypes: Vec<u8>,
    pub inner: Vec<Vec<usize>>,
    pub jobs: Vec<BatchJob>,
    pub extra_row: bool,
}

/// Keeps a case small enough to run thousands of times a second.
const MAX_BATCH_ELEMENTS: usize = 1 << 16;

/// A value that says which job, element and datatype it came from, so a row delivered to the
/// wrong request shows.
fn fill(datatype: DataType, job: usize, len: usize) -> TensorData {
    let code = |k: usize| (job * 1_000 + k) as i64;
    match datatype {
        DataType::Bool => TensorData::Bool((0..len).map(|k| (job + k).is_multiple_of(3)).collect()),
        DataType::Uint8 => TensorData::Uint8((0..len).map(|k| code(k) as u8).collect()),
        DataType::Uint16 => TensorData::Uint16((0..len).map(|k| code(k) as u16).collect()),
        DataType::Uint32 => TensorData::Uint32((0..len).map(|k| code(k) as u32).collect()),
        DataType::Uint64 => TensorData::Uint64((0..len).map(|k| code(k) as u64).collect()),
        DataType::Int8 => TensorData::Int8((0..len).map(|k| code(k) as i8).collect()),
        DataType::Int16 => TensorData::Int16((0..len).map(|k| code(k) as i16).collect()),
        DataType::Int32 => TensorData::Int32((0..len).map(|k| -(code(k) as i32)).collect()),
        DataType::Int64 => TensorData::Int64((0..len).map(|k| -code(k)).collect()),
        DataType::Fp16 => TensorData::Fp16(
            (0..len)
                .map(|k| half::f16::from_f32((code(k) % 2048) as f32))
                .collect(),
        ),
        DataType::Fp32 => TensorData::Fp32((0..len).map(|k| code(k) as f32 * 0.5).collect()),
        DataType::Fp64 => TensorData::Fp64((0..len).map(|k| code(k) as f64 * 0.25).collect()),
        DataType::Bytes => TensorData::Bytes((0..len).map(|k| format!("{job}:{k}")).collect()),
    }
}

/// Merges `case`'s requests into one batch, runs the identity model on it and splits the
/// outputs back: each request must get exactly the rows it sent, for the outputs it asked for.
pub fn batch_round_trip(case: &BatchCase) -> Result<(), String> {
    let inputs = case.datatypes.len().min(case.inner.len());
    if inputs == 0 || case.jobs.is_empty() {
        return Ok(());
    }
    let datatypes: Vec<DataType> = case.datatypes[..inputs]
        .iter()
        .map(|&d| DataType::ALL[usize::from(d) % DataType::ALL.len()])
        .collect();
    let row_lens: Vec<usize> = case.inner[..inputs]
        .iter()
        .map(|dims| elements(dims).unwrap_or(usize::MAX))
        .collect();
    let total_rows = case
        .jobs
        .iter()
        .try_fold(0usize, |n, job| n.checked_add(job.rows));
    let fits = total_rows.is_some_and(|rows| {
        row_lens.iter().all(|&len| {
            rows.checked_mul(len)
                .is_some_and(|n| n <= MAX_BATCH_ELEMENTS)
        })
    });
    if !fits {
        return Ok(());
    }

    let jobs: Vec<Vec<HostTensor>> = case
        .jobs
        .iter()
        .enumerate()
        .map(|(j, job)| {
            (0..inputs)
                .map(|i| {
                    let mut shape = vec![job.rows];
                    shape.extend(&case.inner[i]);
                    HostTensor {
                        data: fill(datatypes[i], j, job.rows * row_lens[i]),
                        shape,
                    }
                })
                .collect()
        })
        .collect();
    let rows: Vec<usize> = case.jobs.iter().map(|j| j.rows).collect();
    let wanted: Vec<Vec<usize>> = case
        .jobs
        .iter()
        .map(|j| j.outputs.iter().map(|&o| o % inputs).collect())
        .collect();
    let job_inputs: Vec<&[HostTensor]> = jobs.iter().map(Vec::as_slice).collect();
    let merged = merge_inputs(&job_inputs, &rows)?;
    let total: usize = rows.iter().sum();
    for (i, tensor) in merged.iter().enumerate() {
        if tensor.shape.first() != Some(&total) || tensor.data.len() != total * row_lens[i] {
            return Err(format!(
                "merged input {i} has shape {:?} and {} elements for {total} rows",
                tensor.shape,
                tensor.data.len()
            ));
        }
    }

    let mut outputs = merged;
    if case.extra_row {
        for (i, tensor) in outputs.iter_mut().enumerate() {
            tensor.shape[0] += 1;
            // Values from a request that does not exist, so they show if delivered.
            let extra = fill(datatypes[i], jobs.len(), row_lens[i]);
            tensor
                .data
                .extend_from(&extra)
                .map_err(|e| format!("extending output {i}: {e}"))?;
        }
    }
    let views: Vec<(Vec<usize>, OutputView<'_>)> = outputs
        .iter()
        .map(|t| (t.shape.clone(), OutputView::of(&t.data)))
        .collect();
    let wanted_refs: Vec<&[usize]> = wanted.iter().map(Vec::as_slice).collect();
    let split = match split_outputs(&views, &rows, &wanted_refs) {
        Ok(split) if case.extra_row => {
            return Err(format!(
                "outputs with {} rows for {total} were split: {split:?}",
                total + 1
            ));
        }
        Ok(split) => split,
        Err(RunError::NotPerRow(_)) if case.extra_row => return Ok(()),
        Err(RunError::NotPerRow(reason) | RunError::Failed(reason)) => return Err(reason),
    };

    if split.len() != jobs.len() {
        return Err(format!(
            "{} requests got {} answers",
            jobs.len(),
            split.len()
        ));
    }
    for (j, ((sent, asked), got)) in jobs.iter().zip(&wanted).zip(&split).enumerate() {
        let got_indices: Vec<usize> = got.iter().map(|(o, _)| *o).collect();
        if &got_indices != asked {
            return Err(format!(
                "request {j} asked for outputs {asked:?} and got {got_indices:?}"
            ));
        }
        for (o, tensor) in got {
            if tensor != &sent[*o] {
                return Err(format!(
                    "request {j}, output {o}: sent {:?}, got back {tensor:?}",
                    sent[*o]
                ));
            }
        }
    }
    Ok(())
}
