//! The serving image: exactly what `ferry serve-model` needs to run — ferry's own Linux binary,
//! the ONNX Runtime library, the shared libraries both load (found by reading their ELF headers,
//! the way the dynamic loader would), the model files and the serving config. No base image, so
//! nothing has to be pulled, and no shell or package manager inside.
//!
//! No builder either: ferry writes the image itself as an image archive in the layout `docker
//! save` writes (`manifest.json`, the image config, each layer as an uncompressed tar) and the
//! engine loads it as it is (`POST /images/load`). Every byte of the archive follows from the
//! files that go in — tar entries sorted, with fixed owner and time; a config with a fixed
//! creation time and its fields in a fixed order — and the engine keeps the config and the layer
//! tars byte for byte, so the image ID (the sha256 of the config) is the same whenever and
//! wherever the image is made, and so is the registry digest when the same engine pushes it.
//! A classic build would stamp the time of the build into the config instead.
//!
//! The image is tagged by its ID, and an existing tag is not loaded again.
//!
//! The libraries come from a root filesystem of the image's platform (a "sysroot": the
//! environment's base image's files, or Debian unpacked for that CPU; see `runtime_parts`),
//! resolved there as that system's loader would, so the machine that makes the image may be of
//! another OS or CPU. Only a CUDA image still takes its libraries from this machine, as the
//! GPU build of ONNX Runtime and CUDA's libraries are found here.
//!
//! Two layers, the one that changes least first: the runtime (binary, ONNX Runtime, the
//! libraries, the loader, the users) and the models with the serving config. A retrained model
//! changes only the second, so only it is pushed again.
//!
//! Layout inside the image:
//!
//! ```text
//! runtime layer
//! /usr/bin/ferry                     the binary (0755)
//! /usr/lib/ferry/libonnxruntime.so   found by `onnx::runtime_library()` as <exe>/../lib/ferry
//! /lib64/ld-linux-x86-64.so.2        the ELF interpreter, at its PT_INTERP path
//! /lib/x86_64-linux-gnu/libc.so.6 …  each library under the name it is needed by, in the
//!                                    directory the loader of its root filesystem finds it in
//! /etc/passwd, /etc/group            uid/gid 65532 named `ferry`
//! model layer
//! /etc/ferry/serving.json            the serving config (`server::config::CONFIG_PATH`)
//! /models/…                          the model files, at the paths the config names
//! ```
//!
//! Each layer also holds the directories above its files (0755), so it is a well-formed tree on
//! its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use goblin::elf::Elf;
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFDATA2LSB, Header, SIZEOF_IDENT};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::build::{Built, ImageError};
use super::context::Context;
use crate::docker::{self, LABEL_PROJECT, LABEL_ROLE};
use crate::onnx::{self, OnnxError};
use crate::platform::Platform;
use crate::server::config::{CONFIG_PATH, Device, ServingConfig};
use crate::ui::{Ui, human_bytes};

/// Where the binary goes; the library goes to `<dir of exe>/../lib/ferry/`, the first place
/// `onnx::runtime_library()` looks when `ORT_DYLIB_PATH` is unset.
pub const BINARY_PATH: &str = "/usr/bin/ferry";
pub const RUNTIME_PATH: &str = "/usr/lib/ferry/libonnxruntime.so";
/// Where ONNX Runtime looks for its provider libraries: the directory it was loaded from.
const RUNTIME_DIR: &str = "/usr/lib/ferry";

/// The libraries of ONNX Runtime's CUDA execution provider, which a GPU build of ONNX Runtime
/// keeps beside `libonnxruntime.so` and loads from there when a session asks for CUDA.
pub const CUDA_PROVIDER_LIBRARIES: [&str; 2] = [
    "libonnxruntime_providers_shared.so",
    "libonnxruntime_providers_cuda.so",
];

/// Libraries of the NVIDIA kernel driver: the NVIDIA Container Toolkit mounts the node's own
/// into a container given a GPU, and they must match its kernel module, so an image never
/// carries them.
fn is_driver_library(name: &str) -> bool {
    name.starts_with("libcuda.so") || name.starts_with("libnvidia-")
}

/// The user the server runs as: not root, and the uid distroless images use for "nonroot", so
/// cluster policies written for those (runAsNonRoot, fsGroup) fit ferry's image too.
pub const UID: u32 = 65532;

/// Named in the image's history, so part of the config and hence of the image ID and tag: bump
/// it when the layout or the config changes, so every image says which recipe made it.
const RECIPE: &str = "ferry-serving-v2";

/// The creation time of every serving image: a real one would make each image unique.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// The role label of the image (`LABEL_ROLE`), as the other images of a project have theirs.
const ROLE: &str = "serving";

/// The `PATH` the classic builder gives an image without one, kept so the image's environment
/// is what it was when it was built from a Dockerfile.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One model file and where the serving config expects it inside the image.
#[derive(Clone, Debug)]
pub struct ServingModel {
    pub host_path: PathBuf,
    /// Absolute, e.g. `/models/churn/default/model.onnx`.
    pub image_path: String,
}

pub struct ServingImageRequest<'a> {
    /// Names the image (`ferry/<project>-serve:<hash>`) and labels it.
    pub project: &'a str,
    /// A Linux build of ferry, usually `std::env::current_exe()`.
    pub binary: &'a Path,
    /// The ONNX Runtime library, usually `onnx::runtime_library()`.
    pub runtime: &'a Path,
    pub models: &'a [ServingModel],
    /// Must already name the models by their `image_path`.
    pub config: &'a ServingConfig,
}

/// The serving image, worked out but not written: its layers are hashed, its config is made,
/// and [`ServingContext::write_archive`] writes it (reading the files again, so nothing large
/// is held in memory).
pub struct ServingContext {
    /// `ferry/<project>-serve:<first 12 hex of the image ID>`.
    pub tag: String,
    /// `sha256:<hex>`, the sha256 of `config`: the ID the engine gives the loaded image.
    pub id: String,
    /// The image config, byte for byte as the archive carries it.
    pub config: Vec<u8>,
    /// The runtime layer, then the model layer.
    pub layers: Vec<Layer>,
    /// Bytes of file content in the image's root filesystem (about the image's size).
    pub content_bytes: u64,
    /// Libraries the CUDA execution provider needs that are not in the image: the driver's,
    /// which a GPU node provides, and those not found on this machine (each with what needs it).
    pub left_out: Vec<String>,
}

/// One layer of the serving image.
pub struct Layer {
    /// "runtime layer", "model layer": for messages.
    what: &'static str,
    /// Paths in the image and what they hold; in this order, parents come before children.
    entries: BTreeMap<String, Node>,
    /// `sha256:<hex>`, the sha256 of the layer's tar: what the engine calls its diff ID.
    pub diff_id: String,
    /// Bytes of the layer's tar.
    pub size: u64,
    /// Bytes of file content in it.
    content: u64,
}

/// What writing a layer gave.
struct Written {
    diff_id: String,
    size: u64,
    content: u64,
}

/// The platform an image is made for and the root filesystem its libraries come from.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub platform: Platform,
    /// A directory holding the platform's C library and loader at the paths the image will
    /// have them (an environment image's files, or a bootstrapped Debian tree). Nothing of this
    /// machine's own file system is read for the image's libraries.
    pub sysroot: &'a Path,
}

