//! The ONNX model server behind `ferry serve-model`: Open Inference Protocol v2 (and KServe v1)
//! over HTTP, dynamic batching, weighted variants, Prometheus metrics, bounded everything.
//!
//! How the CLI runs it:
//! ```no_run
//! # async fn cli(path: &std::path::Path) -> Result<(), ferry::server::ServerError> {
//! let config = ferry::server::read_config(path)?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; }; // plus SIGTERM
//! ferry::server::run(config, shutdown).await
//! # }
//! ```
//! [`run`] binds `host:port`, loads every model ([`load`]) and serves ([`serve`]) until
//! `shutdown` completes; tests call [`load`] and [`serve`] with their own listener.
//!
//! Threads: HTTP (parsing, validation, responses) runs on the caller's tokio runtime. Each model
//! variant has one inference thread that owns its ONNX Runtime session (one intra-op thread:
//! on small machines more would only fight the HTTP threads), fed by a queue that wakes it once
//! per batch rather than once per request; see `batch`. With batching on, `max_delay_ms` is an
//! upper bound: a batch runs as soon as it is full or no other request for the variant is
//! being received, so a lone client is never delayed.

mod batch;
pub mod config;
mod exposition;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod metrics;
pub(crate) mod model;
mod parse;
mod stats;
pub(crate) mod tensor;
mod triton;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};
use axum::serve::ListenerExt;
use serde::Serialize;
use tokio::net::TcpListener;

pub use config::ServingConfig;
pub use http::VARIANT_HEADER;
pub use model::SignatureError;

