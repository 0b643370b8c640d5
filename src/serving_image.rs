//! The serving image both loops ship: the plan's serving part with every model checked to exist
//! and hashed, and the image built from it (this machine's ferry server build, ONNX Runtime, the
//! models and the serving config). `ferry serve` runs it on Docker; a cluster pulls the same
//! image from the environment's registry.

use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::images::build::{Built, ImageError};
use crate::images::runtime_parts::{self, PartsError};
use crate::images::serving::{self, ServingImageRequest, ServingModel, Target};
use crate::onnx::OnnxError;
use crate::plan::Serving;
use crate::platform::Platform;
use crate::project_plan::{PlanError, make_plan};
use crate::server::config::Device;
use crate::spec::{Project, sha256_file};
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum ServingImageError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "{} does not exist (serve.{field})\n  hint: train it first with `ferry train`, or fix the path in ferry.yaml",
        path.display()
    )]
    NoModel { path: PathBuf, field: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Parts(#[from] PartsError),
    #[error(
        "a CUDA serving image is made from this machine's GPU build of ONNX Runtime, so only for this machine's platform, not {platform}\n  hint: build it on a {platform} machine, or set serve.device: cpu"
    )]
    CudaElsewhere { platform: Platform },
    #[error(
        "a scoring image carries this machine's ferry, so it is made for this machine's platform only, not {platform} (the Docker engine's)\n  hint: score from a machine of the engine's platform, or use an engine of this machine's"
    )]
    ScoringElsewhere { platform: Platform },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServingImageError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServingImageError {
        let path = path.to_path_buf();
        move |source| ServingImageError::Io { what, path, source }
    }
}

/// The plan's serving part, with every model checked to exist and hashed.
pub fn serving_plan(project: &Project) -> Result<Serving, ServingImageError> {
    let plan = make_plan(project)?;
    let Some(mut serving) = plan.serve else {
        return Err(PlanError::MissingSection {
            file: project.file.clone(),
            section: "serve",
            hint: "add `serve: { model: artifacts/model.onnx }`",
        }
        .into());
    };
    let mut hashes = Vec::new();
    for m in &serving.models {
        let path = project.path(&m.source);
        if !path.is_file() {
            return Err(ServingImageError::NoModel {
                path,
                field: field_for(&serving, &m.image_path),
            });
        }
        hashes.push((
            m.image_path.clone(),
            sha256_file(&path).map_err(ServingImageError::io("cannot read", &path))?,
        ));
    }
    for model in &mut serving.config.models {
        for v in &mut model.variants {
            let p = v.path.to_string_lossy().into_owned();
            v.sha256 = hashes
                .iter()
                .find(|(ip, _)| *ip == p)
                .map(|(_, h)| h.clone());
        }
    }
    Ok(serving)
}

fn field_for(serving: &Serving, image_path: &str) -> String {
    match serving
        .models
        .iter()
        .position(|m| m.image_path == image_path)
    {
        Some(0) | None => "model".into(),
        Some(_) if image_path.contains("/default/") => "models[].model".into(),
        Some(_) => "variants[].model".into(),
    }
}

