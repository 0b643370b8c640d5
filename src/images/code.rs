//! The project image written by ferry itself: the environment image plus one layer holding the
//! project's code at `/workspace`, loaded into the engine (`POST /images/load`) without a build.
//!
//! A classic build of `FROM env` + `COPY` commits a container, and on storage drivers that diff
//! naively (fuse-overlayfs, which rootless engines use) that commit walks the whole environment:
//! over a minute for a few kB of code. Written here, the layer is the deterministic tar of the
//! code and the config is the environment image's config with that layer appended, so an edit
//! costs the tar and a load: well under a second.
//!
//! The archive names the environment's layers without carrying them: the engine finds each one
//! it already has by its chain ID and reads only the code layer from the archive. Engines that
//! keep images in containerd's store want every layer in the archive; there (and whenever a load
//! is refused) the project image is built the classic way instead.
//!
//! The config has no build time in it (it takes the environment image's creation time), so the
//! image ID follows from the environment image and the code alone, and the tag is taken from it.

use std::collections::BTreeSet;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::{ImportImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::build::{Built, ImageError};
use super::context::{Context, DockerIgnore};
use super::serving::{ArchiveManifest, RootFs};
use crate::docker::{self, DockerError, LABEL_PROJECT, LABEL_ROLE};
use crate::lock::{self, ImageRef, Lock};
use crate::plan::WORKDIR;
use crate::spec::Project;
use crate::ui::Ui;

/// The file under the project's state directory listing the project images made from this
/// checkout, so that superseded ones can be untagged without touching another checkout's.
const MADE_HERE: &str = "project-images";

/// The code layer and the config of a project image, ready to load.
pub struct CodeImage {
    pub tag: String,
    /// `sha256:<hex>` of the config: the image ID the engine will give it.
    pub id: String,
    config: Vec<u8>,
    env_layers: Vec<String>,
    layer: Vec<u8>,
    diff_id: String,
}

/// The project's code as a layer: every file the `.dockerignore` keeps, under `/workspace`.
pub fn code_layer(root: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let ignore = DockerIgnore::load(root).map_err(|source| ImageError::Read {
        path: root.join(".dockerignore"),
        source,
    })?;
    let ctx_err = |source| ImageError::Context {
        path: root.to_path_buf(),
        source,
    };
    let dir = WORKDIR.trim_start_matches('/');
    let mut ctx = Context::new();
    ctx.add_dir(dir, 0o755).map_err(ctx_err)?;
    ctx.add_tree(root, dir, &ignore).map_err(ctx_err)?;
    let (bytes, digest) = ctx.finish().map_err(ctx_err)?;
    Ok((bytes, format!("sha256:{digest}")))
}

/// The project image for the environment image `env` with the code of `root`, worked out (not
/// loaded): its config, its ID and its tag.
pub async fn plan_code_image(
    docker: &Docker,
    project: &Project,
    env: &Built,
) -> Result<CodeImage, ImageError> {
    let inspect = docker
        .inspect_image(&env.id)
        .await
        .map_err(|e| DockerError::api(format!("inspecting {}", env.tag), e))?;
    let (layer, diff_id) = code_layer(&project.root)?;
    let config = image_config(&inspect, &project.spec.name, "project", &diff_id).map_err(|e| {
        ImageError::LoadFailed {
            tag: env.tag.clone(),
            message: format!("cannot write the project image's config: {e}"),
        }
    })?;
    let env_layers = inspect
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default();
    let hex = hex::encode(Sha256::digest(&config));
    Ok(CodeImage {
        tag: format!("ferry/{}:{}", project.spec.name, &hex[..12]),
        id: format!("sha256:{hex}"),
        config,
        env_layers,
        layer,
        diff_id,
    })
}

/// The project image's config: the environment image's, its labels saying `project`, with the
/// code layer on top and the environment's creation time.
fn image_config(
    env: &bollard::models::ImageInspect,
    project: &str,
    role: &str,
    diff_id: &str,
) -> serde_json::Result<Vec<u8>> {
    let mut run_config = match &env.config {
        Some(c) => serde_json::to_value(c)?,
        None => json!({}),
    };
    set_labels(&mut run_config, project, role);
    let mut diff_ids = env
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default();
    diff_ids.push(diff_id.to_string());
    let config = ImageConfig {
        architecture: env.architecture.clone().unwrap_or_else(|| "amd64".into()),
        config: run_config,
        created: env
            .created
            .clone()
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".into()),
        os: env.os.clone().unwrap_or_else(|| "linux".into()),
        rootfs: RootFs {
            kind: "layers",
            diff_ids,
        },
        variant: env.variant.clone().filter(|v| !v.is_empty()),
    };
    serde_json::to_vec(&config)
}

/// The environment's config with the project image's labels: everything the environment image
/// was labelled with, its role replaced.
fn set_labels(run_config: &mut Value, project: &str, role: &str) {
    if !run_config.is_object() {
        *run_config = json!({});
    }
    let labels = &mut run_config["Labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[LABEL_PROJECT] = json!(project);
    labels[LABEL_ROLE] = json!(role);
}

/// The image config in the order the engine writes its fields; maps inside `config` are
/// `serde_json` objects, whose keys are sorted, so the bytes never depend on a hash order.
#[derive(Serialize)]
pub(super) struct ImageConfig {
    pub(super) architecture: String,
    pub(super) config: Value,
    pub(super) created: String,
    pub(super) os: String,
    pub(super) rootfs: RootFs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<String>,
}

impl CodeImage {
    /// The archive `docker load` reads: the config, the code layer, and a manifest that names
    /// every layer, those of the environment by paths the archive does not hold (the engine has
    /// them). The manifest goes last, so an archive cut short is never taken for a whole one.
    pub fn archive(&self) -> Result<Vec<u8>, ImageError> {
        let err = |source| ImageError::Write {
            what: format!("the image archive of {}", self.tag),
            source,
        };
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        let mut tar = Context::new();
        let code = format!("{}/layer.tar", hex(&self.diff_id));
        tar.add_dir(&hex(&self.diff_id), 0o755).map_err(err)?;
        tar.add_bytes(&code, &self.layer, 0o644).map_err(err)?;
        let config_name = format!("{}.json", hex(&self.id));
        tar.add_bytes(&config_name, &self.config, 0o644)
            .map_err(err)?;
        let mut layers: Vec<String> = self
            .env_layers
            .iter()
            .map(|d| format!("{}/layer.tar", hex(d)))
            .collect();
        layers.push(code);
        let manifest = [ArchiveManifest {
            config: config_name,
            repo_tags: vec![self.tag.clone()],
            layers,
        }];
        let manifest = serde_json::to_vec(&manifest).map_err(|e| err(e.into()))?;
        tar.add_bytes("manifest.json", &manifest, 0o644)
            .map_err(err)?;
        Ok(tar.finish().map_err(err)?.0)
    }

    /// Loads the image; returns the ID the engine gave it.
    pub async fn load(&self, docker: &Docker) -> Result<String, ImageError> {
        let archive = self.archive()?;
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut stream = docker.import_image(opts, bollard::body_full(archive.into()), None);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(super::load::load_error(&self.tag, e));
            }
        }
        match docker::image_id(docker, &self.tag).await? {
            Some(id) => Ok(id),
            None => Err(ImageError::LoadFailed {
                tag: self.tag.clone(),
                message: "the engine took the archive but has no image of that name".into(),
            }),
        }
    }
}