use self::batch::{Batching, JobQueue, Worker};
use self::metrics::{Metrics, VariantMetrics};
use self::model::{IoSpec, Signature};
use self::stats::ModelStats;
use crate::onnx::OnnxError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving config {}: {message}", path.display())]
    ConfigFile { path: PathBuf, message: String },

    #[error("invalid serving config: {0}")]
    Config(String),

    #[error(transparent)]
    Runtime(OnnxError),

    #[error(
        "serve.device is cuda, but the ONNX Runtime library at {} has no CUDA execution provider (available: {})\n  hint: use a GPU build of ONNX Runtime (libonnxruntime.so with libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so beside it, as the onnxruntime-gpu wheel and the onnxruntime-linux-x64-gpu release ship them) by pointing {} at it, or set serve.device: cpu",
        library.display(),
        list_or_none(available),
        crate::onnx::DYLIB_ENV
    )]
    NoCudaProvider {
        library: PathBuf,
        available: Vec<String>,
    },

    #[error(
        "serve.device is cuda, but model '{model}' (variant '{variant}'): {source}\n  hint: the CUDA execution provider needs an NVIDIA GPU and its driver, and the CUDA and cuDNN libraries that build of ONNX Runtime was made for where the loader finds them (beside libonnxruntime.so or on LD_LIBRARY_PATH); in a container the GPU must be given to it (serve.resources.gpu); or set serve.device: cpu"
    )]
    Cuda {
        model: String,
        variant: String,
        #[source]
        source: OnnxError,
    },

    #[error("model '{model}' (variant '{variant}'): {source}")]
    Model {
        model: String,
        variant: String,
        #[source]
        source: OnnxError,
    },

    #[error(transparent)]
    Signature(#[from] SignatureError),

    #[error(
        "model '{model}': variants '{first}' and '{other}' have different inputs or outputs; \
         clients see one model, so its variants must agree"
    )]
    VariantMismatch {
        model: String,
        first: String,
        other: String,
    },

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start an inference thread: {0}")]
    Thread(#[source] std::io::Error),

    #[error("serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Fails unless the loaded ONNX Runtime library can run models on `device`.
fn check_device(device: config::Device) -> Result<(), ServerError> {
    if device.is_cpu() {
        return Ok(());
    }
    let available = crate::onnx::available_providers().map_err(ServerError::Runtime)?;
    if available.iter().any(|p| p == crate::onnx::CUDA_PROVIDER) {
        return Ok(());
    }
    Err(ServerError::NoCudaProvider {
        library: crate::onnx::runtime_library().unwrap_or_default(),
        available,
    })
}

/// Reads the serving config (JSON, see [`config::CONFIG_PATH`]).
pub fn read_config(path: &Path) -> Result<ServingConfig, ServerError> {
    let config_error = |message: String| ServerError::ConfigFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| config_error(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| config_error(e.to_string()))
}

/// Loaded models with their inference threads running, ready to [`serve`].
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A handle that tells whether the server reports itself ready (it stops as soon as the
    /// shutdown future completes).
    pub fn status(&self) -> ServerStatus {
        ServerStatus(self.state.clone())
    }
}

#[derive(Clone)]
pub struct ServerStatus(Arc<AppState>);

impl ServerStatus {
    pub fn ready(&self) -> bool {
        !self.0.is_shutting_down()
    }
}

pub(crate) struct AppState {
    models: HashMap<String, Model>,
    limits: RuntimeLimits,
    key_header: HeaderName,
    shutting_down: AtomicBool,
    metrics: Metrics,
    server_metadata: Bytes,
}

impl AppState {
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

pub(crate) struct RuntimeLimits {
    max_body_bytes: usize,
    request_timeout: Duration,
    max_queue: usize,
    max_elements: usize,
    shutdown_grace: Duration,
}

pub(crate) struct Model {
    name: String,
    version: String,
    variants: Vec<Variant>,
    weights: Vec<u32>,
    metadata: Bytes,
    /// Triton's model configuration, as JSON.
    triton_config: Bytes,
    stats: Arc<ModelStats>,
}

pub(crate) struct Variant {
    name: String,
    header: HeaderValue,
    queue: Arc<JobQueue>,
    metrics: VariantMetrics,
    signature: Arc<Signature>,
    /// Batching is on and the model allows it.
    mergeable: bool,
}

impl Drop for Variant {
    fn drop(&mut self) {
        // The worker finishes what is queued, then its thread ends.
        self.queue.close();
    }
}

/// Loads every model variant in ONNX Runtime and starts its inference thread. Fails on the
/// first model that does not load (naming its file and ONNX Runtime's message), on outputs that
/// are not tensors, and on inconsistent configs.
pub fn load(config: &ServingConfig) -> Result<Server, ServerError> {
    check_config(config)?;
    crate::onnx::environment().map_err(ServerError::Runtime)?;
    check_device(config.device)?;
    let key_header = HeaderName::from_bytes(config.variant_key_header.as_bytes())
        .map_err(|e| ServerError::Config(format!("variant_key_header: {e}")))?;

    let sessions = open_all(config)?;
    let metrics = Metrics::new();
    let mut models = HashMap::with_capacity(config.models.len());
    let mut sessions = sessions.into_iter();
    for model_config in &config.models {
        let mut variants = Vec::with_capacity(model_config.variants.len());
        let mut first_signature: Option<(String, Arc<Signature>)> = None;
        // The variants agree on their interface, so the first decides whether the model batches.
        let mut model_stats: Option<Arc<ModelStats>> = None;
        for variant_config in &model_config.variants {
            let Some((session, signature, load_time)) = sessions.next() else {
                return Err(ServerError::Config(
                    "internal: a model was not loaded".into(),
                ));
            };
            let signature = Arc::new(signature);
            match &first_signature {
                Some((first, reference)) if !reference.same_interface(&signature) => {
                    return Err(ServerError::VariantMismatch {
                        model: model_config.name.clone(),
                        first: first.clone(),
                        other: variant_config.name.clone(),
                    });
                }
                Some(_) => {}
                None => first_signature = Some((variant_config.name.clone(), signature.clone())),
            }
            let label = format!(
                "model '{}' variant '{}'",
                model_config.name, variant_config.name
            );
            let batching = model_config.batching.and_then(|b| match signature.batchable() {
                Ok(()) => Some(Batching {
                    max_rows: b.max_batch_size as usize,
                    max_delay: Duration::from_millis(b.max_delay_ms),
                }),
                Err(reason) => {
                    eprintln!(
                        "ferry serve-model: {label} ({}): batching is configured but off: {reason}",
                        variant_config.path.display()
                    );
                    None
                }
            });
            let stats = model_stats
                .get_or_insert_with(|| Arc::new(ModelStats::new(batching.is_some())))
                .clone();
            let variant_metrics = metrics.variant(&model_config.name, &variant_config.name);
            variant_metrics.model_load.set(load_time.as_secs_f64());
            let queue = Arc::new(JobQueue::new());
            let worker = Worker {
                session,
                signature: signature.clone(),
                batching,
                metrics: variant_metrics.clone(),
                stats,
                queue: queue.clone(),
                label,
            };
            std::thread::Builder::new()
                .name("ferry-infer".into())
                .spawn(move || worker.run())
                .map_err(ServerError::Thread)?;
            let header = HeaderValue::from_str(&variant_config.name).map_err(|_| {
                ServerError::Config(format!(
                    "variant name {:?} cannot be sent in an HTTP header",
                    variant_config.name
                ))
            })?;
            variants.push(Variant {
                name: variant_config.name.clone(),
                header,
                queue,
                metrics: variant_metrics,
                signature,
                mergeable: batching.is_some(),
            });
        }
        let signature = &variants[0].signature;
        let metadata = model_metadata(&model_config.name, &model_config.version, signature)?;
        let variant_names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        let triton_config = serde_json::to_vec(&triton::model_config(&triton::Described {
            name: &model_config.name,
            signature,
            batching: model_config.batching.filter(|_| variants[0].mergeable),
            device: config.device,
            variants: &variant_names,
        }))
        .map_err(|e| ServerError::Config(e.to_string()))?;
        let Some(stats) = model_stats else {
            return Err(ServerError::Config(format!(
                "model '{}' has no variants",
                model_config.name
            )));
        };
        models.insert(
            model_config.name.clone(),
            Model {
                name: model_config.name.clone(),
                version: model_config.version.clone(),
                weights: model_config.variants.iter().map(|v| v.weight).collect(),
                variants,
                metadata,
                triton_config: Bytes::from(triton_config),
                stats,
            },
        );
    }

    let limits = &config.limits;
    let server_metadata = serde_json::to_vec(&serde_json::json!({
        "name": "ferry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": std::iter::once("binary_tensor_data")
            .chain(triton::EXTENSIONS)
            .collect::<Vec<_>>(),
    }))
    .map_err(|e| ServerError::Config(e.to_string()))?;
    Ok(Server {
        state: Arc::new(AppState {
            models,
            limits: RuntimeLimits {
                max_body_bytes: limits.max_body_bytes,
                request_timeout: Duration::from_millis(limits.request_timeout_ms),
                max_queue: limits.max_queue,
                max_elements: limits.max_elements,
                shutdown_grace: Duration::from_millis(limits.shutdown_grace_ms),
            },
            key_header,
            shutting_down: AtomicBool::new(false),
            metrics,
            server_metadata: Bytes::from(server_metadata),
        }),
    })
}

fn check_config(config: &ServingConfig) -> Result<(), ServerError> {
    let bad = |m: String| Err(ServerError::Config(m));
    if config.models.is_empty() {
        return bad("no models to serve".into());
    }
    let mut names = std::collections::HashSet::new();
    for model in &config.models {
        if model.name.is_empty()
            || model.name.contains(['/', ':'])
            || model.name.contains(char::is_whitespace)
        {
            return bad(format!(
                "model name {:?} must be non-empty, without '/', ':' or spaces",
                model.name
            ));
        }
        if !names.insert(model.name.as_str()) {
            return bad(format!("model '{}' is listed twice", model.name));
        }
        if model.variants.is_empty() {
            return bad(format!("model '{}' has no variants", model.name));
        }
        let mut variant_names = std::collections::HashSet::new();
        for variant in &model.variants {
            if !variant_names.insert(variant.name.as_str()) {
                return bad(format!(
                    "model '{}': variant '{}' is listed twice",
                    model.name, variant.name
                ));
            }
        }
        if model.variants.iter().all(|v| v.weight == 0) {
            return bad(format!(
                "model '{}': every variant has weight 0, so none would get traffic",
                model.name
            ));
        }
        if let Some(b) = model.batching
            && b.max_batch_size == 0
        {
            return bad(format!(
                "model '{}': batching.max_batch_size must be at least 1",
                model.name
            ));
        }
    }
    let limits = &config.limits;
    for (name, value) in [
        ("max_body_bytes", limits.max_body_bytes),
        ("max_queue", limits.max_queue),
        ("max_elements", limits.max_elements),
        ("request_timeout_ms", limits.request_timeout_ms as usize),
    ] {
        if value == 0 {
            return bad(format!("limits.{name} must be greater than 0"));
        }
    }
    Ok(())
}

type Opened = (ort::session::Session, Signature, Duration);

/// Opens all variants, in parallel when there are several (start-up time counts).
fn open_all(config: &ServingConfig) -> Result<Vec<Opened>, ServerError> {
    let jobs: Vec<(&str, &config::VariantConfig)> = config
        .models
        .iter()
        .flat_map(|m| m.variants.iter().map(move |v| (m.name.as_str(), v)))
        .collect();
    let open = |(model, variant): (&str, &config::VariantConfig)| -> Result<Opened, ServerError> {
        let started = Instant::now();
        let session =
            model::open_session(&variant.path, config.device).map_err(|source| match source {
                OnnxError::RuntimeNotFound { .. } | OnnxError::RuntimeLoad { .. } => {
                    ServerError::Runtime(source)
                }
                OnnxError::Provider { .. } => ServerError::Cuda {
                    model: model.to_string(),
                    variant: variant.name.clone(),
                    source,
                },
                source => ServerError::Model {
                    model: model.to_string(),
                    variant: variant.name.clone(),
                    source,
                },
            })?;
        let signature = Signature::of(&session, &variant.path)?;
        Ok((session, signature, started.elapsed()))
    };
    if jobs.len() == 1 {
        return jobs.into_iter().map(open).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| scope.spawn(move || open(job)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ServerError::Config(
                        "a model-loading thread panicked".into(),
                    ))
                })
            })
            .collect()
    })
}

