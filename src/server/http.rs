//! The HTTP surface: Open Inference Protocol v2 REST (with the binary tensor data extension),
//! KServe v1 `predict`, `/metrics`; Triton's config and statistics endpoints are in `triton`.
//!
//! Handlers are plain functions over the shared state with no middleware stack; limits (body
//! size, timeout, queue) are enforced inline so each refusal gets its own status and message.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use futures_util::StreamExt;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use tokio::sync::oneshot;

use super::batch::{Job, JobQueue, queue_full};
use super::exposition::{self, Format};
use super::live::Live;
use super::model::{HostTensor, IoSpec, check_tensor, pick_variant};
use super::parse::{InferRequest, parse_infer, parse_instances};
use super::recording::Recording;
use super::tensor::{Nested, TensorData};
use super::{AppState, Model, RuntimeLimits, Variant};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
/// Header naming the variant that answered.
pub const VARIANT_HEADER: &str = "x-ferry-variant";
/// As a header name: inserting one made from a `&str` copies the name into a new allocation on
/// every answer.
const VARIANT_NAME: HeaderName = HeaderName::from_static(VARIANT_HEADER);
/// The binary tensor data extension: how many bytes at the start of the body are JSON (the rest
/// is raw tensor data), in requests and answers.
pub(crate) const JSON_LENGTH_HEADER: &str = "inference-header-content-length";
const JSON_LENGTH_NAME: HeaderName = HeaderName::from_static(JSON_LENGTH_HEADER);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/models/{model}/infer", axum::routing::post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            axum::routing::post(infer_version),
        )
        // `{model}` takes the whole segment, so `churn:predict` arrives here as one name.
        .route("/v1/models/{model}", get(v1_model).post(v1_predict))
        .route("/metrics", get(metrics))
        .merge(super::triton::routes())
        .merge(super::repository::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// A refusal: its status and the message for `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub(crate) fn response(&self) -> Response {
        self.answer().into_response()
    }

    fn answer(&self) -> Answer {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        Answer {
            status: self.status,
            body: serde_json::to_vec(&Body {
                error: &self.message,
            })
            .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec()),
            json_length: None,
            variant: None,
        }
    }
}

pub(crate) fn ok_json(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

async fn live() -> Response {
    ok_json(r#"{"live":true}"#)
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .response();
    }
    ok_json(r#"{"ready":true}"#)
}

async fn server_metadata(State(state): State<Arc<AppState>>) -> Response {
    ok_json(state.server_metadata.clone())
}

pub(crate) fn find_model<'s>(
    state: &'s AppState,
    name: &str,
    version: Option<&str>,
) -> Result<&'s Model, ApiError> {
    let Some(model) = state.models.get(name) else {
        let mut known: Vec<&str> = state.models.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown model '{name}'; this server serves: {}",
                known.join(", ")
            ),
        ));
    };
    if let Some(version) = version
        && version != model.version
        && version
            .strip_prefix("sha256:")
            .is_none_or(|sha| model.variant_with_sha(sha).is_none())
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model '{name}' has no version '{version}'; its version is '{}'",
                model.version
            ),
        ));
    }
    Ok(model)
}

async fn model_metadata(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    metadata_response(&state, &model, None)
}

async fn model_version_metadata(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata_response(&state, &model, Some(&version))
}

fn metadata_response(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match find_model(state, model, version) {
        Ok(model) => ok_json(model.described().metadata.clone()),
        Err(e) => e.response(),
    }
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    ready_response(&state, &model, None)
}

async fn model_version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    ready_response(&state, &model, Some(&version))
}

fn ready_response(state: &AppState, model: &str, version: Option<&str>) -> Response {
    let model = match find_model(state, model, version) {
        Ok(model) => model,
        Err(e) => return e.response(),
    };
    if state.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "model '{}' is not ready: the server is shutting down",
                model.name
            ),
        )
        .response();
    }
    if !model.is_loaded() {
        return unloaded(&model.name).response();
    }
    ok_json(serde_json::json!({"name": model.name, "ready": true}).to_string())
}

fn unloaded(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "model '{model}' is unloaded; load it with POST /v2/repository/models/{model}/load"
        ),
    )
}