/// This very ferry, links resolved.
fn this_binary() -> Result<PathBuf, ServingImageError> {
    let exe = std::env::current_exe()
        .map_err(ServingImageError::io("cannot find", Path::new("ferry")))?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

/// The ferry binary that goes into serving images: the server-only `ferry-serve` beside this
/// binary (where the `ferry-ml` wheel, `cargo install` and install.sh put it, a fraction of the
/// size), else install.sh's older place `lib/ferry/ferry-serve`, else this very binary.
/// `FERRY_SERVE_BINARY` chooses another.
pub fn serving_binary() -> Result<PathBuf, ServingImageError> {
    if let Some(p) = std::env::var_os("FERRY_SERVE_BINARY") {
        return Ok(PathBuf::from(p));
    }
    let exe = this_binary()?;
    if let Some(dir) = exe.parent() {
        for slim in [
            dir.join("ferry-serve"),
            dir.join("../lib/ferry/ferry-serve"),
        ] {
            if slim.is_file() {
                return Ok(slim);
            }
        }
    }
    Ok(exe)
}

/// The serving image of a plan for `platform` (built unless its content tag exists), assembled
/// from parts of that platform: its ferry server build, ONNX Runtime from the platform's
/// `onnxruntime` wheel, the C library of the environment's base for that platform (or of Debian
/// unpacked for it), the models and the serving config. No library of this machine goes in,
/// except for a CUDA image, whose execution provider comes from this machine's GPU build of ONNX
/// Runtime (so it is made only for this machine's platform). The same image runs locally and in
/// a cluster.
pub async fn serving_image(
    docker: &Docker,
    project: &Project,
    serving: &Serving,
    platform: Platform,
    ui: &Ui,
) -> Result<Built, ServingImageError> {
    let here = Platform::host() == Some(platform);
    let host_binary = if here { Some(serving_binary()?) } else { None };
    let binary = runtime_parts::server_binary(platform, host_binary.as_deref())?;
    image_with(docker, project, serving, platform, binary, ui).await
}

/// The image a cluster's scoring pods run: the serving image (the same ONNX Runtime, libraries
/// and models) with this machine's whole ferry in place of the server-only build, so that
/// `ferry score-shard` is there. The serving image itself stays small: scoring's Arrow,
/// Parquet and TLS go only into this one. For this machine's platform, on the CPU.
pub async fn scoring_image(
    docker: &Docker,
    project: &Project,
    serving: &Serving,
    platform: Platform,
    ui: &Ui,
) -> Result<Built, ServingImageError> {
    if Platform::host() != Some(platform) {
        return Err(ServingImageError::ScoringElsewhere { platform });
    }
    let exe = this_binary()?;
    let mut cpu = serving.clone();
    cpu.config.device = Device::Cpu;
    image_with(docker, project, &cpu, platform, exe, ui).await
}

/// The serving image of `serving` for `platform` with `binary` as its ferry.
async fn image_with(
    docker: &Docker,
    project: &Project,
    serving: &Serving,
    platform: Platform,
    binary: PathBuf,
    ui: &Ui,
) -> Result<Built, ServingImageError> {
    let here = Platform::host() == Some(platform);
    let models: Vec<ServingModel> = serving
        .models
        .iter()
        .map(|m| ServingModel {
            host_path: project.path(&m.source),
            image_path: m.image_path.clone(),
        })
        .collect();
    if serving.config.device == Device::Cuda {
        if !here {
            return Err(ServingImageError::CudaElsewhere { platform });
        }
        let runtime = crate::onnx::runtime_library()?;
        return Ok(serving::ensure_serving_image(
            docker,
            &ServingImageRequest {
                project: &project.spec.name,
                binary: &binary,
                runtime: &runtime,
                models: &models,
                config: &serving.config,
            },
            ui,
        )
        .await?);
    }
    let version = runtime_parts::ort_version()?;
    let step = ui.step(format!("ONNX Runtime {version} for {platform}"));
    let fetched =
        tokio::task::spawn_blocking(move || runtime_parts::onnxruntime(platform, &version))
            .await
            .map_err(|e| ServingImageError::Io {
                what: "fetching ONNX Runtime",
                path: PathBuf::from("onnxruntime"),
                source: std::io::Error::other(e.to_string()),
            })?;
    let ort = match fetched {
        Ok(o) => {
            step.finish(format!(
                "ONNX Runtime from {} (sha256 {})",
                o.wheel,
                &o.wheel_sha256[..o.wheel_sha256.len().min(12)]
            ));
            o
        }
        Err(e) => {
            step.fail();
            return Err(e.into());
        }
    };
    let plan = make_plan(project)?;
    let sysroot = runtime_parts::sysroot(docker, &plan.env_image.base, platform, ui).await?;
    Ok(serving::ensure_serving_image_for(
        docker,
        &ServingImageRequest {
            project: &project.spec.name,
            binary: &binary,
            runtime: &ort.library,
            models: &models,
            config: &serving.config,
        },
        Some(&Target {
            platform,
            sysroot: &sysroot,
        }),
        ui,
    )
    .await?)
}

/// The serving image for each of `platforms`, in that order (see [`serving_image`]).
pub async fn serving_images(
    docker: &Docker,
    project: &Project,
    serving: &Serving,
    platforms: &[Platform],
    ui: &Ui,
) -> Result<Vec<(Platform, Built)>, ServingImageError> {
    let mut built = Vec::new();
    for p in platforms {
        built.push((*p, serving_image(docker, project, serving, *p, ui).await?));
    }
    Ok(built)
}