/// The serving image for `req`, loaded into the engine unless its tag already exists.
///
/// Every model is loaded in ONNX Runtime first: one that is not ONNX, does not load, or has an
/// output the server cannot send (ZipMap) fails here, before anything is built.
pub async fn ensure_serving_image(
    docker: &Docker,
    req: &ServingImageRequest<'_>,
    ui: &Ui,
) -> Result<Built, ImageError> {
    ensure_serving_image_for(docker, req, None, ui).await
}

/// [`ensure_serving_image`] for a platform whose libraries come from a sysroot (`None`: this
/// machine's own, as the loader here finds them).
pub async fn ensure_serving_image_for(
    docker: &Docker,
    req: &ServingImageRequest<'_>,
    target: Option<&Target<'_>>,
    ui: &Ui,
) -> Result<Built, ImageError> {
    let step = ui.step("checking models and collecting the serving image's files");
    // Loading models and hashing a few hundred MB of binaries blocks; keep it off the runtime.
    let mut owned = OwnedRequest::from(req);
    owned.target = target.map(|t| (t.platform, t.sysroot.to_path_buf()));
    let ctx = match tokio::task::spawn_blocking(move || owned.context()).await {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => {
            step.fail();
            return Err(e);
        }
        Err(join) => {
            step.fail();
            return Err(ImageError::Context {
                path: req.binary.to_path_buf(),
                source: io::Error::other(format!("assembling the image panicked: {join}")),
            });
        }
    };
    if let Some(id) = docker::image_id(docker, &ctx.tag).await? {
        step.finish(format!("serving image {} is up to date", ctx.tag));
        return Ok(Built {
            tag: ctx.tag,
            id,
            built: false,
        });
    }
    step.finish(format!(
        "serving image files ready ({})",
        human_bytes(ctx.content_bytes)
    ));
    if !ctx.left_out.is_empty() {
        ui.warn(format!(
            "the CUDA execution provider will look for these libraries on the node, as they are not in the image: {}\n  hint: the NVIDIA Container Toolkit (or device plugin) provides the driver's; put the CUDA and cuDNN libraries beside the ONNX Runtime library (or install them where the loader finds them) so they go into the image",
            ctx.left_out.join(", ")
        ));
    }
    let tag = ctx.tag.clone();
    let id = load(docker, ctx, ui).await?;
    Ok(Built {
        tag,
        id,
        built: true,
    })
}

/// The serving image for `req`, after checking the models: its layers hashed and its config
/// made. Blocking: it loads every model in ONNX Runtime and reads every file that goes into the
/// image.
pub fn serving_context(req: &ServingImageRequest<'_>) -> Result<ServingContext, ImageError> {
    serving_context_for(req, None)
}

/// [`serving_context`] for a target platform: the binary and ONNX Runtime must be of its CPU,
/// and every library and the loader come from its sysroot, placed at the paths they have there.
pub fn serving_context_for(
    req: &ServingImageRequest<'_>,
    target: Option<&Target<'_>>,
) -> Result<ServingContext, ImageError> {
    if let Some(t) = target {
        for file in [req.binary, req.runtime] {
            check_machine(file, t.platform)?;
        }
        if req.config.device == Device::Cuda {
            return Err(context_error(
                req.runtime,
                format!(
                    "serve.device is cuda, and the CUDA execution provider's libraries are taken from this machine, so a CUDA serving image is made only for this machine's platform, not from {}\n  hint: build it on a {} machine with the GPU build of ONNX Runtime, or set serve.device: cpu",
                    t.sysroot.display(),
                    t.platform
                ),
            ));
        }
    }
    for m in req.models {
        check_model(&m.host_path)?;
    }
    check_layout(req)?;

    // Both layers in one map, so a path is claimed once across the image.
    let mut rootfs: BTreeMap<String, (Part, Entry)> = BTreeMap::new();
    let mut put = |image_path: String, part: Part, entry: Entry| -> Result<(), ImageError> {
        if let Some((_, old)) = rootfs.get(&image_path)
            && *old != entry
        {
            return Err(context_error(
                entry.origin(),
                format!(
                    "{image_path} in the image would hold both {} and {}",
                    old.origin().display(),
                    entry.origin().display()
                ),
            ));
        }
        rootfs.insert(image_path, (part, entry));
        Ok(())
    };

    put(
        BINARY_PATH.into(),
        Part::Runtime,
        Entry::file(req.binary, 0o755),
    )?;
    put(
        RUNTIME_PATH.into(),
        Part::Runtime,
        Entry::file(req.runtime, 0o755),
    )?;

    let providers = match req.config.device {
        Device::Cpu => Vec::new(),
        Device::Cuda => cuda_providers(req.runtime)?,
    };
    for p in &providers {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        put(
            format!("{RUNTIME_DIR}/{name}"),
            Part::Runtime,
            Entry::file(p, 0o755),
        )?;
    }

    // Libraries that sit next to the binary or the runtime on the host (found through
    // `$ORIGIN`) move with them.
    let mut moved: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(d) = req.runtime.parent() {
        moved.push((d.to_path_buf(), RUNTIME_DIR));
    }
    if let Some(d) = req.binary.parent() {
        moved.push((d.to_path_buf(), "/usr/bin"));
    }
    let mut roots = match target {
        // Opened by their places in the image, so `$ORIGIN` means what it will there.
        Some(_) => {
            moved.clear();
            vec![
                Root {
                    source: req.binary,
                    path: BINARY_PATH.into(),
                    optional: false,
                },
                Root {
                    source: req.runtime,
                    path: RUNTIME_PATH.into(),
                    optional: false,
                },
            ]
        }
        None => vec![
            Root::here(req.binary, false),
            Root::here(req.runtime, false),
        ],
    };
    roots.extend(providers.iter().map(|p| Root::here(p, true)));
    let mut resolver = match target {
        Some(t) => Resolver::sysroot(t.sysroot, t.platform.arch),
        None => Resolver::host(),
    };
    let mut lib_dirs = BTreeSet::new();
    if !providers.is_empty() {
        // The image names the runtime's directory in LD_LIBRARY_PATH, so the CUDA libraries
        // the provider needs are found there first, in the image as on this machine.
        if let Some(d) = req.runtime.parent() {
            resolver.library_path.push(d.to_path_buf());
        }
        lib_dirs.insert(RUNTIME_DIR.to_string());
        // Where the NVIDIA Container Toolkit mounts the driver's libraries; a scratch image has
        // no ld.so.cache to find them by.
        lib_dirs.extend(driver_dirs());
    }
    let closure = resolve_closure(&roots, &resolver)?;
    for lib in &closure.libraries {
        let image_path = image_path_of(&lib.path, &moved)?;
        if let Some((dir, _)) = image_path.rsplit_once('/') {
            lib_dirs.insert(dir.to_string());
        }
        put(image_path, Part::Runtime, Entry::file(&lib.source, 0o755))?;
    }
    for interp in &closure.interpreters {
        put(
            image_path_of(&interp.path, &[])?,
            Part::Runtime,
            Entry::file(&interp.source, 0o755),
        )?;
    }
    put(
        "/etc/passwd".into(),
        Part::Runtime,
        Entry::bytes(
            format!("root:x:0:0:root:/root:/sbin/nologin\nferry:x:{UID}:{UID}:ferry:/nonexistent:/sbin/nologin\n")
                .into_bytes(),
            0o644,
        ),
    )?;
    put(
        "/etc/group".into(),
        Part::Runtime,
        Entry::bytes(format!("root:x:0:\nferry:x:{UID}:\n").into_bytes(), 0o644),
    )?;

    let mut config = serde_json::to_vec_pretty(req.config).map_err(|e| {
        context_error(
            Path::new(CONFIG_PATH),
            format!("cannot write the serving config: {e}"),
        )
    })?;
    config.push(b'\n');
    put(
        CONFIG_PATH.into(),
        Part::Models,
        Entry::bytes(config, 0o644),
    )?;
    for m in req.models {
        put(
            m.image_path.clone(),
            Part::Models,
            Entry::file(&m.host_path, 0o644),
        )?;
    }
    check_tree(&rootfs)?;

    let mut parts: [BTreeMap<String, Entry>; 2] = Default::default();
    for (path, (part, entry)) in rootfs {
        parts[part as usize].insert(path, entry);
    }
    let [runtime, models] = parts;
    let layers = vec![
        Layer::new("the serving image's runtime layer", runtime)?,
        Layer::new("the serving image's model layer", models)?,
    ];
    let content_bytes = layers.iter().map(|l| l.content).sum();
    let left_out = closure.left_out;

    let architecture = match target {
        Some(t) => t.platform.arch.go_name(),
        None => go_arch(elf_kind(req.binary)),
    };
    let config = image_config(
        architecture,
        &lib_dirs,
        req.config.port,
        req.project,
        &layers,
    );
    let config = serde_json::to_vec(&config).map_err(|e| ImageError::Write {
        what: "the serving image's config".into(),
        source: e.into(),
    })?;
    let digest = hex::encode(Sha256::digest(&config));
    Ok(ServingContext {
        tag: format!("ferry/{}-serve:{}", req.project, &digest[..12]),
        id: format!("sha256:{digest}"),
        config,
        layers,
        content_bytes,
        left_out,
    })
}

