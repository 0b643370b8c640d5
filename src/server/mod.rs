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
//! Threads: the caller's tokio runtime accepts connections and deals them out to one HTTP thread
//! per CPU, each with a runtime of its own (parsing, validation, responses; see `lanes`). Each
//! model variant has instances (ONNX Runtime sessions) with a worker thread each, fed by a
//! queue that wakes one once per batch rather than once per request; a light model's batches
//! run on the HTTP thread that received them instead; see `batch`. With batching on,
//! `max_delay_ms` is an upper bound: a batch runs as soon as it is full or no other request for
//! the variant is being received, so a lone client is never delayed.

mod batch;
pub mod compare;
pub mod config;
mod cores;
mod exposition;
mod front;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod http;
mod lanes;
mod live;
mod metrics;
pub(crate) mod model;
mod parse;
mod recording;
mod repository;
mod stats;
pub(crate) mod tensor;
pub mod traffic_log;
mod triton;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};
use serde::Serialize;
use tokio::net::TcpListener;

pub use config::ServingConfig;
pub use http::VARIANT_HEADER;
pub use live::file_sha256;
pub use model::SignatureError;

use self::config::BatchingConfig;
use self::live::{Live, Opened};
use self::metrics::Metrics;
use self::model::{HostTensor, IoSpec, Signature};
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

    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
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

/// How long a shadow may take unless its variant says.
const DEFAULT_SHADOW_TIMEOUT_MS: u64 = 1000;

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
    /// Watch the model files and swap changed ones in.
    watch: bool,
}