async fn v1_model(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match find_model(&state, &model, None) {
        Ok(model) => ok_json(
            serde_json::json!({"name": model.name, "ready": model.is_loaded() && !state.is_shutting_down()})
                .to_string(),
        ),
        Err(e) => e.response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let mut families = state.metrics.families();
    if let Some(traffic) = &state.traffic {
        families.push(traffic.family());
    }
    let text = exposition::encode(&families, format);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

async fn no_route(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
    .response()
}

async fn wrong_method(request: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .response()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    V2,
    V1,
}

// The handlers take the whole request rather than a `HeaderMap`, which axum would clone.
async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    let call = Call::of(request, &state.key_header);
    serve_inference(&state, &model, None, call, Protocol::V2)
        .await
        .into_response()
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    let call = Call::of(request, &state.key_header);
    serve_inference(&state, &model, Some(&version), call, Protocol::V2)
        .await
        .into_response()
}

async fn v1_predict(
    State(state): State<Arc<AppState>>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    let Some(model) = target.strip_suffix(":predict") else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: POST /v1/models/{target}; use /v1/models/{{model}}:predict"),
        )
        .response();
    };
    let call = Call::of(request, &state.key_header);
    serve_inference(&state, model, None, call, Protocol::V1)
        .await
        .into_response()
}

/// An inference request as its handler reads it, whoever read it off the connection: the two
/// headers it looks at and the body. Plain requests (`super::h1`) give slices of the bytes they
/// read, without a `Request`, a header map or a boxed body being made of them.
pub(crate) struct Call {
    /// The value of the variant key header (`variant_key_header`), if sent.
    pub(crate) key: Option<Bytes>,
    /// `Inference-Header-Content-Length`, if sent.
    pub(crate) json_length: Option<Bytes>,
    pub(crate) body: CallBody,
}

pub(crate) enum CallBody {
    /// All of it, already read.
    Whole(Bytes),
    /// Still arriving, with the `Content-Length` the request declared.
    Streamed { body: Body, declared: Option<u64> },
}

impl Call {
    /// The call a request read by hyper makes. Its head is dropped here: its bytes are slices of
    /// the connection's read buffer, which the connection can reuse only once nothing holds them.
    pub(crate) fn of(request: Request, key_header: &HeaderName) -> Call {
        let (parts, body) = request.into_parts();
        let copy = |value: &HeaderValue| Bytes::copy_from_slice(value.as_bytes());
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Call {
            key: parts.headers.get(key_header).map(copy),
            json_length: parts.headers.get(JSON_LENGTH_HEADER).map(copy),
            body: CallBody::Streamed { body, declared },
        }
    }
}

/// An inference answer, before it is a `Response` (hyper's path) or bytes on the wire
/// (`super::h1`).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    /// With outputs in the binary part: how many bytes at the start of the body are JSON.
    pub(crate) json_length: Option<usize>,
    /// The variant that answered, once one was chosen.
    pub(crate) variant: Option<HeaderValue>,
}

impl Answer {
    /// Its headers but `Content-Length`, in the order hyper's path writes them.
    pub(crate) fn headers(&self, mut each: impl FnMut(&HeaderName, &HeaderValue)) {
        match self.json_length {
            None => each(&CONTENT_TYPE, &JSON),
            Some(length) => {
                each(&CONTENT_TYPE, &OCTET_STREAM);
                each(&JSON_LENGTH_NAME, &HeaderValue::from(length));
            }
        }
        if let Some(variant) = &self.variant {
            each(&VARIANT_NAME, variant);
        }
    }