/// The project image `base` with one more layer: `files` (project path → file on this machine)
/// at their places under `/workspace`. A pipeline step in a cluster runs in it, so the pod
/// reads exactly the bytes the step's cache key names, whether `.dockerignore` keeps them out
/// of the project image or another step made them. Tagged `ferry/<name>-step:<hash>` by its
/// config's digest; written once.
pub async fn with_files(
    docker: &Docker,
    project: &Project,
    base: &Built,
    files: &[(String, std::path::PathBuf)],
    ui: &Ui,
) -> Result<Built, ImageError> {
    let ctx_err = |source| ImageError::Context {
        path: project.root.clone(),
        source,
    };
    let dir = WORKDIR.trim_start_matches('/');
    let mut ctx = Context::new();
    let mut dirs = BTreeSet::new();
    for (rel, _) in files {
        let mut at = String::from(dir);
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |x| x.1)
        {
            at = format!("{at}/{part}");
            dirs.insert(at.clone());
        }
    }
    ctx.add_dir(dir, 0o755).map_err(ctx_err)?;
    for d in &dirs {
        ctx.add_dir(d, 0o755).map_err(ctx_err)?;
    }
    for (rel, path) in files {
        ctx.add_file(&format!("{dir}/{rel}"), path)
            .map_err(ctx_err)?;
    }
    let (layer, digest) = ctx.finish().map_err(ctx_err)?;
    let diff_id = format!("sha256:{digest}");
    let inspect = docker
        .inspect_image(&base.id)
        .await
        .map_err(|e| DockerError::api(format!("inspecting {}", base.tag), e))?;
    let config = image_config(&inspect, &project.spec.name, "step", &diff_id).map_err(|e| {
        ImageError::LoadFailed {
            tag: base.tag.clone(),
            message: format!("cannot write the step image's config: {e}"),
        }
    })?;
    let hex = hex::encode(Sha256::digest(&config));
    let image = CodeImage {
        tag: format!("ferry/{}-step:{}", project.spec.name, &hex[..12]),
        id: format!("sha256:{hex}"),
        config,
        env_layers: inspect
            .root_fs
            .as_ref()
            .and_then(|r| r.layers.clone())
            .unwrap_or_default(),
        layer,
        diff_id,
    };
    if let Some(id) = docker::image_id(docker, &image.tag).await? {
        return Ok(Built {
            tag: image.tag,
            id,
            built: false,
        });
    }
    let step = ui.step(format!("writing step image {}", image.tag));
    match image.load(docker).await {
        Ok(id) => {
            step.finish(format!(
                "wrote step image {} ({} of inputs)",
                image.tag,
                crate::ui::human_bytes(image.layer.len() as u64)
            ));
            Ok(Built {
                tag: image.tag,
                id,
                built: true,
            })
        }
        Err(e) => {
            step.fail();
            Err(e)
        }
    }
}

