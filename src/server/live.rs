//! A variant's model while it serves ([`Live`]: its sessions, their worker threads, the queue
//! in front of them), how a model file becomes one (opened once per instance, checked, warmed)
//! and how a changed file replaces it while requests keep coming ([`reload`]).
//!
//! A request takes the variant's current `Live` once, when it is routed, and keeps it to the
//! end: a swap stores a new one for the requests after it, and the old one closes its queue
//! only when the last request holding it is done, so nothing in flight is cut off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ort::session::{Session, SessionInputValue};
use sha2::{Digest, Sha256};

use super::batch::{Batching, Engine, JobQueue};
use super::config::{BatchingConfig, Device};
use super::metrics::VariantMetrics;
use super::model::{HostTensor, Signature};
use super::stats::ModelStats;
use super::tensor::TensorData;
use super::{AppState, Model, ServerError, Variant};
use crate::onnx::OnnxError;

/// What a variant serves now.
pub(crate) struct Live {
    pub queue: Arc<JobQueue>,
    pub engine: Arc<Engine>,
    pub signature: Arc<Signature>,
    /// Of the model file, as read when it was loaded.
    pub sha256: String,
    pub metrics: VariantMetrics,
    /// Batching is on and the model allows it.
    pub mergeable: bool,
    pub instances: usize,
    pub threads: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        // The workers finish what is queued, then their threads end.
        self.queue.close();
    }
}

/// A model file opened once per instance and described, not serving yet.
pub(crate) struct Opened {
    pub sessions: Vec<Session>,
    pub signature: Signature,
    pub sha256: String,
    pub threads: usize,
    pub load_time: Duration,
}

/// The file's identity as far as a cheap look tells: a write or a rename over it changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    pub(crate) fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// Opens `path` for `model`/`variant`: `instances` sessions (derived from `cpus` and the file's
/// size when not set), its signature and its sha256.
pub(crate) fn open(
    model: &str,
    variant: &str,
    path: &Path,
    device: Device,
    (instances, threads): (Option<u32>, Option<u32>),
    cpus: usize,
) -> Result<Opened, ServerError> {
    let started = Instant::now();
    let before = Stamp::of(path);
    let (instances, threads) =
        super::cores::plan(instances, threads, cpus, before.map_or(0, |s| s.len));
    let open_one = || {
        super::model::open_session_with(path, device, threads)
            .map_err(|source| open_error(model, variant, source))
    };
    // The first session finds a bad file before the others are tried.
    let first = open_one()?;
    let signature = Signature::of(&first, path)?;
    let (sha256, rest) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| file_sha256(path));
        let others: Vec<_> = (1..instances).map(|_| scope.spawn(open_one)).collect();
        let rest: Result<Vec<Session>, ServerError> = others
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ServerError::Config(
                        "a model-loading thread panicked".into(),
                    ))
                })
            })
            .collect();
        let sha = hashing
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")));
        (sha, rest)
    });
    let sha256 = sha256.map_err(|e| ServerError::Model {
        model: model.to_string(),
        variant: variant.to_string(),
        source: OnnxError::ModelLoad {
            path: path.to_path_buf(),
            message: format!("reading it to hash it: {e}"),
        },
    })?;
    if Stamp::of(path) != before {
        return Err(ServerError::Model {
            model: model.to_string(),
            variant: variant.to_string(),
            source: OnnxError::ModelLoad {
                path: path.to_path_buf(),
                message: "the file changed while it was being read".into(),
            },
        });
    }
    let mut sessions = vec![first];
    sessions.extend(rest?);
    Ok(Opened {
        sessions,
        signature,
        sha256,
        threads,
        load_time: started.elapsed(),
    })
}

fn open_error(model: &str, variant: &str, source: OnnxError) -> ServerError {
    match source {
        OnnxError::RuntimeNotFound { .. } | OnnxError::RuntimeLoad { .. } => {
            ServerError::Runtime(source)
        }
        OnnxError::Provider { .. } => ServerError::Cuda {
            model: model.to_string(),
            variant: variant.to_string(),
            source,
        },
        source => ServerError::Model {
            model: model.to_string(),
            variant: variant.to_string(),
            source,
        },
    }
}

/// Hex sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs each session once, on `sample` (a request the variant answered) or else on zeros of
/// the model's shapes with 1 for each dynamic dimension, so the first request after a swap
/// does not pay for ONNX Runtime's first-run setup.
pub(crate) fn warm(opened: &mut Opened, sample: Option<&[HostTensor]>) -> Result<(), String> {
    let inputs: Vec<HostTensor> = match sample {
        Some(sample) => sample.to_vec(),
        None => opened
            .signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0).unwrap_or(1))
                    .collect();
                let n = shape.iter().product();
                HostTensor {
                    shape,
                    data: TensorData::zeros(spec.datatype, n),
                }
            })
            .collect(),
    };
    for session in &mut opened.sessions {
        let values = inputs
            .iter()
            .cloned()
            .map(|t| t.data.into_ort(&t.shape).map(SessionInputValue::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("preparing inputs: {e}"))?;
        session
            .run(values.as_slice())
            .map_err(|e| format!("inference failed: {e}"))?;
    }
    Ok(())
}