fn model_metadata(name: &str, version: &str, signature: &Signature) -> Result<Bytes, ServerError> {
    #[derive(Serialize)]
    struct Metadata<'a> {
        name: &'a str,
        versions: [&'a str; 1],
        platform: &'static str,
        inputs: &'a [IoSpec],
        outputs: &'a [IoSpec],
    }
    serde_json::to_vec(&Metadata {
        name,
        versions: [version],
        platform: "onnxruntime",
        inputs: &signature.inputs,
        outputs: &signature.outputs,
    })
    .map(Bytes::from)
    .map_err(|e| ServerError::Config(e.to_string()))
}

/// Serves `server` on `listener` until `shutdown` completes. Then readiness turns 503 at once,
/// the listener closes, requests in flight finish, and this returns — at the latest after
/// `limits.shutdown_grace_ms`, abandoning what is still running.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = server.state.clone();
    let grace = state.limits.shutdown_grace;
    let (fired, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        signal_state.shutting_down.store(true, Ordering::Release);
        let _ = fired.send(());
    };
    // Responses are written whole; Nagle would only delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serving = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(signal)
        .into_future();
    let grace_over = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = serving => result.map_err(ServerError::Serve)?,
        () = grace_over => eprintln!(
            "ferry serve-model: requests still running after the shutdown grace of {} ms were dropped",
            grace.as_millis()
        ),
    }
    drop(server);
    Ok(())
}

