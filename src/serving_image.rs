//! The serving image both loops ship: the plan's serving part with every model checked to exist
//! and hashed, and the image built from it (this machine's ferry server build, ONNX Runtime, the
//! models and the serving config). `ferry serve` runs it on Docker; a cluster pulls the same
//! image from the environment's registry.

use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::images::build::{Built, ImageError};
use crate::images::serving::{self, ServingImageRequest, ServingModel};
use crate::onnx::OnnxError;
use crate::plan::Serving;
use crate::project_plan::{PlanError, make_plan};
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

/// The ferry binary that goes into serving images: the server-only `ferry-serve` beside this
/// binary (where the `ferry-ml` wheel, `cargo install` and install.sh put it, a fraction of the
/// size), else install.sh's older place `lib/ferry/ferry-serve`, else this very binary.
/// `FERRY_SERVE_BINARY` chooses another.
pub fn serving_binary() -> Result<PathBuf, ServingImageError> {
    if let Some(p) = std::env::var_os("FERRY_SERVE_BINARY") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(ServingImageError::io("cannot find", Path::new("ferry")))?;
    let exe = exe.canonicalize().unwrap_or(exe);
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

/// The serving image of a plan (built unless its content tag exists): this machine's ferry
/// server build, ONNX Runtime, the models and the serving config. The same image runs locally
/// and in a cluster.
pub async fn serving_image(
    docker: &Docker,
    project: &Project,
    serving: &Serving,
    ui: &Ui,
) -> Result<Built, ServingImageError> {
    let runtime = crate::onnx::runtime_library()?;
    let binary = serving_binary()?;
    let models: Vec<ServingModel> = serving
        .models
        .iter()
        .map(|m| ServingModel {
            host_path: project.path(&m.source),
            image_path: m.image_path.clone(),
        })
        .collect();
    Ok(serving::ensure_serving_image(
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
    .await?)
}