/// `FERRY_PROJECT_IMAGE=build` asks for the classic build (`write`, the default, for the image
/// written here): a way out should an engine load the written image wrongly, and the baseline
/// of `bench/edit-train.sh`.
pub fn written_here() -> bool {
    std::env::var("FERRY_PROJECT_IMAGE").map_or(true, |v| v != "build")
}

/// Whether the engine keeps images in containerd's store, whose image load wants every layer.
pub async fn containerd_store(docker: &Docker) -> bool {
    let Ok(info) = docker.info().await else {
        return false;
    };
    info.driver_status.iter().flatten().any(|kv| {
        kv.iter()
            .any(|s| s.starts_with("io.containerd.snapshotter"))
    }) || info.driver.as_deref() == Some("overlayfs")
}

/// The project image ensured: found by its tag, or loaded; the lock records it either way.
pub async fn ensure(
    docker: &Docker,
    project: &Project,
    env: &Built,
    ui: &Ui,
) -> Result<Built, ImageError> {
    let image = plan_code_image(docker, project, env).await?;
    let tag = image.tag.clone();
    let (id, built) = match docker::image_id(docker, &tag).await? {
        Some(id) => (id, false),
        None => {
            let step = ui.step(format!("writing project image {tag}"));
            match image.load(docker).await {
                Ok(id) => {
                    step.finish(format!(
                        "wrote project image {tag} ({} of code)",
                        crate::ui::human_bytes(image.layer.len() as u64)
                    ));
                    (id, true)
                }
                Err(e) => {
                    step.fail();
                    return Err(e);
                }
            }
        }
    };
    record(project, &tag, &id)?;
    if built {
        untag_superseded(docker, project, &tag).await;
    }
    Ok(Built { tag, id, built })
}

/// Records the project image in `ferry.lock` and in the list of images made here.
pub fn record(project: &Project, tag: &str, id: &str) -> Result<(), ImageError> {
    let image = ImageRef {
        tag: tag.to_string(),
        id: id.to_string(),
        digest: None,
    };
    lock::update_entry(project, move |e| e.images.project = Some(image))?;
    let file = made_here_file(&project.root);
    let mut made = read_made_here(&file);
    if made.insert(tag.to_string()) {
        write_made_here(&file, &made);
    }
    Ok(())
}

fn made_here_file(root: &Path) -> std::path::PathBuf {
    root.join(crate::state::STATE_DIR).join(MADE_HERE)
}

fn read_made_here(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Best effort: the list only decides what may be untagged later, so a failed write costs at
/// most an image left tagged.
fn write_made_here(file: &Path, made: &BTreeSet<String>) {
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = file.with_extension("tmp");
    let text: String = made.iter().map(|t| format!("{t}\n")).collect();
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    }
}