/// Starts one worker thread per session, all taking from one queue.
pub(crate) fn start(
    opened: Opened,
    batching: Option<BatchingConfig>,
    metrics: VariantMetrics,
    stats: Arc<ModelStats>,
    label: String,
) -> Result<Live, ServerError> {
    let signature = Arc::new(opened.signature);
    let batching = batching.and_then(|b| match signature.batchable() {
        Ok(()) => Some(Batching {
            max_rows: b.max_batch_size as usize,
            max_delay: Duration::from_millis(b.max_delay_ms),
        }),
        Err(reason) => {
            eprintln!("ferry serve-model: {label}: batching is configured but off: {reason}");
            None
        }
    });
    metrics.model_load.set(opened.load_time.as_secs_f64());
    metrics.instances.set(opened.sessions.len() as i64);
    let instances = opened.sessions.len();
    let engine = Arc::new(Engine::new(
        opened.sessions,
        signature.clone(),
        batching,
        metrics.clone(),
        stats,
        label,
    ));
    let live = Live {
        queue: engine.queue.clone(),
        engine: engine.clone(),
        signature,
        sha256: opened.sha256,
        metrics,
        mergeable: batching.is_some(),
        instances,
        threads: opened.threads,
    };
    for id in 0..engine.instances() {
        let engine = engine.clone();
        // On failure `live` is dropped, closing the queue, so the workers started end.
        std::thread::Builder::new()
            .name("ferry-infer".into())
            .spawn(move || engine.work(id))
            .map_err(ServerError::Thread)?;
    }
    Ok(live)
}

/// Why a model was not (re)loaded; the variants keep what they served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{0}")]
    Load(#[from] ServerError),

    #[error(
        "model '{model}' (variant '{variant}'): {} has other inputs or outputs than the model served ({found}; served: {served}); clients would break, so it was not loaded",
        path.display()
    )]
    Interface {
        model: String,
        variant: String,
        path: PathBuf,
        found: String,
        served: String,
    },

    #[error(
        "model '{model}' (variant '{variant}'): {} failed on a request the served model answered: {message}",
        path.display()
    )]
    Warm {
        model: String,
        variant: String,
        path: PathBuf,
        message: String,
    },
}

/// What a reload changed, per variant: `(variant, old sha256, new sha256)`.
pub(crate) type Swapped = Vec<(String, Option<String>, String)>;

/// Loads `model`'s files again and swaps in every variant whose file changed (or every variant,
/// when the model is unloaded). All or nothing: the variants agree on one interface, so one
/// file that fails leaves all of them as they were.
pub(crate) fn reload(state: &AppState, model: &Model) -> Result<Swapped, ReloadError> {
    let _one_at_a_time = model
        .reloading
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut ready = Vec::new();
    for (index, variant) in model.variants.iter().enumerate() {
        let current = variant.live();
        if let Some(live) = &current
            && file_sha256(&variant.path).is_ok_and(|sha| sha == live.sha256)
        {
            continue;
        }
        ready.push((index, prepare(state, model, variant)?, current));
    }
    let mut swapped = Vec::new();
    for (index, live, old) in ready {
        let variant = &model.variants[index];
        swapped.push((
            variant.name.clone(),
            old.map(|o| o.sha256.clone()),
            live.sha256.clone(),
        ));
        variant.set(Some(Arc::new(live)));
    }
    if !swapped.is_empty() {
        model.describe(state.device);
        state.metrics.reloaded(&model.name, true);
    }
    Ok(swapped)
}

/// A variant's file opened, checked against the model's interface, warmed and started.
fn prepare(state: &AppState, model: &Model, variant: &Variant) -> Result<Live, ReloadError> {
    let refused = |e: ReloadError| {
        state.metrics.reloaded(&model.name, false);
        e
    };
    let mut opened = open(
        &model.name,
        &variant.name,
        &variant.path,
        state.device,
        (variant.instances, variant.threads),
        state.cpus,
    )
    .map_err(|e| refused(e.into()))?;
    if !model.interface.same_interface(&opened.signature) {
        let describe = |s: &Signature| {
            let list = |specs: &[super::model::IoSpec]| {
                specs
                    .iter()
                    .map(|s| format!("{} {} rank {}", s.name, s.datatype, s.shape.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("inputs {}; outputs {}", list(&s.inputs), list(&s.outputs))
        };
        return Err(refused(ReloadError::Interface {
            model: model.name.clone(),
            variant: variant.name.clone(),
            path: variant.path.clone(),
            found: describe(&opened.signature),
            served: describe(&model.interface),
        }));
    }
    let sample = variant.sample();
    if let Err(message) = warm(&mut opened, sample.as_deref()) {
        if sample.is_some() {
            return Err(refused(ReloadError::Warm {
                model: model.name.clone(),
                variant: variant.name.clone(),
                path: variant.path.clone(),
                message,
            }));
        }
        // Zeros are not a request; a model may rightly refuse them.
        eprintln!(
            "ferry serve-model: model '{}' (variant '{}'): warming up on zeros failed ({message}); serving it anyway",
            model.name, variant.name
        );
    }
    let metrics = state
        .metrics
        .variant(&model.name, &variant.name, &opened.sha256);
    start(
        opened,
        model.batching,
        metrics,
        model.stats.clone(),
        format!("model '{}' variant '{}'", model.name, variant.name),
    )
    .map_err(|e| refused(e.into()))
}

/// Stops serving `model`: its variants' sessions close once the requests holding them end.
pub(crate) fn unload(state: &AppState, model: &Model) {
    let _one_at_a_time = model
        .reloading
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for variant in &model.variants {
        variant.set(None);
    }
    model.describe(state.device);
}