    pub(crate) fn into_response(mut self) -> Response {
        let mut response = Response::new(Body::from(std::mem::take(&mut self.body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        self.headers(|name, value| {
            headers.insert(name.clone(), value.clone());
        });
        response
    }
}

pub(crate) async fn serve_inference(
    state: &Arc<AppState>,
    model_name: &str,
    version: Option<&str>,
    call: Call,
    protocol: Protocol,
) -> Answer {
    let started = Instant::now();
    let Call {
        key,
        json_length,
        body,
    } = call;
    let model = match find_model(state, model_name, version) {
        Ok(model) => model,
        Err(e) => {
            let known = state.models.get(model_name).map(|m| m.name.as_str());
            state.metrics.unrouted(known, e.status.as_u16());
            return e.answer();
        }
    };
    // A `sha256:…` version names the file that answers; otherwise the weights choose.
    let pinned = version
        .and_then(|v| v.strip_prefix("sha256:"))
        .and_then(|sha| model.variant_with_sha(sha));
    let index = pinned.unwrap_or_else(|| pick_variant(&model.weights, key.as_deref()));
    let variant = &model.variants[index];
    // Held to the end: a swap meanwhile lets this request finish where it started.
    let Some(live) = variant.live() else {
        state.metrics.unrouted(Some(&model.name), 503);
        return unloaded(&model.name).answer();
    };
    let outcome = run_inference(
        state,
        model,
        variant,
        &live,
        json_length,
        body,
        protocol,
        started,
    )
    .await;
    let mut answer = match outcome {
        Ok(reply) => Answer {
            status: StatusCode::OK,
            body: reply.body,
            json_length: reply.json_length,
            variant: None,
        },
        Err(e) => e.answer(),
    };
    answer.variant = Some(variant.header.clone());
    let took = started.elapsed();
    live.metrics
        .request_done(answer.status.as_u16(), took.as_secs_f64());
    model
        .stats
        .request_done(answer.status == StatusCode::OK, took);
    answer
}

/// Counts a request as pending for its variant until it is queued or refused.
struct Pending<'a>(Option<&'a JobQueue>);

impl<'a> Pending<'a> {
    fn start(queue: &'a JobQueue) -> Pending<'a> {
        queue.start_pending();
        Pending(Some(queue))
    }

    fn done(&mut self) {
        if let Some(queue) = self.0.take() {
            queue.end_pending();
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// A successful answer: JSON, or with `json_length`, JSON followed by binary tensor data.
struct Reply {
    body: Vec<u8>,
    json_length: Option<usize>,
}

/// The `Inference-Header-Content-Length` of a request, if it has one.
fn json_length(value: Option<&[u8]>) -> Result<Option<usize>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Inference-Header-Content-Length must be a number of bytes, not {:?}",
                String::from_utf8_lossy(value)
            ))
        })
}

/// Which outputs (by index in the model's outputs) go in the binary part: an output's own
/// `parameters.binary_data` if it has one, else the request's `binary_data_output`; an output
/// past the end of the list does not.
fn binary_outputs(specs: &[IoSpec], request: &InferRequest) -> Vec<bool> {
    // None in the binary part, nearly always: an empty list says so without an allocation.
    if !request.binary_output && !request.output_binary.contains(&Some(true)) {
        return Vec::new();
    }
    let mut binary = vec![request.binary_output; specs.len()];
    if let Some(names) = &request.outputs {
        // Reversed, so that an output named twice keeps its first setting.
        for (name, flag) in names.iter().zip(&request.output_binary).rev() {
            if let (Some(flag), Some(i)) = (flag, specs.iter().position(|s| &s.name == name)) {
                binary[i] = *flag;
            }
        }
    }
    binary
}

/// `future`'s output, or `None` once `deadline` has passed. The timer is set only when the
/// future has to wait: a timer the runtime's clock has not seen yet wakes its thread to look
/// at it, which for a request answered at once cost more than the rest of the timeout.
async fn by_deadline<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        if timer.is_none() {
            timer
                .as_mut()
                .set(Some(tokio::time::sleep_until(deadline.into())));
        }
        match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

fn timed_out(model: &Model, limits: &RuntimeLimits) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "model '{}' did not answer within the request timeout of {} ms",
            model.name,
            limits.request_timeout.as_millis()
        ),
    )
}