/// The CUDA provider's libraries beside the ONNX Runtime library; an error naming what is
/// missing when the library there is not a GPU build.
fn cuda_providers(runtime: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let dir = runtime.parent().unwrap_or(Path::new("/"));
    let missing: Vec<&str> = CUDA_PROVIDER_LIBRARIES
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(context_error(
            runtime,
            format!(
                "serve.device is cuda, but {} {} not beside this ONNX Runtime library, so it has no CUDA execution provider to put in the serving image\n  hint: use a GPU build of ONNX Runtime (the onnxruntime-gpu wheel or the onnxruntime-linux-x64-gpu release ship these files beside libonnxruntime.so) and point {} at it, or set serve.device: cpu",
                missing.join(" and "),
                if missing.len() == 1 { "is" } else { "are" },
                onnx::DYLIB_ENV
            ),
        ));
    }
    Ok(CUDA_PROVIDER_LIBRARIES
        .into_iter()
        .map(|name| dir.join(name))
        .collect())
}

/// The directories the NVIDIA Container Toolkit puts the driver's libraries in.
fn driver_dirs() -> Vec<String> {
    let mut dirs = vec!["/usr/lib64".to_string()];
    match std::env::consts::ARCH {
        "x86_64" => dirs.push("/usr/lib/x86_64-linux-gnu".into()),
        "aarch64" => dirs.push("/usr/lib/aarch64-linux-gnu".into()),
        _ => {}
    }
    dirs
}

impl ServingContext {
    /// Every file of the image, layer by layer, with the file of this machine it is read from
    /// (None for what ferry writes itself: the users, the serving config).
    pub fn files(&self) -> Vec<(String, Option<PathBuf>)> {
        self.layers
            .iter()
            .flat_map(|l| &l.entries)
            .filter_map(|(path, node)| match node {
                Node::Dir => None,
                Node::File(Entry {
                    source: Source::File(p),
                    ..
                }) => Some((path.clone(), Some(p.clone()))),
                Node::File(Entry {
                    source: Source::Bytes(_),
                    ..
                }) => Some((path.clone(), None)),
            })
            .collect()
    }

    /// Writes the image archive that `docker load` (`POST /images/load`) takes: each layer's tar
    /// as `<diff id hex>/layer.tar`, the config as `<image id hex>.json`, and `manifest.json`,
    /// which names them and the tag. The manifest goes last, so an archive cut short is never
    /// taken for a whole one. Blocking: it reads the image's files again, and fails when one no
    /// longer gives the layer its diff ID.
    pub fn write_archive(&self, w: impl Write) -> Result<(), ImageError> {
        let err = |source: io::Error| ImageError::Write {
            what: format!("the image archive of {}", self.tag),
            source,
        };
        let mut tar = Context::to_writer(w);
        let mut layer_names = Vec::new();
        for layer in &self.layers {
            let hex = hex_of(&layer.diff_id);
            tar.add_dir(hex, 0o755).map_err(err)?;
            let name = format!("{hex}/layer.tar");
            let mut written = Ok(());
            tar.add_written(&name, layer.size, 0o644, |out| {
                written = layer.write(out).and_then(|w| {
                    if w.diff_id == layer.diff_id {
                        Ok(())
                    } else {
                        Err(layer.changed())
                    }
                });
                // The tar needs an io::Error; the typed one is kept and returned below.
                written
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .map_err(|e| match written {
                Err(typed) => typed,
                // A file that changed its size shows up as a count the header does not match.
                Ok(()) if e.kind() == io::ErrorKind::InvalidData => layer.changed(),
                Ok(()) => err(e),
            })?;
            layer_names.push(name);
        }
        let config_name = format!("{}.json", hex_of(&self.id));
        tar.add_bytes(&config_name, &self.config, 0o644)
            .map_err(err)?;
        let manifest = [ArchiveManifest {
            config: config_name,
            repo_tags: vec![self.tag.clone()],
            layers: layer_names,
        }];
        let manifest = serde_json::to_vec(&manifest).map_err(|e| err(e.into()))?;
        tar.add_bytes("manifest.json", &manifest, 0o644)
            .map_err(err)?;
        tar.into_inner().map_err(err)?;
        Ok(())
    }
}

impl Layer {
    /// The layer of `files` (absolute paths in the image), with every directory above them, and
    /// its diff ID worked out by writing it once.
    fn new(what: &'static str, files: BTreeMap<String, Entry>) -> Result<Layer, ImageError> {
        let mut entries = BTreeMap::new();
        for path in files.keys() {
            let mut dir = path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                if parent.is_empty() {
                    break;
                }
                entries.insert(parent.to_string(), Node::Dir);
                dir = parent;
            }
        }
        entries.extend(files.into_iter().map(|(p, e)| (p, Node::File(e))));
        let mut layer = Layer {
            what,
            entries,
            diff_id: String::new(),
            size: 0,
            content: 0,
        };
        let written = layer.write(&mut io::sink())?;
        layer.diff_id = written.diff_id;
        layer.size = written.size;
        layer.content = written.content;
        Ok(layer)
    }

    /// Writes the layer's tar to `w`.
    fn write(&self, w: &mut dyn Write) -> Result<Written, ImageError> {
        let mut hashed = Hashed {
            inner: w,
            hash: Sha256::new(),
            len: 0,
        };
        let out_err = |source: io::Error| ImageError::Write {
            what: self.what.to_string(),
            source,
        };
        let mut tar = Context::to_writer(&mut hashed);
        let mut content = 0;
        for (path, node) in &self.entries {
            // Names in a layer are relative to its root, as the engine writes them.
            let name = path.trim_start_matches('/');
            match node {
                Node::Dir => tar.add_dir(name, 0o755).map_err(out_err)?,
                Node::File(Entry {
                    source: Source::File(p),
                    mode,
                }) => {
                    content += tar.add_file_with_mode(name, p, *mode).map_err(|source| {
                        ImageError::Read {
                            path: p.clone(),
                            source,
                        }
                    })?;
                }
                Node::File(Entry {
                    source: Source::Bytes(b),
                    mode,
                }) => {
                    tar.add_bytes(name, b, *mode).map_err(out_err)?;
                    content += b.len() as u64;
                }
            }
        }
        tar.into_inner().map_err(out_err)?;
        let digest = hex::encode(hashed.hash.finalize());
        Ok(Written {
            diff_id: format!("sha256:{digest}"),
            size: hashed.len,
            content,
        })
    }

    /// The paths in the layer, directories with a trailing `/`, in the order of its tar.
    #[cfg(test)]
    fn paths(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(p, n)| match n {
                Node::Dir => format!("{p}/"),
                Node::File(_) => p.clone(),
            })
            .collect()
    }

