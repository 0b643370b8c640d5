//! Triton's model repository extension: `POST /v2/repository/index` (the models and whether
//! each is loaded), `POST /v2/repository/models/{m}/load` (read the model's files again and swap
//! in what changed, or bring an unloaded model back) and `.../unload`. The repository is the
//! server's own config: models are loaded from the files it names, never from the request.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::http::{ApiError, find_model, ok_json};
use super::live;

pub(crate) const EXTENSIONS: [&str; 1] = ["model_repository"];

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    /// Only the models ready (true) or not (false).
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    version: &'a str,
    state: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
}

async fn index(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::bad_request(format!(
                    "the index request must be JSON like {{\"ready\": true}}: {e}"
                ))
                .response();
            }
        }
    };
    let mut models: Vec<_> = state.models.values().collect();
    models.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let entries: Vec<Entry<'_>> = models
        .into_iter()
        .filter(|m| request.ready.is_none_or(|r| r == m.is_loaded()))
        .map(|m| {
            let loaded = m.is_loaded();
            Entry {
                name: &m.name,
                version: &m.version,
                state: if loaded { "READY" } else { "UNAVAILABLE" },
                reason: if loaded { "" } else { "unloaded" },
            }
        })
        .collect();
    match serde_json::to_vec(&entries) {
        Ok(body) => ok_json(body),
        Err(e) => ApiError::internal(format!("encoding the index: {e}")).response(),
    }
}

/// Triton lets a load carry a config or files; ferry serves the files its config names.
fn refuse_overrides(body: &Bytes) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the load request must be JSON: {e}")))?;
    let overrides = value
        .get("parameters")
        .and_then(|p| p.as_object())
        .is_some_and(|p| p.keys().any(|k| k == "config" || k.starts_with("file:")));
    if overrides {
        return Err(ApiError::bad_request(
            "parameters 'config' and 'file:…' are not supported: the server loads the files its serving config names (ferry.yaml's serve.model and variants); write the new model there and load again",
        ));
    }
    Ok(())
}

async fn load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(e) = find_model(&state, &model, None).and(refuse_overrides(&body)) {
        return e.response();
    }
    let task_state = state.clone();
    let name = model.clone();
    let result = tokio::task::spawn_blocking(move || {
        let model = task_state.models.get(&name)?;
        Some(
            live::reload(&task_state, model)
                .map(|swapped| swapped_json(model.name.as_str(), &swapped)),
        )
    })
    .await;
    match result {
        Ok(None) => ApiError::internal(format!("model '{model}' went away")).response(),
        Ok(Some(Ok(body))) => {
            announce(&model, &body);
            ok_json(body.to_string())
        }
        Ok(Some(Err(e))) => ApiError::bad_request(e.to_string()).response(),
        Err(e) => ApiError::internal(format!("loading model '{model}': {e}")).response(),
    }
}

fn swapped_json(model: &str, swapped: &live::Swapped) -> serde_json::Value {
    serde_json::json!({
        "name": model,
        "state": "READY",
        "loaded": swapped
            .iter()
            .map(|(variant, old, new)| serde_json::json!({
                "variant": variant,
                "sha256": new,
                "previous_sha256": old,
            }))
            .collect::<Vec<_>>(),
    })
}

fn announce(model: &str, body: &serde_json::Value) {
    let loaded = body["loaded"].as_array().map_or(0, Vec::len);
    if loaded > 0 {
        eprintln!("ferry serve-model: model '{model}': {loaded} variant(s) loaded on request");
    }
}

async fn unload(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    if let Err(e) = find_model(&state, &model, None) {
        return e.response();
    }
    let task_state = state.clone();
    let name = model.clone();
    let result = tokio::task::spawn_blocking(move || {
        if let Some(model) = task_state.models.get(&name) {
            live::unload(&task_state, model);
        }
    })
    .await;
    match result {
        Ok(()) => {
            eprintln!("ferry serve-model: model '{model}' unloaded on request");
            ok_json(serde_json::json!({"name": model, "state": "UNAVAILABLE"}).to_string())
        }
        Err(e) => ApiError::internal(format!("unloading model '{model}': {e}")).response(),
    }
}
