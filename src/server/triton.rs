//! Triton's model configuration and statistics extensions, which Triton's clients and
//! perf_analyzer ask for: `GET /v2/models/{m}[/versions/{v}]/config` (the model as Triton's
//! `model_config.proto` describes one, in its JSON form) and
//! `GET /v2/models[/{m}[/versions/{v}]]/stats` (see `stats`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::config::{BatchingConfig, Device};
use super::http::{ApiError, find_model, ok_json};
use super::model::{IoSpec, Signature};
use super::stats::Snapshot;
use super::tensor::DataType;

/// The extensions these endpoints implement, for the server metadata.
pub(crate) const EXTENSIONS: [&str; 2] = ["model_configuration", "statistics"];

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/models/{model}/config", get(config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        // A static segment wins over `{model}`, as in Triton: `stats` is the list of all models.
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(version_stats),
        )
}

async fn config(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    config_response(&state, &model, None)
}

async fn version_config(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    config_response(&state, &model, Some(&version))
}

fn config_response(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match find_model(state, model, version) {
        Ok(model) => ok_json(model.described().triton_config.clone()),
        Err(e) => e.response(),
    }
}

async fn all_stats(State(state): State<Arc<AppState>>) -> Response {
    let mut models: Vec<_> = state.models.values().collect();
    models.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    stats_response(
        models
            .into_iter()
            .map(|m| m.stats.snapshot(&m.name, &m.version))
            .collect(),
    )
}

async fn stats(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    model_stats_response(&state, &model, None)
}

async fn version_stats(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_stats_response(&state, &model, Some(&version))
}

fn model_stats_response(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match find_model(state, model, version) {
        Ok(m) => stats_response(vec![m.stats.snapshot(&m.name, &m.version)]),
        Err(e) => e.response(),
    }
}

fn stats_response(model_stats: Vec<Snapshot<'_>>) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        model_stats: Vec<Snapshot<'a>>,
    }
    match serde_json::to_vec(&Body { model_stats }) {
        Ok(body) => ok_json(body),
        Err(e) => ApiError::internal(format!("encoding the statistics: {e}")).response(),
    }
}

/// Triton's name for a datatype (`TYPE_FP32`); BYTES is Triton's `TYPE_STRING`.
fn triton_type(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "TYPE_BOOL",
        DataType::Uint8 => "TYPE_UINT8",
        DataType::Uint16 => "TYPE_UINT16",
        DataType::Uint32 => "TYPE_UINT32",
        DataType::Uint64 => "TYPE_UINT64",
        DataType::Int8 => "TYPE_INT8",
        DataType::Int16 => "TYPE_INT16",
        DataType::Int32 => "TYPE_INT32",
        DataType::Int64 => "TYPE_INT64",
        DataType::Fp16 => "TYPE_FP16",
        DataType::Fp32 => "TYPE_FP32",
        DataType::Fp64 => "TYPE_FP64",
        DataType::Bytes => "TYPE_STRING",
    }
}

/// What the config describes beyond the signature.
pub(crate) struct Described<'a> {
    pub name: &'a str,
    pub signature: &'a Signature,
    /// The batching in effect: configured, and possible for this model.
    pub batching: Option<BatchingConfig>,
    pub device: Device,
    /// Each runs its own sessions: an instance group each, in Triton's terms.
    pub variants: &'a [&'a str],
    /// Sessions per variant and ONNX Runtime threads per session.
    pub instances: (usize, usize),
}