/// Reads, checks, queues and answers one inference request; within the request timeout,
/// counted from `started`, or a 408.
#[allow(clippy::too_many_arguments)]
async fn run_inference(
    state: &Arc<AppState>,
    model: &Model,
    variant: &Variant,
    live: &Live,
    json_length_header: Option<Bytes>,
    body: CallBody,
    protocol: Protocol,
    started: Instant,
) -> Result<Reply, ApiError> {
    let limits = &state.limits;
    let deadline = started + limits.request_timeout;
    let mut pending = Pending::start(&live.queue);
    let json_length = match protocol {
        Protocol::V2 => json_length(json_length_header.as_deref())?,
        Protocol::V1 => None,
    };
    let bytes = match body {
        CallBody::Whole(bytes) => bytes,
        CallBody::Streamed { body, declared } => {
            let reading = read_body(body, declared, limits.max_body_bytes);
            by_deadline(deadline, reading)
                .await
                .ok_or_else(|| timed_out(model, limits))??
        }
    };
    let signature = &live.signature;
    let (inputs, outputs, id, binary) = match protocol {
        Protocol::V2 => {
            let request = parse_infer(&bytes, json_length, limits.max_elements)
                .map_err(ApiError::bad_request)?;
            let outputs = signature
                .output_indices(request.outputs.as_deref())
                .map_err(ApiError::bad_request)?;
            let binary = binary_outputs(&signature.outputs, &request);
            let inputs = signature
                .check_inputs(request.inputs)
                .map_err(ApiError::bad_request)?;
            (inputs, outputs, request.id, binary)
        }
        Protocol::V1 => {
            let [spec] = signature.inputs.as_slice() else {
                return Err(ApiError::bad_request(format!(
                    "v1 predict needs a model with one input, and '{}' has {} ({}); use POST /v2/models/{}/infer",
                    model.name,
                    signature.inputs.len(),
                    signature.input_names(),
                    model.name
                )));
            };
            let (shape, data) = parse_instances(&bytes, spec.datatype, limits.max_elements)
                .map_err(ApiError::bad_request)?;
            check_tensor(spec, &shape, spec.datatype)
                .map_err(|m| ApiError::bad_request(format!("instances: {m}")))?;
            let outputs = (0..signature.outputs.len()).collect();
            (vec![HostTensor { shape, data }], outputs, None, Vec::new())
        }
    };
    drop(bytes);

    let rows = if live.mergeable {
        let first = inputs.first().and_then(|t| t.shape.first().copied());
        inputs
            .iter()
            .all(|t| t.shape.first().copied() == first)
            .then_some(first)
            .flatten()
    } else {
        None
    };
    if queue_full(&live.metrics, limits.max_queue) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "model '{}' (variant '{}') already has {} requests queued; retry later",
                model.name, variant.name, limits.max_queue
            ),
        ));
    }
    let (reply, answer) = oneshot::channel();
    // Not pending once queued: the worker must not wait for a request it already has.
    pending.done();
    // The first request answered is kept to warm a replacement model with.
    let sample = variant.wants_sample().then(|| inputs.clone());
    let recording = Recording::start(state, model, &signature.inputs, &inputs, rows);
    let job = Job {
        inputs,
        rows,
        outputs,
        reply,
        enqueued: Instant::now(),
    };
    if live.queue.push(job, true) {
        // A light model: once the other requests this thread has received are queued too,
        // what is queued runs here, unless a worker or another handler has run it meanwhile.
        tokio::task::yield_now().await;
        live.engine.lead(|| !answer.is_empty());
    }
    let result = by_deadline(deadline, answer)
        .await
        .ok_or_else(|| timed_out(model, limits))?
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the inference worker of model '{}' stopped", model.name),
            )
        })?;
    let outputs = result.map_err(|m| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m))?;
    if let Some(sample) = sample {
        variant.keep_sample(sample);
    }
    recording.finish(
        state,
        model,
        variant,
        live,
        id.as_deref(),
        started,
        &outputs,
    );
    match protocol {
        Protocol::V2 => v2_response(model, &signature.outputs, id.as_deref(), &outputs, &binary),
        Protocol::V1 => Ok(Reply {
            body: v1_response(&signature.outputs, &outputs)?,
            json_length: None,
        }),
    }
}

#[derive(Serialize)]
struct V2Response<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: V2Outputs<'a>,
}

#[derive(Serialize)]
struct V2Output<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    /// Only for an output in the binary part, which has no `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// The v2 answer; with any output in the binary part (`binary`, by output index), the JSON is
/// followed by their binary data, in the order of `outputs`.
fn v2_response(
    model: &Model,
    specs: &[IoSpec],
    id: Option<&str>,
    outputs: &[(usize, HostTensor)],
    binary: &[bool],
) -> Result<Reply, ApiError> {
    let in_binary = |i: usize| binary.get(i).copied().unwrap_or(false);
    let response = V2Response {
        model_name: &model.name,
        model_version: &model.version,
        id,
        outputs: V2Outputs {
            specs,
            outputs,
            binary,
        },
    };
    let binary_size: usize = outputs
        .iter()
        .filter(|(i, _)| in_binary(*i))
        .map(|(_, t)| t.data.binary_size())
        .sum();
    if !outputs.iter().any(|(i, _)| in_binary(*i)) {
        return Ok(Reply {
            body: model.answer.write(id, outputs)?,
            json_length: None,
        });
    }
    let mut body = Vec::with_capacity(256 + outputs.len() * 128 + binary_size);
    write_json(&mut body, &response)?;
    let json_length = body.len();
    for (i, tensor) in outputs {
        if in_binary(*i) {
            tensor.data.write_binary(&mut body).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding the response: {}", e.0),
                )
            })?;
        }
    }
    Ok(Reply {
        body,
        json_length: Some(json_length),
    })
}