    fn changed(&self) -> ImageError {
        ImageError::Write {
            what: self.what.to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "its files changed while the image was written (it is no longer {}); run the command again",
                    self.diff_id
                ),
            ),
        }
    }
}

/// Streams the image archive to the engine's image load and returns the loaded image's ID.
async fn load(docker: &Docker, ctx: ServingContext, ui: &Ui) -> Result<String, ImageError> {
    let tag = ctx.tag.clone();
    let step = ui.step(format!("loading serving image {tag}"));
    let loaded =
        super::load::stream_archive(docker, &tag, &step, move |out| ctx.write_archive(out)).await;
    let id = match loaded {
        Ok(id) => id,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    step.finish(format!("built serving image {tag}"));
    Ok(id)
}
/// Every shared library the given ELF files need, recursively, as the dynamic loader would find
/// them (each path is the directory searched plus the `DT_NEEDED` name, so it may be a symlink),
/// followed by their ELF interpreter(s) (`PT_INTERP`). The inputs themselves are not listed.
pub fn library_closure(elf: &[&Path]) -> Result<Vec<PathBuf>, ImageError> {
    let roots: Vec<Root<'_>> = elf.iter().map(|p| Root::here(p, false)).collect();
    let c = resolve_closure(&roots, &Resolver::host())?;
    Ok(c.libraries
        .into_iter()
        .chain(c.interpreters)
        .map(|l| l.path)
        .collect())
}

/// [`library_closure`] as a system rooted at `sysroot` loads it: each library as the loader
/// there finds it (its path in that system) with the file under `sysroot` that holds it. The
/// inputs are read from where they are and opened as the paths given with them.
pub fn sysroot_closure(
    elf: &[(&Path, &str)],
    sysroot: &Path,
    platform: Platform,
) -> Result<Vec<(PathBuf, PathBuf)>, ImageError> {
    let roots: Vec<Root<'_>> = elf
        .iter()
        .map(|(source, path)| Root {
            source,
            path: PathBuf::from(path),
            optional: false,
        })
        .collect();
    let c = resolve_closure(&roots, &Resolver::sysroot(sysroot, platform.arch))?;
    Ok(c.libraries
        .into_iter()
        .chain(c.interpreters)
        .map(|l| (l.path, l.source))
        .collect())
}

/// Refuses an ELF file that is not a 64-bit little-endian object of `platform`'s CPU.
pub fn check_machine(path: &Path, platform: Platform) -> Result<(), ImageError> {
    use goblin::elf::header::ELFCLASS64;
    match elf_kind(path) {
        Some((ELFCLASS64, m, ELFDATA2LSB)) if m == platform.arch.elf_machine() => Ok(()),
        Some((_, m, _)) => Err(context_error(
            path,
            format!(
                "it is built for {} (ELF machine {m}), not for {platform}\n  hint: give the {platform} build of this file",
                crate::platform::Arch::from_elf_machine(m)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "another CPU".into())
            ),
        )),
        None => Err(context_error(
            path,
            format!("not an ELF file, so not a {platform} program or library"),
        )),
    }
}

/// What `docker load` reads first: the config and layers of each image in the archive, and the
/// tags to give it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ArchiveManifest {
    pub(super) config: String,
    pub(super) repo_tags: Vec<String>,
    pub(super) layers: Vec<String>,
}

/// The image config (the OCI image spec's, which the engine reads as its own), with its fields
/// in the order the engine writes them. Structs rather than maps, so the bytes never depend on
/// a hash order.
#[derive(Serialize)]
struct ImageConfig {
    architecture: &'static str,
    config: RunConfig,
    created: &'static str,
    history: Vec<History>,
    os: &'static str,
    rootfs: RootFs,
}

/// What the Dockerfile of a classic build set: the user, the environment, the entrypoint, the
/// exposed port, and the labels the build added.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: String,
    exposed_ports: BTreeMap<String, Empty>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[derive(Serialize)]
pub(super) struct RootFs {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) diff_ids: Vec<String>,
}

fn image_config(
    architecture: &'static str,
    lib_dirs: &BTreeSet<String>,
    port: u16,
    project: &str,
    layers: &[Layer],
) -> ImageConfig {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    // The image has no /etc/ld.so.cache, so the loader falls back to its compiled-in system
    // directories, which differ between distributions; naming the directories the libraries
    // were put in makes the lookup exact whatever host made the image.
    if !lib_dirs.is_empty() {
        let dirs: Vec<&str> = lib_dirs.iter().map(String::as_str).collect();
        env.push(format!("LD_LIBRARY_PATH={}", dirs.join(":")));
    }
    let what = [
        "runtime: ferry, ONNX Runtime, their shared libraries and loader, /etc/passwd, /etc/group",
        "models and the serving config",
    ];
    ImageConfig {
        architecture,
        config: RunConfig {
            user: format!("{UID}:{UID}"),
            exposed_ports: BTreeMap::from([(format!("{port}/tcp"), Empty {})]),
            env,
            entrypoint: [BINARY_PATH, "serve-model", "--config", CONFIG_PATH]
                .map(str::to_string)
                .into(),
            labels: BTreeMap::from([
                (LABEL_PROJECT.to_string(), project.to_string()),
                (LABEL_ROLE.to_string(), ROLE.to_string()),
            ]),
        },
        created: CREATED,
        history: layers
            .iter()
            .zip(what)
            .map(|(_, what)| History {
                created: CREATED,
                created_by: format!("{RECIPE}: {what}"),
            })
            .collect(),
        os: "linux",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
    }
}

/// The Go name of the architecture of an ELF file (class and machine), as image configs write
/// it; this machine's when the file's is not one ferry knows.
fn go_arch(kind: Option<(u8, u16, u8)>) -> &'static str {
    use goblin::elf::header::{EM_386, EM_AARCH64, EM_ARM, EM_PPC64, EM_RISCV, EM_S390, EM_X86_64};
    match kind {
        Some((_, EM_X86_64, _)) => "amd64",
        Some((_, EM_AARCH64, _)) => "arm64",
        Some((_, EM_386, _)) => "386",
        Some((_, EM_ARM, _)) => "arm",
        Some((_, EM_RISCV, _)) => "riscv64",
        Some((_, EM_S390, _)) => "s390x",
        Some((_, EM_PPC64, data)) if data == ELFDATA2LSB => "ppc64le",
        _ => match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        },
    }
}