/// Binds `config.host:config.port`, loads the models and serves until `shutdown` completes.
pub async fn run(
    config: ServingConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let started = Instant::now();
    let addr = if config.host.contains(':') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    };
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let device = config.device;
    let summary: Vec<String> = config
        .models
        .iter()
        .map(|m| {
            let variants: Vec<&str> = m.variants.iter().map(|v| v.name.as_str()).collect();
            format!("{} [{}]", m.name, variants.join(", "))
        })
        .collect();
    let server = tokio::task::spawn_blocking(move || load(&config))
        .await
        .map_err(|e| ServerError::Config(format!("loading models: {e}")))??;
    eprintln!(
        "ferry serve-model: serving {} on http://{addr}{} (ready in {} ms)",
        summary.join(", "),
        match device {
            config::Device::Cpu => "",
            config::Device::Cuda => " with the CUDA execution provider",
        },
        started.elapsed().as_millis()
    );
    serve(server, listener, shutdown).await
}

/// `ferry serve-model --config FILE` to the end: its own runtime, SIGTERM and Ctrl-C as the
/// shutdown signal. Signals are caught before the models load, so a stop during loading is a
/// clean exit too.
pub fn run_main(config_path: &Path) -> Result<(), ServerError> {
    let config = read_config(config_path)?
        .listen_from_env(|k| std::env::var(k).ok())
        .map_err(ServerError::Config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Thread)?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(ServerError::Thread)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Thread)?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        run(config, shutdown).await
    })
}

/// The entry point of a build without the `cli` feature: `serve-model [--config FILE]`,
/// `--version`. That build goes into serving images, where nothing else is ever run.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = match args.as_slice() {
        ["--version" | "-V"] => {
            println!("ferry {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        ["serve-model"] => config::CONFIG_PATH.to_string(),
        ["serve-model", "--config", path] => path.to_string(),
        ["serve-model", flag] if flag.starts_with("--config=") => {
            flag.trim_start_matches("--config=").to_string()
        }
        _ => {
            eprintln!(
                "usage: ferry serve-model [--config FILE]\n(this build of ferry only serves models; the full one has every command)"
            );
            return 2;
        }
    };
    match run_main(Path::new(&config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