/// A model's v2 answer with the parts that never change (its name and version, each output's
/// name) written out once, at load: escaping and serializing those again for every request was
/// a third of the cost of an answer. What it writes is byte for byte what serializing
/// [`V2Response`] writes.
pub(crate) struct AnswerTemplate {
    /// `{"model_name":…,"model_version":…`
    head: Vec<u8>,
    /// Per output of the model: `{"name":…,"datatype":"`
    outputs: Vec<Vec<u8>>,
}

impl AnswerTemplate {
    pub(crate) fn new(name: &str, version: &str, outputs: &[IoSpec]) -> AnswerTemplate {
        let string = |s: &str| serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec());
        let mut head = b"{\"model_name\":".to_vec();
        head.extend(string(name));
        head.extend_from_slice(b",\"model_version\":");
        head.extend(string(version));
        let outputs = outputs
            .iter()
            .map(|spec| {
                let mut part = b"{\"name\":".to_vec();
                part.extend(string(&spec.name));
                part.extend_from_slice(b",\"datatype\":\"");
                part
            })
            .collect();
        AnswerTemplate { head, outputs }
    }

    /// The JSON answer with `outputs` (by output index, none in the binary part).
    fn write(
        &self,
        id: Option<&str>,
        outputs: &[(usize, HostTensor)],
    ) -> Result<Vec<u8>, ApiError> {
        let estimate = 128
            + self.head.len()
            + outputs
                .iter()
                .map(|(_, t)| 64 + t.data.len() * 12)
                .sum::<usize>();
        let mut body = Vec::with_capacity(estimate);
        body.extend_from_slice(&self.head);
        if let Some(id) = id {
            body.extend_from_slice(b",\"id\":");
            write_json(&mut body, &id)?;
        }
        body.extend_from_slice(b",\"outputs\":[");
        for (n, (i, tensor)) in outputs.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            match self.outputs.get(*i) {
                Some(part) => body.extend_from_slice(part),
                None => body.extend_from_slice(b"{\"name\":\"\",\"datatype\":\""),
            }
            body.extend_from_slice(tensor.data.datatype().name().as_bytes());
            body.extend_from_slice(b"\",\"shape\":");
            write_json(&mut body, &tensor.shape)?;
            body.extend_from_slice(b",\"data\":");
            write_json(&mut body, &tensor.data)?;
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        Ok(body)
    }
}

/// The outputs, serialized straight from the worker's answer.
struct V2Outputs<'a> {
    specs: &'a [IoSpec],
    outputs: &'a [(usize, HostTensor)],
    /// By output index: in the binary part rather than in `data`.
    binary: &'a [bool],
}

impl Serialize for V2Outputs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.outputs.len()))?;
        for (i, tensor) in self.outputs {
            let binary = self.binary.get(*i).copied().unwrap_or(false);
            seq.serialize_element(&V2Output {
                name: self.specs.get(*i).map_or("", |s| s.name.as_str()),
                datatype: tensor.data.datatype().name(),
                shape: &tensor.shape,
                parameters: binary.then(|| BinaryParameters {
                    binary_data_size: tensor.data.binary_size(),
                }),
                data: (!binary).then_some(&tensor.data),
            })?;
        }
        seq.end()
    }
}

fn to_json(value: &impl Serialize, outputs: &[(usize, HostTensor)]) -> Result<Vec<u8>, ApiError> {
    let estimate = 128
        + outputs
            .iter()
            .map(|(_, t)| t.data.len() * 12)
            .sum::<usize>();
    let mut body = Vec::with_capacity(estimate);
    write_json(&mut body, value)?;
    Ok(body)
}

fn write_json(body: &mut Vec<u8>, value: &impl Serialize) -> Result<(), ApiError> {
    serde_json::to_writer(body, value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response: {e}"),
        )
    })
}

/// `{"predictions": [...]}`: one entry per instance; the row of the single output, or an object
/// of rows keyed by output name.
struct Predictions<'a> {
    specs: &'a [IoSpec],
    outputs: &'a [(usize, HostTensor)],
    rows: usize,
}

impl Serialize for Predictions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("predictions", &Rows(self))?;
        map.end()
    }
}

struct Rows<'p, 'a>(&'p Predictions<'a>);

impl Serialize for Rows<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut seq = serializer.serialize_seq(Some(p.rows))?;
        for r in 0..p.rows {
            if let [(_, only)] = p.outputs {
                seq.serialize_element(&row(only, r))?;
            } else {
                seq.serialize_element(&Record(p, r))?;
            }
        }
        seq.end()
    }
}