/// The hex of a `sha256:<hex>` digest.
fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Which layer a file goes into; the index of that layer.
#[derive(Clone, Copy)]
enum Part {
    Runtime = 0,
    Models = 1,
}

/// No file may sit where another file needs a directory, in either layer: the tree would not
/// hold both.
fn check_tree(rootfs: &BTreeMap<String, (Part, Entry)>) -> Result<(), ImageError> {
    for (path, (_, entry)) in rootfs {
        let mut dir = path.as_str();
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if let Some((_, other)) = rootfs.get(parent) {
                return Err(context_error(
                    entry.origin(),
                    format!(
                        "{path} in the image would be inside {parent}, which holds {}",
                        other.origin().display()
                    ),
                ));
            }
            dir = parent;
        }
    }
    Ok(())
}

/// Hashes and counts what goes through.
pub(super) struct Hashed<'a> {
    pub(super) inner: &'a mut dyn Write,
    pub(super) hash: Sha256,
    pub(super) len: u64,
}

impl Write for Hashed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Loads the model as the server will, and refuses what the server would refuse at start.
fn check_model(path: &Path) -> Result<(), ImageError> {
    let summary = onnx::check_model(path).map_err(|e| match e {
        OnnxError::ModelNotFound { path } => ImageError::Read {
            path,
            source: io::Error::new(io::ErrorKind::NotFound, "the model file does not exist"),
        },
        OnnxError::ModelLoad { path, message } => context_error(
            &path,
            format!("not a model ONNX Runtime can load: {message}"),
        ),
        other => context_error(path, other.to_string()),
    })?;
    let odd: Vec<String> = summary
        .inputs
        .iter()
        .chain(&summary.outputs)
        .filter(|t| t.not_tensor)
        .map(|t| format!("{} ({})", t.name, t.datatype))
        .collect();
    if odd.is_empty() {
        return Ok(());
    }
    Err(context_error(
        path,
        format!(
            "the model has values that are not tensors, which the inference protocol cannot carry: {}\n  hint: for a scikit-learn classifier, export without ZipMap: `to_onnx(clf, ..., options={{id(clf): {{\"zipmap\": False}}}})` (skl2onnx)",
            odd.join(", ")
        ),
    ))
}