/// Untags the project images made from this checkout before `current`, except those
/// `ferry.lock` names (an environment may run them). An image a container still uses keeps its
/// tag (the engine refuses), and is tried again next time.
pub async fn untag_superseded(docker: &Docker, project: &Project, current: &str) {
    let file = made_here_file(&project.root);
    let made = read_made_here(&file);
    let mut keep: BTreeSet<String> = BTreeSet::from([current.to_string()]);
    if let Ok(lock) = Lock::load(project) {
        keep.extend(
            lock.environments
                .values()
                .filter_map(|e| e.images.project.as_ref().map(|i| i.tag.clone())),
        );
    }
    let mut left = BTreeSet::new();
    for tag in &made {
        if keep.contains(tag) {
            left.insert(tag.clone());
            continue;
        }
        let opts = RemoveImageOptionsBuilder::default().build();
        match docker.remove_image(tag, Some(opts), None).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(_) => {
                left.insert(tag.clone());
            }
        }
    }
    if left != made {
        write_made_here(&file, &left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ImageConfig as EnvConfig, ImageInspect, ImageInspectRootFs};
    use std::collections::HashMap;

    fn env_image() -> ImageInspect {
        ImageInspect {
            architecture: Some("amd64".into()),
            os: Some("linux".into()),
            created: Some("2026-01-02T03:04:05Z".into()),
            root_fs: Some(ImageInspectRootFs {
                typ: "layers".into(),
                layers: Some(vec!["sha256:aa".into(), "sha256:bb".into()]),
            }),
            config: Some(EnvConfig {
                env: Some(vec!["PATH=/opt/venv/bin:/usr/bin".into()]),
                working_dir: Some("/workspace".into()),
                labels: Some(HashMap::from([
                    (LABEL_PROJECT.to_string(), "demo".to_string()),
                    (LABEL_ROLE.to_string(), "environment".to_string()),
                    ("z".to_string(), "1".to_string()),
                    ("a".to_string(), "2".to_string()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_config_is_the_environments_with_the_code_on_top() {
        let bytes = image_config(&env_image(), "demo", "project", "sha256:cc").unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["rootfs"]["diff_ids"],
            json!(["sha256:aa", "sha256:bb", "sha256:cc"])
        );
        assert_eq!(v["config"]["Labels"][LABEL_ROLE], "project");
        assert_eq!(v["config"]["Labels"]["z"], "1");
        assert_eq!(v["config"]["WorkingDir"], "/workspace");
        assert_eq!(v["config"]["Env"][0], "PATH=/opt/venv/bin:/usr/bin");
        // No build time: the environment's.
        assert_eq!(v["created"], "2026-01-02T03:04:05Z");
    }

    #[test]
    fn the_same_code_on_the_same_environment_gives_the_same_bytes() {
        // Labels come from a HashMap, whose order varies between instances.
        let a: Vec<Vec<u8>> = (0..8)
            .map(|_| image_config(&env_image(), "demo", "project", "sha256:cc").unwrap())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let other = image_config(&env_image(), "demo", "project", "sha256:dd").unwrap();
        assert_ne!(a[0], other);
    }

    #[test]
    fn the_code_layer_holds_the_kept_files_under_workspace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.py"), "print(1)\n").unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/big.csv"), "a,b\n").unwrap();
        std::fs::create_dir_all(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("pkg/m.py"), "").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "data/\n").unwrap();
        let (bytes, diff_id) = code_layer(dir.path()).unwrap();
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        let mut names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "workspace/",
                "workspace/.dockerignore",
                "workspace/pkg/",
                "workspace/pkg/m.py",
                "workspace/train.py"
            ]
        );
        // An edit changes the layer; the same files give the same layer.
        assert_eq!(code_layer(dir.path()).unwrap().1, diff_id);
        std::fs::write(dir.path().join("train.py"), "print(2)\n").unwrap();
        assert_ne!(code_layer(dir.path()).unwrap().1, diff_id);
    }

    #[test]
    fn the_archive_carries_only_the_code_layer_and_names_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.py"), "print(1)\n").unwrap();
        let (layer, diff_id) = code_layer(dir.path()).unwrap();
        let config = image_config(&env_image(), "demo", "project", &diff_id).unwrap();
        let hex = hex::encode(Sha256::digest(&config));
        let image = CodeImage {
            tag: format!("ferry/demo:{}", &hex[..12]),
            id: format!("sha256:{hex}"),
            config,
            env_layers: vec!["sha256:aa".into(), "sha256:bb".into()],
            layer,
            diff_id: diff_id.clone(),
        };
        let archive = image.archive().unwrap();
        let mut files = Vec::new();
        let mut manifest = Value::Null;
        for e in tar::Archive::new(archive.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                manifest = serde_json::from_reader(&mut e).unwrap();
            }
            files.push(name);
        }
        let code = format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"));
        assert!(files.contains(&code));
        assert!(files.contains(&format!("{hex}.json")));
        assert_eq!(files.last().map(String::as_str), Some("manifest.json"));
        assert!(
            !files
                .iter()
                .any(|f| f.starts_with("aa/") || f.starts_with("bb/"))
        );
        assert_eq!(
            manifest[0]["Layers"],
            json!(["aa/layer.tar", "bb/layer.tar", code])
        );
        assert_eq!(manifest[0]["RepoTags"], json!([image.tag]));
    }
}