struct Record<'p, 'a>(&'p Predictions<'a>, usize);

impl Serialize for Record<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Record(p, r) = *self;
        let mut map = serializer.serialize_map(Some(p.outputs.len()))?;
        for (i, output) in p.outputs {
            let name = p.specs.get(*i).map_or("", |s| s.name.as_str());
            map.serialize_entry(name, &row(output, r))?;
        }
        map.end()
    }
}

fn row(output: &HostTensor, r: usize) -> Nested<'_> {
    let inner = &output.shape[1..];
    Nested {
        data: &output.data,
        offset: r * inner.iter().product::<usize>(),
        shape: inner,
    }
}

fn v1_response(specs: &[IoSpec], outputs: &[(usize, HostTensor)]) -> Result<Vec<u8>, ApiError> {
    let rows = outputs
        .first()
        .and_then(|(_, t)| t.shape.first().copied())
        .unwrap_or(0);
    for (i, output) in outputs {
        if output.shape.first() != Some(&rows) {
            let name = specs.get(*i).map_or("", |s| s.name.as_str());
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "output '{}' has shape {:?}, not one row per instance; use POST /v2/models/{{model}}/infer",
                    name, output.shape
                ),
            ));
        }
    }
    let predictions = Predictions {
        specs,
        outputs,
        rows,
    };
    to_json(&predictions, outputs)
}

/// Reads the body up to `limit` bytes. A larger body is read to its end (up to a bound) and
/// discarded before the 413 goes out: answering while the client is still sending makes many
/// clients report a broken connection instead of the answer.
async fn read_body(body: Body, declared: Option<u64>, limit: usize) -> Result<Bytes, ApiError> {
    const DRAIN_BOUND: usize = 64 << 20;
    let mut too_big = declared.is_some_and(|n| n > limit as u64);
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if too_big || seen > limit {
            too_big = true;
            first = None;
            joined = None;
            if seen > limit.saturating_add(DRAIN_BOUND) {
                break;
            }
            continue;
        }
        match (&mut joined, first.take()) {
            (Some(buffer), _) => buffer.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(previous)) => {
                let capacity = declared.map_or(0, |n| n as usize).max(seen).min(limit);
                let mut buffer = Vec::with_capacity(capacity);
                buffer.extend_from_slice(&previous);
                buffer.extend_from_slice(&chunk);
                joined = Some(buffer);
            }
        }
    }
    if too_big {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(match (joined, first) {
        (Some(buffer), _) => Bytes::from(buffer),
        (None, Some(chunk)) => chunk,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn body_limit_holds_without_a_content_length() {
        let body = read_body(chunked(&[b"{\"a\":", b"1}"]), None, 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"a\":1}");
        let err = read_body(chunked(&[b"0123456789", b"0123456789"]), None, 16)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.message.contains("16 bytes"), "{}", err.message);
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused() {
        let err = read_body(chunked(&[b"{}"]), Some(1000), 16)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn the_answer_template_writes_what_serializing_the_answer_writes() {
        use crate::server::tensor::DataType;
        let spec = |name: &str, datatype| IoSpec {
            name: name.into(),
            datatype,
            shape: vec![-1],
        };
        let specs = [
            spec("label", DataType::Int64),
            spec("p\"rob\\s", DataType::Fp32),
            spec("ok", DataType::Bool),
        ];
        let outputs = vec![
            (
                1,
                HostTensor {
                    shape: vec![2, 2],
                    data: TensorData::Fp32(vec![0.25, -1e-7, f32::MAX, 3.0]),
                },
            ),
            (
                0,
                HostTensor {
                    shape: vec![2],
                    data: TensorData::Int64(vec![i64::MIN, 7]),
                },
            ),
            (
                2,
                HostTensor {
                    shape: vec![2],
                    data: TensorData::Bool(vec![true, false]),
                },
            ),
        ];
        for (name, version, id) in [
            ("churn", "1", None),
            ("m\u{e9}\"\n", "v\t2", Some("req \"7\" \u{1}")),
        ] {
            let template = AnswerTemplate::new(name, version, &specs);
            let expected = serde_json::to_vec(&V2Response {
                model_name: name,
                model_version: version,
                id,
                outputs: V2Outputs {
                    specs: &specs,
                    outputs: &outputs,
                    binary: &[],
                },
            })
            .unwrap();
            let written = template.write(id, &outputs).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn errors_are_json_objects() {
        let response = ApiError::bad_request("input 'x': \"quoted\"").response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