/// The model's configuration as Triton writes it. With batching, `max_batch_size` is the
/// largest merged batch and every `dims` leaves out the batch axis, as Triton's do; without,
/// `max_batch_size` is 0 and `dims` are the whole shape.
pub(crate) fn model_config(model: &Described<'_>) -> Value {
    let dims = |spec: &IoSpec| -> Vec<i64> {
        let skip = usize::from(model.batching.is_some());
        spec.shape.iter().skip(skip).copied().collect()
    };
    let inputs: Vec<Value> = model
        .signature
        .inputs
        .iter()
        .map(|spec| {
            json!({
                "name": spec.name,
                "data_type": triton_type(spec.datatype),
                "format": "FORMAT_NONE",
                "dims": dims(spec),
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": false,
            })
        })
        .collect();
    let outputs: Vec<Value> = model
        .signature
        .outputs
        .iter()
        .map(|spec| {
            json!({
                "name": spec.name,
                "data_type": triton_type(spec.datatype),
                "dims": dims(spec),
                "label_filename": "",
                "is_shape_tensor": false,
            })
        })
        .collect();
    let (kind, gpus) = match model.device {
        Device::Cpu => ("KIND_CPU", json!([])),
        // The CUDA execution provider is created for the first GPU.
        Device::Cuda => ("KIND_GPU", json!([0])),
    };
    let instance_group: Vec<Value> = model
        .variants
        .iter()
        .map(|variant| {
            json!({
                "name": variant,
                "kind": kind,
                "count": model.instances.0,
                "gpus": gpus,
                "secondary_devices": [],
                "profile": [],
                "passive": false,
                "host_policy": "",
            })
        })
        .collect();
    let mut config = json!({
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": model.batching.map_or(0, |b| b.max_batch_size),
        "input": inputs,
        "output": outputs,
        "batch_input": [],
        "batch_output": [],
        "instance_group": instance_group,
        // The key Triton's onnxruntime backend reads for the same setting.
        "parameters": {"intra_op_thread_count": {"string_value": model.instances.1.to_string()}},
        "model_warmup": [],
        "model_transaction_policy": {"decoupled": false},
    });
    if let (Some(batching), Some(fields)) = (model.batching, config.as_object_mut()) {
        // Ferry has no preferred sizes: a batch runs when full, when no other request is on
        // its way, or at the latest after the delay; Triton without preferred sizes likewise
        // forms the largest batch it can.
        fields.insert(
            "dynamic_batching".into(),
            json!({
                "preferred_batch_size": [],
                "max_queue_delay_microseconds": batching.max_delay_ms.saturating_mul(1000),
                "preserve_ordering": false,
            }),
        );
    }
    config
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

    fn churn() -> Signature {
        Signature {
            inputs: vec![spec("features", DataType::Fp32, &[-1, 78])],
            outputs: vec![
                spec("label", DataType::Int64, &[-1]),
                spec("probabilities", DataType::Fp32, &[-1, 2]),
            ],
        }
    }

    #[test]
    fn a_batching_model_has_triton_dims_without_the_batch_axis() {
        let signature = churn();
        let config = model_config(&Described {
            name: "churn",
            signature: &signature,
            batching: Some(BatchingConfig {
                max_batch_size: 64,
                max_delay_ms: 2,
            }),
            device: Device::Cpu,
            variants: &["main", "b"],
            instances: (1, 1),
        });
        assert_eq!(
            config,
            json!({
                "name": "churn",
                "platform": "onnxruntime_onnx",
                "backend": "onnxruntime",
                "max_batch_size": 64,
                "input": [{"name": "features", "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
                    "dims": [78], "is_shape_tensor": false, "allow_ragged_batch": false,
                    "optional": false}],
                "output": [
                    {"name": "label", "data_type": "TYPE_INT64", "dims": [],
                        "label_filename": "", "is_shape_tensor": false},
                    {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2],
                        "label_filename": "", "is_shape_tensor": false}
                ],
                "batch_input": [],
                "batch_output": [],
                "dynamic_batching": {"preferred_batch_size": [],
                    "max_queue_delay_microseconds": 2000, "preserve_ordering": false},
                "instance_group": [
                    {"name": "main", "kind": "KIND_CPU", "count": 1, "gpus": [],
                        "secondary_devices": [], "profile": [], "passive": false, "host_policy": ""},
                    {"name": "b", "kind": "KIND_CPU", "count": 1, "gpus": [],
                        "secondary_devices": [], "profile": [], "passive": false, "host_policy": ""}
                ],
                "parameters": {"intra_op_thread_count": {"string_value": "1"}},
                "model_warmup": [],
                "model_transaction_policy": {"decoupled": false}
            })
        );
    }

    #[test]
    fn without_batching_dims_are_the_whole_shape() {
        let signature = Signature {
            inputs: vec![
                spec("text", DataType::Bytes, &[2, -1]),
                spec("flag", DataType::Bool, &[]),
            ],
            outputs: vec![spec("y", DataType::Fp16, &[2, -1, 3])],
        };
        let config = model_config(&Described {
            name: "fixed",
            signature: &signature,
            batching: None,
            device: Device::Cuda,
            variants: &["main"],
            instances: (1, 1),
        });
        assert_eq!(config["max_batch_size"], 0);
        assert!(config.get("dynamic_batching").is_none(), "{config}");
        assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
        assert_eq!(config["input"][0]["dims"], json!([2, -1]));
        assert_eq!(config["input"][1]["data_type"], "TYPE_BOOL");
        assert_eq!(config["input"][1]["dims"], json!([]));
        assert_eq!(config["output"][0]["data_type"], "TYPE_FP16");
        assert_eq!(config["output"][0]["dims"], json!([2, -1, 3]));
        assert_eq!(config["instance_group"][0]["kind"], "KIND_GPU");
        assert_eq!(config["instance_group"][0]["gpus"], json!([0]));
    }

    #[test]
    fn every_datatype_has_its_triton_name() {
        for (datatype, name) in [
            (DataType::Bool, "TYPE_BOOL"),
            (DataType::Uint8, "TYPE_UINT8"),
            (DataType::Uint16, "TYPE_UINT16"),
            (DataType::Uint32, "TYPE_UINT32"),
            (DataType::Uint64, "TYPE_UINT64"),
            (DataType::Int8, "TYPE_INT8"),
            (DataType::Int16, "TYPE_INT16"),
            (DataType::Int32, "TYPE_INT32"),
            (DataType::Int64, "TYPE_INT64"),
            (DataType::Fp16, "TYPE_FP16"),
            (DataType::Fp32, "TYPE_FP32"),
            (DataType::Fp64, "TYPE_FP64"),
            (DataType::Bytes, "TYPE_STRING"),
        ] {
            assert_eq!(triton_type(datatype), name);
        }
    }

    #[test]
    fn statistics_have_tritons_shape() {
        use super::super::stats::{Execution, ModelStats};
        let stats = ModelStats::new(true);
        stats.executed(
            &Execution {
                compute_input: std::time::Duration::from_nanos(10),
                compute_infer: std::time::Duration::from_nanos(100),
                compute_output: std::time::Duration::from_nanos(1),
            },
            &[(4, std::time::Duration::from_nanos(7))],
        );
        stats.request_done(true, std::time::Duration::from_nanos(500));
        let json = serde_json::to_value(stats.snapshot("churn", "1")).unwrap();
        let last = json["last_inference"].as_u64().unwrap();
        assert!(last > 0);
        let d = |count: u64, ns: u64| json!({"count": count, "ns": ns});
        assert_eq!(
            json,
            json!({
                "name": "churn",
                "version": "1",
                "last_inference": last,
                "inference_count": 4,
                "execution_count": 1,
                "inference_stats": {
                    "success": d(1, 500),
                    "fail": d(0, 0),
                    "queue": d(1, 7),
                    "compute_input": d(1, 10),
                    "compute_infer": d(1, 100),
                    "compute_output": d(1, 1),
                    "cache_hit": d(0, 0),
                    "cache_miss": d(0, 0)
                },
                "response_stats": {},
                "batch_stats": [{
                    "batch_size": 4,
                    "compute_input": d(1, 10),
                    "compute_infer": d(1, 100),
                    "compute_output": d(1, 1)
                }],
                "memory_usage": []
            })
        );
    }
}