/// Model paths must be absolute, distinct from ferry's own files, and be what the config names,
/// or the server would fail at start inside a finished image.
fn check_layout(req: &ServingImageRequest<'_>) -> Result<(), ImageError> {
    let mut placed = BTreeSet::new();
    for m in req.models {
        let p = Path::new(&m.image_path);
        let plain = p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && !m.image_path.ends_with('/');
        if !plain {
            return Err(context_error(
                &m.host_path,
                format!(
                    "its place in the image, {:?}, must be an absolute file path without `.` or `..`",
                    m.image_path
                ),
            ));
        }
        let reserved = ["/usr/", "/lib", "/etc/", "/proc/", "/sys/", "/dev/"];
        if reserved.iter().any(|r| m.image_path.starts_with(r)) {
            return Err(context_error(
                &m.host_path,
                format!(
                    "its place in the image, {}, is where ferry's own files go; use a path under /models/",
                    m.image_path
                ),
            ));
        }
        placed.insert(m.image_path.as_str());
    }
    for model in &req.config.models {
        for v in &model.variants {
            let named = v.path.to_string_lossy();
            if !placed.contains(named.as_ref()) {
                return Err(context_error(
                    Path::new(CONFIG_PATH),
                    format!(
                        "variant {}/{} names {named}, which no model file is put at (the image would have: {})",
                        model.name,
                        v.name,
                        placed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn context_error(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Context {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, message.into()),
    }
}

/// The absolute path `host` gets in the image, as a `/`-separated string.
fn image_path_of(host: &Path, moved: &[(PathBuf, &str)]) -> Result<String, ImageError> {
    if let (Some(dir), Some(name)) = (host.parent(), host.file_name())
        && let Some((_, to)) = moved.iter().find(|(from, _)| from == dir)
    {
        return Ok(format!("{to}/{}", name.to_string_lossy()));
    }
    let s = host
        .to_str()
        .filter(|s| s.starts_with('/'))
        .ok_or_else(|| {
            context_error(
                host,
                "a library path must be absolute UTF-8 to be placed in the image",
            )
        })?;
    Ok(s.to_string())
}

/// One file of the image's root filesystem.
#[derive(PartialEq, Eq)]
struct Entry {
    source: Source,
    mode: u32,
}

/// What a path in a layer is.
enum Node {
    Dir,
    File(Entry),
}

#[derive(PartialEq, Eq)]
enum Source {
    /// Read when the layer is written; a symlink gives its target's content.
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Entry {
    fn file(path: &Path, mode: u32) -> Entry {
        Entry {
            source: Source::File(path.to_path_buf()),
            mode,
        }
    }
    fn bytes(data: Vec<u8>, mode: u32) -> Entry {
        Entry {
            source: Source::Bytes(data),
            mode,
        }
    }
    fn origin(&self) -> &Path {
        match &self.source {
            Source::File(p) => p,
            Source::Bytes(_) => Path::new("(generated)"),
        }
    }
}

/// The request with owned data, to move onto a blocking thread.
struct OwnedRequest {
    project: String,
    binary: PathBuf,
    runtime: PathBuf,
    models: Vec<ServingModel>,
    config: ServingConfig,
    target: Option<(Platform, PathBuf)>,
}

impl From<&ServingImageRequest<'_>> for OwnedRequest {
    fn from(r: &ServingImageRequest<'_>) -> Self {
        OwnedRequest {
            project: r.project.to_string(),
            binary: r.binary.to_path_buf(),
            runtime: r.runtime.to_path_buf(),
            models: r.models.to_vec(),
            config: r.config.clone(),
            target: None,
        }
    }
}

impl OwnedRequest {
    fn context(&self) -> Result<ServingContext, ImageError> {
        let target = self.target.as_ref().map(|(platform, sysroot)| Target {
            platform: *platform,
            sysroot,
        });
        serving_context_for(
            &ServingImageRequest {
                project: &self.project,
                binary: &self.binary,
                runtime: &self.runtime,
                models: &self.models,
                config: &self.config,
            },
            target.as_ref(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Shared-library closure

/// Where the loader looks besides an object's own RPATH/RUNPATH, and which files it finds there.
struct Resolver {
    /// None: this machine's own files. Some: a sysroot, the image's root filesystem as a
    /// directory here; every path the loader looks at is a path in the image, read under it.
    root: Option<PathBuf>,
    /// What the image's LD_LIBRARY_PATH makes the loader search: after RPATH, before RUNPATH.
    library_path: Vec<PathBuf>,
    /// `/etc/ld.so.conf` (what `ld.so.cache` is built from), then the loader's built-in dirs.
    system_dirs: Vec<PathBuf>,
}

impl Resolver {
    fn host() -> Resolver {
        let mut dirs = Vec::new();
        ld_so_conf(None, Path::new("/etc/ld.so.conf"), 0, &mut dirs);
        Resolver::with_conf_dirs(dirs, crate::platform::Arch::host())
    }

    /// The loader of a system whose root filesystem is `root` and whose CPU is `arch`: its
    /// `ld.so.conf` and multiarch directories, not this machine's.
    fn sysroot(root: &Path, arch: crate::platform::Arch) -> Resolver {
        let mut dirs = Vec::new();
        ld_so_conf(Some(root), Path::new("/etc/ld.so.conf"), 0, &mut dirs);
        let mut r = Resolver::with_conf_dirs(dirs, Some(arch));
        r.root = Some(root.to_path_buf());
        r
    }

    fn with_conf_dirs(mut dirs: Vec<PathBuf>, arch: Option<crate::platform::Arch>) -> Resolver {
        // glibc's compiled-in system dirs: Debian-style multiarch, Fedora-style lib64, plain.
        if let Some(a) = arch {
            dirs.push(Path::new("/lib").join(a.multiarch()));
            dirs.push(Path::new("/usr/lib").join(a.multiarch()));
        }
        dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
        let mut seen = BTreeSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Resolver {
            root: None,
            library_path: Vec::new(),
            system_dirs: dirs,
        }
    }

    /// The file that holds what the loader finds at `path`; None when nothing is there.
    fn locate(&self, path: &Path) -> Option<PathBuf> {
        match &self.root {
            None => Some(path.to_path_buf()),
            Some(root) => resolve_in_root(root, path),
        }
    }
}

/// The file under `sysroot` that a program running in that root filesystem finds at `path`
/// (symlinks followed inside it); None if there is none.
pub fn resolve_in_sysroot(sysroot: &Path, path: &Path) -> Option<PathBuf> {
    resolve_in_root(sysroot, path)
}

/// `path` (absolute, as the image sees it) inside `root`, with every symlink on the way followed
/// as the image would follow it: an absolute target starts again at `root`, and `..` stops at
/// it, so nothing outside the root is ever reached. None if it does not exist or loops.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::collections::VecDeque;
    let mut todo: VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            at.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        at.push(part);
        let here: PathBuf = at.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            // The loader's own limit on links is about this; it also ends loops.
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            at.pop();
            if target.is_absolute() {
                at.clear();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push_front(n.to_os_string()),
                    Component::ParentDir => todo.push_front("..".into()),
                    _ => {}
                }
            }
        }
    }
    Some(at.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Directories listed in an `ld.so.conf`, following `include` lines (globs allowed). With a
/// `root`, `file` and the includes are paths in that root filesystem.
fn ld_so_conf(root: Option<&Path>, file: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    // A missing or unreadable file adds nothing, as for ldconfig; a cycle of includes stops.
    let real = match root {
        None => Some(file.to_path_buf()),
        Some(r) => resolve_in_root(r, file),
    };
    let Some(text) = real.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return;
    };
    if depth > 8 {
        return;
    }
    let base = file.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(rest) = line.strip_prefix("include")
            && rest.starts_with([' ', '\t'])
        {
            for pattern in rest.split_whitespace() {
                for f in glob_files(root, &base.join(pattern)) {
                    ld_so_conf(root, &f, depth + 1, out);
                }
            }
        } else if line.starts_with("hwcap") {
            continue;
        } else {
            for dir in line
                .split([' ', '\t', ',', ':'])
                .filter(|d| d.starts_with('/'))
            {
                out.push(PathBuf::from(dir));
            }
        }
    }
}

/// Files matching `pattern` (a glob in its last component only, as ld.so.conf uses), sorted;
/// with a `root`, paths in that root filesystem.
fn glob_files(root: Option<&Path>, pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    if !name.contains(['*', '?', '[']) {
        return vec![pattern.to_path_buf()];
    }
    let Ok(glob) = globset::Glob::new(&name) else {
        return Vec::new();
    };
    let m = glob.compile_matcher();
    let real = match root {
        None => Some(dir.to_path_buf()),
        Some(r) => resolve_in_root(r, dir),
    };
    let Some(Ok(entries)) = real.map(std::fs::read_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| m.is_match(e.file_name()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    files.sort();
    files
}

struct Closure {
    libraries: Vec<Library>,
    interpreters: Vec<Library>,
    /// Libraries needed by optional roots that were not taken: `name (needed by FILE)`.
    left_out: Vec<String>,
}

struct Library {
    /// The search directory joined with the needed name: where the loader finds it.
    path: PathBuf,
    /// The file read for it: `path` itself on this machine, or its place in a sysroot.
    source: PathBuf,
}

/// An object to start from: the file, the path the loader opens it by, and whether it is
/// optional.
struct Root<'a> {
    source: &'a Path,
    path: PathBuf,
    optional: bool,
}

impl<'a> Root<'a> {
    /// A file of this machine, opened where it is.
    fn here(source: &'a Path, optional: bool) -> Root<'a> {
        Root {
            source,
            path: source.to_path_buf(),
            optional,
        }
    }
}

/// What the loader reads from one object.
struct Object {
    /// The path it is opened by (in the image, for a sysroot).
    path: PathBuf,
    kind: (u8, u16, u8),
    needed: Vec<String>,
    rpath: Vec<PathBuf>,
    runpath: Vec<PathBuf>,
    soname: Option<String>,
    interpreter: Option<String>,
    /// Index of the object that needed this one; RPATHs are inherited along this chain.
    parent: Option<usize>,
    /// Loaded only by an optional root: a library it needs may be missing (left to the node).
    optional: bool,
}

/// The closure of `roots`: what an optional root needs and cannot be found (or is the GPU
/// driver's) is listed in `left_out` instead of failing.
fn resolve_closure(roots: &[Root<'_>], resolver: &Resolver) -> Result<Closure, ImageError> {
    let mut objects: Vec<Object> = Vec::new();
    // needed name or soname → index of the object that satisfies it, as the loader reuses an
    // already loaded object whose name matches.
    let mut loaded: HashMap<String, usize> = HashMap::new();
    let mut libraries = Vec::new();
    let mut left_out = Vec::new();
    for root in roots {
        let mut obj = read_object(root.source, &root.path, None)?;
        obj.optional = root.optional;
        if let Some(s) = &obj.soname {
            loaded.entry(s.clone()).or_insert(objects.len());
        }
        objects.push(obj);
    }

    let mut next = 0;
    while next < objects.len() {
        let me = next;
        next += 1;
        for name in objects[me].needed.clone() {
            if loaded.contains_key(&name) {
                continue;
            }
            let optional = objects[me].optional;
            let leave = |why: &str, left_out: &mut Vec<String>| {
                let entry = format!("{name} ({why} {})", objects[me].path.display());
                if !left_out.contains(&entry) {
                    left_out.push(entry);
                }
            };
            if optional && is_driver_library(&name) {
                leave("the GPU driver's, needed by", &mut left_out);
                continue;
            }
            let (path, source) = match find_library(&name, me, &objects, resolver) {
                Ok(p) => p,
                Err(_) if optional => {
                    leave("not found, needed by", &mut left_out);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut obj = read_object(&source, &path, Some(me))?;
            obj.optional = optional;
            let idx = objects.len();
            loaded.insert(name, idx);
            if let Some(s) = &obj.soname {
                loaded.entry(s.clone()).or_insert(idx);
            }
            libraries.push(Library { path, source });
            objects.push(obj);
        }
    }

    let mut interpreters: Vec<Library> = Vec::new();
    let mut interp_names = BTreeSet::new();
    for o in &objects {
        let Some(i) = &o.interpreter else { continue };
        let p = PathBuf::from(i);
        if interpreters.iter().any(|l| l.path == p) {
            continue;
        }
        let not_there = || {
            let place = match &resolver.root {
                Some(r) => format!(" in {}", r.display()),
                None => String::new(),
            };
            context_error(
                &o.path,
                format!("its ELF interpreter {i} does not exist{place} or is not an ELF file"),
            )
        };
        let source = resolver.locate(&p).ok_or_else(not_there)?;
        let interp = read_object(&source, &p, None).map_err(|_| not_there())?;
        if interp.kind != o.kind {
            return Err(not_there());
        }
        if let Some(n) = p.file_name() {
            interp_names.insert(n.to_string_lossy().into_owned());
        }
        interp_names.extend(interp.soname);
        interpreters.push(Library { path: p, source });
    }
    // The interpreter is loaded before anything else, so a DT_NEEDED on its name (libc needs
    // ld-linux-x86-64.so.2) is satisfied by it; a second copy from the search path would be dead
    // weight.
    libraries.retain(|l| {
        let name = l
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        !interp_names.contains(&name)
    });
    Ok(Closure {
        libraries,
        interpreters,
        left_out,
    })
}

/// The loader's search for `name` needed by `objects[me]` (glibc `_dl_map_object`): DT_RPATH of
/// the object and of those that loaded it (only when the object has no DT_RUNPATH), then its
/// DT_RUNPATH, then the system directories. LD_LIBRARY_PATH is left out on purpose: the host's
/// environment says nothing about what the image has. Candidates of another ELF class or machine
/// are skipped, as the loader does (e.g. 32-bit libraries in a multilib directory). Gives the
/// path the loader finds and the file that holds it.
fn find_library(
    name: &str,
    me: usize,
    objects: &[Object],
    resolver: &Resolver,
) -> Result<(PathBuf, PathBuf), ImageError> {
    let requester = &objects[me];
    let fits = |p: &Path| {
        resolver
            .locate(p)
            .filter(|source| elf_kind(source) == Some(requester.kind))
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match fits(&p) {
            Some(source) => Ok((p, source)),
            None => Err(missing(name, requester, &[], resolver)),
        };
    }
    let mut dirs: Vec<&Path> = Vec::new();
    if requester.runpath.is_empty() {
        let mut at = Some(me);
        while let Some(i) = at {
            dirs.extend(objects[i].rpath.iter().map(PathBuf::as_path));
            at = objects[i].parent;
        }
    }
    dirs.extend(resolver.library_path.iter().map(PathBuf::as_path));
    dirs.extend(requester.runpath.iter().map(PathBuf::as_path));
    dirs.extend(resolver.system_dirs.iter().map(PathBuf::as_path));
    for d in &dirs {
        let candidate = d.join(name);
        if let Some(source) = fits(&candidate) {
            return Ok((candidate, source));
        }
    }
    Err(missing(name, requester, &dirs, resolver))
}

fn missing(name: &str, requester: &Object, dirs: &[&Path], resolver: &Resolver) -> ImageError {
    let searched = if dirs.is_empty() {
        String::new()
    } else {
        format!(
            "; searched {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let hint = match &resolver.root {
        None => format!("\n  hint: install the package that provides {name} on this machine"),
        Some(root) => format!(
            " in the image's root filesystem {}\n  hint: add the Debian package that provides {name} to the environment (environment.packages or bootstrap.packages in ferry.yaml), so the environment image has it",
            root.display()
        ),
    };
    ImageError::Context {
        path: requester.path.clone(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!("it needs the shared library {name}, which was not found{searched}{hint}"),
        ),
    }
}

/// ELF class, machine and byte order, read from the header only; None if not an ELF file.
fn elf_kind(path: &Path) -> Option<(u8, u16, u8)> {
    let mut f = std::fs::File::open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = [0u8; 64];
    f.read_exact(&mut buf).ok()?;
    let h: Header = Elf::parse_header(&buf).ok()?;
    Some((h.e_ident[EI_CLASS], h.e_machine, h.e_ident[EI_DATA]))
}

/// Reads `source`, which the loader opens as `path` (so `$ORIGIN` is `path`'s directory).
fn read_object(source: &Path, path: &Path, parent: Option<usize>) -> Result<Object, ImageError> {
    let bytes = std::fs::read(source).map_err(|e| ImageError::Read {
        path: source.to_path_buf(),
        source: e,
    })?;
    if bytes.len() < SIZEOF_IDENT {
        return Err(context_error(source, "not an ELF file (too short)"));
    }
    let elf = Elf::parse(&bytes)
        .map_err(|e| context_error(source, format!("not a readable ELF file: {e}")))?;
    // $ORIGIN is the directory of the path the object was opened by, not of its symlink target.
    let origin = path.parent().unwrap_or(Path::new("/"));
    let expand = |list: &[&str]| -> Vec<PathBuf> {
        list.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .filter_map(|s| expand_origin(s, origin))
            .collect()
    };
    Ok(Object {
        path: path.to_path_buf(),
        kind: (
            elf.header.e_ident[EI_CLASS],
            elf.header.e_machine,
            elf.header.e_ident[EI_DATA],
        ),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: expand(&elf.rpaths),
        runpath: expand(&elf.runpaths),
        soname: elf.soname.map(str::to_string),
        interpreter: elf.interpreter.map(str::to_string),
        parent,
        optional: false,
    })
}

/// `$ORIGIN`/`${ORIGIN}` replaced; entries with other tokens (`$LIB`, `$PLATFORM`, whose values
/// are distribution-specific) or relative ones are dropped rather than guessed.
fn expand_origin(entry: &str, origin: &Path) -> Option<PathBuf> {
    let o = origin.to_string_lossy();
    let s = entry.replace("${ORIGIN}", &o).replace("$ORIGIN", &o);
    (!s.contains('$') && s.starts_with('/')).then(|| PathBuf::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ld_so_conf_follows_includes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        std::fs::write(
            d.join("ld.so.conf"),
            "# top\n/opt/first\ninclude conf.d/*.conf\nhwcap 0 nosegneg\n/opt/last:/opt/last2\n",
        )
        .unwrap();
        std::fs::write(d.join("conf.d/b.conf"), "/opt/b # trailing\n").unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "/opt/a1, /opt/a2\n").unwrap();
        std::fs::write(d.join("conf.d/ignored.txt"), "/opt/no\n").unwrap();
        let mut out = Vec::new();
        ld_so_conf(None, &d.join("ld.so.conf"), 0, &mut out);
        let want: Vec<PathBuf> = [
            "/opt/first",
            "/opt/a1",
            "/opt/a2",
            "/opt/b",
            "/opt/last",
            "/opt/last2",
        ]
        .map(PathBuf::from)
        .into();
        assert_eq!(out, want);
        // The loader's own directories come after, once each.
        let r = Resolver::with_conf_dirs(vec!["/usr/lib".into(), "/opt/x".into()], None);
        assert_eq!(r.system_dirs[0], PathBuf::from("/usr/lib"));
        assert_eq!(
            r.system_dirs
                .iter()
                .filter(|d| d.as_path() == Path::new("/usr/lib"))
                .count(),
            1
        );
    }

    #[test]
    fn a_sysroot_keeps_every_link_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(root.join("usr/lib/aarch64-linux-gnu/libc.so.6"), b"c").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        // Absolute: the image's /usr/lib/…, not this machine's.
        std::os::unix::fs::symlink(
            "/usr/lib/aarch64-linux-gnu/libc.so.6",
            root.join("usr/lib/libc-abs.so"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("usr/lib/host.so")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/hostname", root.join("usr/lib/up.so"))
            .unwrap();
        std::os::unix::fs::symlink("loop.so", root.join("usr/lib/loop.so")).unwrap();
        let real = root.join("usr/lib/aarch64-linux-gnu/libc.so.6");
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/aarch64-linux-gnu/libc.so.6")),
            Some(real.clone())
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/lib/libc-abs.so")),
            Some(real)
        );
        for outside in ["/usr/lib/host.so", "/lib/up.so", "/usr/lib/loop.so"] {
            assert_eq!(resolve_in_root(root, Path::new(outside)), None, "{outside}");
        }
        // The loader's configuration is the root's own.
        std::fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        std::fs::write(
            root.join("etc/ld.so.conf"),
            "include /etc/ld.so.conf.d/*.conf\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/ld.so.conf.d/x.conf"), "/opt/in-root\n").unwrap();
        let r = Resolver::sysroot(root, crate::platform::Arch::Arm64);
        assert_eq!(r.system_dirs[0], PathBuf::from("/opt/in-root"));
        assert!(
            r.system_dirs
                .contains(&PathBuf::from("/usr/lib/aarch64-linux-gnu"))
        );
        assert!(
            !r.system_dirs
                .iter()
                .any(|d| d.ends_with("x86_64-linux-gnu"))
        );
    }

    #[test]
    fn origin_is_expanded_and_other_tokens_dropped() {
        let o = Path::new("/opt/ort/lib");
        assert_eq!(
            expand_origin("$ORIGIN/../deps", o),
            Some(PathBuf::from("/opt/ort/lib/../deps"))
        );
        assert_eq!(
            expand_origin("${ORIGIN}", o),
            Some(PathBuf::from("/opt/ort/lib"))
        );
        assert_eq!(expand_origin("/usr/$LIB", o), None);
        assert_eq!(expand_origin("relative", o), None);
    }

    fn layer_of(files: &[(&str, &[u8])]) -> Layer {
        Layer::new(
            "test layer",
            files
                .iter()
                .map(|(p, b)| (p.to_string(), Entry::bytes(b.to_vec(), 0o644)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn the_config_runs_the_server_as_non_root_with_fixed_times() {
        let layers = [
            layer_of(&[("/usr/bin/ferry", b"elf")]),
            layer_of(&[("/models/m.onnx", b"model")]),
        ];
        let config = image_config(
            "amd64",
            &BTreeSet::from(["/lib/x86_64-linux-gnu".to_string()]),
            9000,
            "churn",
            &layers,
        );
        let json = serde_json::to_string(&config).unwrap();
        let want = format!(
            concat!(
                r#"{{"architecture":"amd64","config":{{"User":"65532:65532","ExposedPorts":{{"9000/tcp":{{}}}},"#,
                r#""Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LD_LIBRARY_PATH=/lib/x86_64-linux-gnu"],"#,
                r#""Entrypoint":["/usr/bin/ferry","serve-model","--config","/etc/ferry/serving.json"],"#,
                r#""Labels":{{"dev.ferry.project":"churn","dev.ferry.role":"serving"}}}},"#,
                r#""created":"1970-01-01T00:00:00Z","history":["#,
                r#"{{"created":"1970-01-01T00:00:00Z","created_by":"{r}: runtime: ferry, ONNX Runtime, their shared libraries and loader, /etc/passwd, /etc/group"}},"#,
                r#"{{"created":"1970-01-01T00:00:00Z","created_by":"{r}: models and the serving config"}}],"#,
                r#""os":"linux","rootfs":{{"type":"layers","diff_ids":["{a}","{b}"]}}}}"#
            ),
            r = RECIPE,
            a = layers[0].diff_id,
            b = layers[1].diff_id
        );
        assert_eq!(json, want);
    }

    #[test]
    fn a_layer_holds_its_directories_and_is_hashed_as_written() {
        let layer = layer_of(&[
            ("/etc/ferry/serving.json", b"{}"),
            ("/models/a/b/m.onnx", b"m"),
            ("/models/a-b.onnx", b"n"),
        ]);
        assert_eq!(
            layer.paths(),
            [
                "/etc/",
                "/etc/ferry/",
                "/etc/ferry/serving.json",
                "/models/",
                "/models/a/",
                "/models/a-b.onnx",
                "/models/a/b/",
                "/models/a/b/m.onnx",
            ]
        );
        let mut bytes = Vec::new();
        let written = layer.write(&mut bytes).unwrap();
        assert_eq!(written.diff_id, layer.diff_id);
        assert_eq!(written.size, layer.size);
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(layer.content, 4);
        assert_eq!(
            written.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        let mut tar = tar::Archive::new(bytes.as_slice());
        for e in tar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            let name = e.path().unwrap().to_string_lossy().into_owned();
            assert!(!name.starts_with('/'), "{name}");
            if name.ends_with('/') {
                assert_eq!(h.mode().unwrap(), 0o755, "{name}");
            }
        }
    }

    #[test]
    fn a_file_where_a_directory_must_be_is_refused() {
        let rootfs = BTreeMap::from([
            (
                "/models/a".to_string(),
                (Part::Models, Entry::bytes(b"x".to_vec(), 0o644)),
            ),
            (
                "/models/a/b.onnx".to_string(),
                (Part::Models, Entry::bytes(b"y".to_vec(), 0o644)),
            ),
        ]);
        let err = check_tree(&rootfs).unwrap_err().to_string();
        assert!(
            err.contains("/models/a/b.onnx") && err.contains("inside /models/a"),
            "{err}"
        );
    }

    #[test]
    fn architectures_have_their_go_names() {
        use goblin::elf::header::{ELFCLASS64, EM_AARCH64, EM_X86_64};
        assert_eq!(go_arch(Some((ELFCLASS64, EM_X86_64, ELFDATA2LSB))), "amd64");
        assert_eq!(
            go_arch(Some((ELFCLASS64, EM_AARCH64, ELFDATA2LSB))),
            "arm64"
        );
        let here = go_arch(None);
        assert!(!here.is_empty() && here != "x86_64" && here != "aarch64");
    }

    #[test]
    fn moved_directories_map_into_the_image() {
        let moved = vec![(PathBuf::from("/home/u/.local/lib/ferry"), "/usr/lib/ferry")];
        assert_eq!(
            image_path_of(Path::new("/home/u/.local/lib/ferry/libx.so.1"), &moved).unwrap(),
            "/usr/lib/ferry/libx.so.1"
        );
        assert_eq!(
            image_path_of(Path::new("/lib/x86_64-linux-gnu/libc.so.6"), &moved).unwrap(),
            "/lib/x86_64-linux-gnu/libc.so.6"
        );
    }
}