impl Server {
    /// `churn [main: 2 instances x 1 thread], ...`, for the log.
    pub fn summary(&self) -> String {
        let mut models: Vec<&Model> = self.state.models.values().collect();
        models.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        models
            .iter()
            .map(|m| {
                let variants: Vec<String> = m
                    .variants
                    .iter()
                    .map(|v| match v.live() {
                        Some(l) => format!(
                            "{}: {} x {}",
                            v.name,
                            plural(l.instances, "instance"),
                            plural(l.threads, "thread")
                        ),
                        None => format!("{}: unloaded", v.name),
                    })
                    .collect();
                format!("{} [{}]", m.name, variants.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

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
    device: config::Device,
    /// The CPUs this process may use, for the instances of models loaded later.
    cpus: usize,
    /// `serve.log`, when set.
    traffic: Option<recording::Traffic>,
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
    batching: Option<BatchingConfig>,
    /// The inputs and outputs clients were shown at start; a file swapped in must keep them.
    interface: Signature,
    described: RwLock<Arc<Described>>,
    stats: Arc<ModelStats>,
    /// Held while the model's files are (re)loaded or unloaded, one change at a time.
    reloading: Mutex<()>,
    /// The variant that gets a copy of some requests and never answers them.
    shadow: Option<recording::Shadow>,
    /// Its v2 answers' fixed parts.
    answer: http::AnswerTemplate,
}

/// What `GET /v2/models/{m}` and Triton's `config` answer, remade when a file is swapped in.
pub(crate) struct Described {
    metadata: Bytes,
    /// Triton's model configuration, as JSON.
    triton_config: Bytes,
}

impl Model {
    pub(crate) fn described(&self) -> Arc<Described> {
        self.described
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Remakes the descriptions from what the variants serve now.
    fn describe(&self, device: config::Device) {
        let lives: Vec<Arc<Live>> = self.variants.iter().filter_map(Variant::live).collect();
        let signature = lives.first().map_or(&self.interface, |l| &*l.signature);
        let mut versions = vec![self.version.clone()];
        for live in &lives {
            let version = format!("sha256:{}", live.sha256);
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
        let metadata = model_metadata(&self.name, &versions, signature);
        let variant_names: Vec<&str> = self.variants.iter().map(|v| v.name.as_str()).collect();
        let mergeable = lives.first().is_some_and(|l| l.mergeable);
        let triton_config = serde_json::to_vec(&triton::model_config(&triton::Described {
            name: &self.name,
            signature,
            batching: self.batching.filter(|_| mergeable),
            device,
            variants: &variant_names,
            instances: lives.first().map_or((1, 1), |l| (l.instances, l.threads)),
        }))
        .unwrap_or_default();
        *self
            .described
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Described {
            metadata,
            triton_config: Bytes::from(triton_config),
        });
    }

    /// Some variant serves (the model was not unloaded).
    pub(crate) fn is_loaded(&self) -> bool {
        self.variants.iter().any(|v| v.live().is_some())
    }

    /// The variant serving the model file with this sha256, for a `sha256:…` version.
    fn variant_with_sha(&self, sha256: &str) -> Option<usize> {
        self.variants
            .iter()
            .position(|v| v.live().is_some_and(|l| l.sha256 == sha256))
    }
}

pub(crate) struct Variant {
    name: String,
    header: HeaderValue,
    /// Where the model is loaded from after start, and watched.
    path: PathBuf,
    instances: Option<u32>,
    threads: Option<u32>,
    /// What serves now; `None` once unloaded.
    live: RwLock<Option<Arc<Live>>>,
    /// A request the variant answered, to warm a replacement model with.
    sample: Mutex<Option<Arc<[HostTensor]>>>,
    has_sample: AtomicBool,
}

impl Variant {
    pub(crate) fn live(&self) -> Option<Arc<Live>> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps what serves; the old one closes once the requests holding it are done.
    fn set(&self, live: Option<Arc<Live>>) {
        let old = std::mem::replace(
            &mut *self.live.write().unwrap_or_else(PoisonError::into_inner),
            live,
        );
        drop(old);
    }

    fn sample(&self) -> Option<Vec<HostTensor>> {
        self.sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.to_vec())
    }

    /// Read on every request, so without the lock once a sample is kept.
    pub(crate) fn wants_sample(&self) -> bool {
        !self.has_sample.load(Ordering::Relaxed)
    }

    pub(crate) fn keep_sample(&self, inputs: Vec<HostTensor>) {
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if sample.is_none() {
            *sample = Some(inputs.into());
            self.has_sample.store(true, Ordering::Relaxed);
        }
    }
}

/// Loads every model variant in ONNX Runtime and starts its inference threads. Fails on the
/// first model that does not load (naming its file and ONNX Runtime's message), on outputs that
/// are not tensors, and on inconsistent configs.
pub fn load(config: &ServingConfig) -> Result<Server, ServerError> {
    check_config(config)?;
    crate::onnx::environment().map_err(ServerError::Runtime)?;
    check_device(config.device)?;
    let key_header = HeaderName::from_bytes(config.variant_key_header.as_bytes())
        .map_err(|e| ServerError::Config(format!("variant_key_header: {e}")))?;

    let cpus = cores::available();
    let opened = open_all(config, cpus)?;
    let metrics = Metrics::new();
    let mut models = HashMap::with_capacity(config.models.len());
    let mut opened = opened.into_iter();
    for model_config in &config.models {
        let mut variants = Vec::with_capacity(model_config.variants.len());
        let mut first: Option<(String, Signature, Arc<ModelStats>)> = None;
        for variant_config in &model_config.variants {
            let Some(variant_opened) = opened.next() else {
                return Err(ServerError::Config(
                    "internal: a model was not loaded".into(),
                ));
            };
            let stats = match &first {
                Some((name, reference, _))
                    if !reference.same_interface(&variant_opened.signature) =>
                {
                    return Err(ServerError::VariantMismatch {
                        model: model_config.name.clone(),
                        first: name.clone(),
                        other: variant_config.name.clone(),
                    });
                }
                Some((_, _, stats)) => stats.clone(),
                None => {
                    // The variants agree on their interface, so the first decides whether the
                    // model batches.
                    let batches = model_config.batching.is_some()
                        && variant_opened.signature.batchable().is_ok();
                    let stats = Arc::new(ModelStats::new(batches));
                    first = Some((
                        variant_config.name.clone(),
                        variant_opened.signature.clone(),
                        stats.clone(),
                    ));
                    stats
                }
            };
            let header = HeaderValue::from_str(&variant_config.name).map_err(|_| {
                ServerError::Config(format!(
                    "variant name {:?} cannot be sent in an HTTP header",
                    variant_config.name
                ))
            })?;
            let variant_metrics = metrics.variant(
                &model_config.name,
                &variant_config.name,
                &variant_opened.sha256,
            );
            let label = format!(
                "model '{}' variant '{}' ({})",
                model_config.name,
                variant_config.name,
                variant_config.path.display()
            );
            let live = live::start(
                variant_opened,
                model_config.batching,
                variant_metrics,
                stats,
                label,
            )?;
            let path = variant_config
                .source
                .clone()
                .unwrap_or_else(|| variant_config.path.clone());
            if config.watch
                && let Err(e) = std::fs::File::open(&path)
            {
                eprintln!(
                    "ferry serve-model: model '{}' (variant '{}'): cannot read {} ({e}); changes to it will not be picked up",
                    model_config.name,
                    variant_config.name,
                    path.display()
                );
            }
            variants.push(Variant {
                name: variant_config.name.clone(),
                header,
                path,
                instances: model_config.instances,
                threads: model_config.threads,
                live: RwLock::new(Some(Arc::new(live))),
                sample: Mutex::new(None),
                has_sample: AtomicBool::new(false),
            });
        }
        let Some((_, interface, stats)) = first else {
            return Err(ServerError::Config(format!(
                "model '{}' has no variants",
                model_config.name
            )));
        };
        let shadow = model_config
            .variants
            .iter()
            .position(|v| v.shadow)
            .map(|index| {
                let variant = &model_config.variants[index];
                let outputs: Vec<(String, &'static str)> = interface
                    .outputs
                    .iter()
                    .map(|o| {
                        let kind = if o.datatype.is_floating() {
                            "score"
                        } else {
                            "label"
                        };
                        (o.name.clone(), kind)
                    })
                    .collect();
                recording::Shadow {
                    index,
                    weight: variant.weight,
                    timeout: Duration::from_millis(
                        variant.timeout_ms.unwrap_or(DEFAULT_SHADOW_TIMEOUT_MS),
                    ),
                    metrics: metrics.shadow(&model_config.name, &variant.name, &outputs),
                }
            });
        let model = Model {
            answer: http::AnswerTemplate::new(
                &model_config.name,
                &model_config.version,
                &interface.outputs,
            ),
            name: model_config.name.clone(),
            version: model_config.version.clone(),
            // A shadow is never chosen to answer.
            weights: model_config
                .variants
                .iter()
                .map(|v| if v.shadow { 0 } else { v.weight })
                .collect(),
            shadow,
            variants,
            batching: model_config.batching,
            interface,
            described: RwLock::new(Arc::new(Described {
                metadata: Bytes::new(),
                triton_config: Bytes::new(),
            })),
            stats,
            reloading: Mutex::new(()),
        };
        model.describe(config.device);
        metrics.model(&model_config.name);
        models.insert(model_config.name.clone(), model);
    }

    let limits = &config.limits;
    let server_metadata = serde_json::to_vec(&serde_json::json!({
        "name": "ferry",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": std::iter::once("binary_tensor_data")
            .chain(triton::EXTENSIONS)
            .chain(repository::EXTENSIONS)
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
            device: config.device,
            cpus,
            traffic: config.log.as_ref().map(recording::Traffic::open),
        }),
        watch: config.watch,
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
        if model.variants.iter().all(|v| v.weight == 0 || v.shadow) {
            return bad(format!(
                "model '{}': every variant has weight 0 or is a shadow, so none would answer",
                model.name
            ));
        }
        let shadows: Vec<&config::VariantConfig> =
            model.variants.iter().filter(|v| v.shadow).collect();
        if shadows.len() > 1 {
            return bad(format!(
                "model '{}': variants '{}' and '{}' are both shadows; a model has at most one",
                model.name, shadows[0].name, shadows[1].name
            ));
        }
        if let Some(s) = shadows.first()
            && (s.weight == 0 || s.weight > 100 || s.timeout_ms == Some(0))
        {
            return bad(format!(
                "model '{}': shadow '{}' needs a weight of 1 to 100 (the percent of requests copied to it) and a timeout_ms above 0",
                model.name, s.name
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

/// Opens all variants, in parallel when there are several (start-up time counts).
fn open_all(config: &ServingConfig, cpus: usize) -> Result<Vec<Opened>, ServerError> {
    let jobs: Vec<(&config::ModelConfig, &config::VariantConfig)> = config
        .models
        .iter()
        .flat_map(|m| m.variants.iter().map(move |v| (m, v)))
        .collect();
    let open = |(model, variant): (&config::ModelConfig, &config::VariantConfig)| {
        live::open(
            &model.name,
            &variant.name,
            &variant.path,
            config.device,
            (model.instances, model.threads),
            cpus,
        )
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

fn model_metadata(name: &str, versions: &[String], signature: &Signature) -> Bytes {
    #[derive(Serialize)]
    struct Metadata<'a> {
        name: &'a str,
        versions: &'a [String],
        platform: &'static str,
        inputs: &'a [IoSpec],
        outputs: &'a [IoSpec],
    }
    serde_json::to_vec(&Metadata {
        name,
        versions,
        platform: "onnxruntime",
        inputs: &signature.inputs,
        outputs: &signature.outputs,
    })
    .map(Bytes::from)
    .unwrap_or_default()
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
    let signal_state = state.clone();
    let stop = async move {
        shutdown.await;
        signal_state.shutting_down.store(true, Ordering::Release);
    };
    let watching = server
        .watch
        .then(|| tokio::spawn(watch::run(state.clone())));
    let drained = lanes::serve(state.clone(), listener, state.cpus, stop, grace).await?;
    if !drained {
        eprintln!(
            "ferry serve-model: requests still running after the shutdown grace of {} ms were dropped",
            grace.as_millis()
        );
    }
    if let Some(watching) = watching {
        watching.abort();
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
    let server = tokio::task::spawn_blocking(move || load(&config))
        .await
        .map_err(|e| ServerError::Config(format!("loading models: {e}")))??;
    eprintln!(
        "ferry serve-model: serving {} on http://{addr}{} (ready in {} ms)",
        server.summary(),
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
