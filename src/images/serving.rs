//! The serving image: `FROM scratch` plus exactly what `ferry serve-model` needs to run — ferry's
//! own Linux binary, the ONNX Runtime library, the shared libraries both load (found by reading
//! their ELF headers, the way the dynamic loader would), the model files and the serving config.
//! No base image, so nothing has to be pulled, and no shell or package manager inside.
//!
//! The image is tagged by the sha256 of its build context, which is deterministic (see
//! [`Context`]): the same binary, libraries, models and config give the same tag, and an
//! existing tag is not rebuilt.
//!
//! Layout inside the image:
//!
//! ```text
//! /usr/bin/ferry                     the binary (0755)
//! /usr/lib/ferry/libonnxruntime.so   found by `onnx::runtime_library()` as <exe>/../lib/ferry
//! /lib64/ld-linux-x86-64.so.2        the ELF interpreter, at its PT_INTERP path
//! /lib/x86_64-linux-gnu/libc.so.6 …  each library under the name it is needed by, in the
//!                                    directory the host's loader found it in
//! /etc/ferry/serving.json            the serving config (`server::config::CONFIG_PATH`)
//! /etc/passwd, /etc/group            uid/gid 65532 named `ferry`
//! /models/…                          the model files, at the paths the config names
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use goblin::elf::Elf;
use goblin::elf::header::{EI_CLASS, Header, SIZEOF_IDENT};

use super::build::{Built, ImageError};
use super::context::Context;
use crate::docker;
use crate::onnx::{self, OnnxError};
use crate::server::config::{CONFIG_PATH, ServingConfig};
use crate::ui::{Ui, human_bytes};

/// Where the binary goes; the library goes to `<dir of exe>/../lib/ferry/`, the first place
/// `onnx::runtime_library()` looks when `ORT_DYLIB_PATH` is unset.
pub const BINARY_PATH: &str = "/usr/bin/ferry";
pub const RUNTIME_PATH: &str = "/usr/lib/ferry/libonnxruntime.so";

/// The user the server runs as: not root, and the uid distroless images use for "nonroot", so
/// cluster policies written for those (runAsNonRoot, fsGroup) fit ferry's image too.
pub const UID: u32 = 65532;

/// Bump when the layout or Dockerfile changes, so an old tag is not reused for a new recipe
/// (it is part of the context, hence of the tag).
const RECIPE: &str = "ferry-serving-v1";

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

/// A finished build context for the serving image.
pub struct ServingContext {
    /// The tar to send to the engine.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`, hex.
    pub digest: String,
    /// `ferry/<project>-serve:<first 12 hex of digest>`.
    pub tag: String,
    /// Bytes of file content in the image's root filesystem (about the image's size).
    pub content_bytes: u64,
}

/// The serving image for `req`, built unless its tag already exists.
///
/// Every model is loaded in ONNX Runtime first: one that is not ONNX, does not load, or has an
/// output the server cannot send (ZipMap) fails here, before anything is built.
pub async fn ensure_serving_image(
    docker: &Docker,
    req: &ServingImageRequest<'_>,
    ui: &Ui,
) -> Result<Built, ImageError> {
    let step = ui.step("checking models and collecting the serving image's files");
    // Loading models and reading a few hundred MB of binaries blocks; keep it off the runtime.
    let owned = OwnedRequest::from(req);
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
                source: io::Error::other(format!("assembling the context panicked: {join}")),
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
    let id = super::build::build(docker, ctx.bytes, &ctx.tag, req.project, "serving", ui).await?;
    Ok(Built {
        tag: ctx.tag,
        id,
        built: true,
    })
}

/// The build context of the serving image, after checking the models. Blocking: it loads every
/// model in ONNX Runtime and reads every file that goes into the image.
pub fn serving_context(req: &ServingImageRequest<'_>) -> Result<ServingContext, ImageError> {
    for m in req.models {
        check_model(&m.host_path)?;
    }
    check_layout(req)?;

    let mut rootfs: BTreeMap<String, Entry> = BTreeMap::new();
    let mut put = |image_path: String, entry: Entry| -> Result<(), ImageError> {
        if let Some(old) = rootfs.get(&image_path)
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
        rootfs.insert(image_path, entry);
        Ok(())
    };

    put(BINARY_PATH.into(), Entry::file(req.binary, 0o755))?;
    put(RUNTIME_PATH.into(), Entry::file(req.runtime, 0o755))?;

    // Libraries that sit next to the binary or the runtime on the host (found through
    // `$ORIGIN`) move with them.
    let mut moved: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(d) = req.runtime.parent() {
        moved.push((d.to_path_buf(), "/usr/lib/ferry"));
    }
    if let Some(d) = req.binary.parent() {
        moved.push((d.to_path_buf(), "/usr/bin"));
    }
    let closure = resolve_closure(&[req.binary, req.runtime], &Resolver::host())?;
    let mut lib_dirs = BTreeSet::new();
    for lib in &closure.libraries {
        let image_path = image_path_of(&lib.path, &moved)?;
        if let Some((dir, _)) = image_path.rsplit_once('/') {
            lib_dirs.insert(dir.to_string());
        }
        put(image_path, Entry::file(&lib.path, 0o755))?;
    }
    for interp in &closure.interpreters {
        put(image_path_of(interp, &[])?, Entry::file(interp, 0o755))?;
    }

    let mut config = serde_json::to_vec_pretty(req.config).map_err(|e| {
        context_error(
            Path::new(CONFIG_PATH),
            format!("cannot write the serving config: {e}"),
        )
    })?;
    config.push(b'\n');
    put(CONFIG_PATH.into(), Entry::bytes(config, 0o644))?;
    put(
        "/etc/passwd".into(),
        Entry::bytes(
            format!("root:x:0:0:root:/root:/sbin/nologin\nferry:x:{UID}:{UID}:ferry:/nonexistent:/sbin/nologin\n")
                .into_bytes(),
            0o644,
        ),
    )?;
    put(
        "/etc/group".into(),
        Entry::bytes(format!("root:x:0:\nferry:x:{UID}:\n").into_bytes(), 0o644),
    )?;
    for m in req.models {
        put(m.image_path.clone(), Entry::file(&m.host_path, 0o644))?;
    }

    let dockerfile = dockerfile(req.config.port, &lib_dirs);
    let mut ctx = Context::new();
    ctx.add_bytes("Dockerfile", dockerfile.as_bytes(), 0o644)
        .map_err(|e| context_error(req.binary, e.to_string()))?;
    let mut content_bytes = 0u64;
    for (image_path, entry) in &rootfs {
        let name = format!("rootfs{image_path}");
        let data = entry.read()?;
        content_bytes += data.len() as u64;
        ctx.add_bytes(&name, &data, entry.mode)
            .map_err(|e| context_error(entry.origin(), e.to_string()))?;
    }
    let (bytes, digest) = ctx
        .finish()
        .map_err(|e| context_error(req.binary, e.to_string()))?;
    Ok(ServingContext {
        bytes,
        tag: format!("ferry/{}-serve:{}", req.project, &digest[..12]),
        digest,
        content_bytes,
    })
}

/// Every shared library the given ELF files need, recursively, as the dynamic loader would find
/// them (each path is the directory searched plus the `DT_NEEDED` name, so it may be a symlink),
/// followed by their ELF interpreter(s) (`PT_INTERP`). The inputs themselves are not listed.
pub fn library_closure(elf: &[&Path]) -> Result<Vec<PathBuf>, ImageError> {
    let c = resolve_closure(elf, &Resolver::host())?;
    Ok(c.libraries
        .into_iter()
        .map(|l| l.path)
        .chain(c.interpreters)
        .collect())
}

fn dockerfile(port: u16, lib_dirs: &BTreeSet<String>) -> String {
    // The image has no /etc/ld.so.cache, so the loader falls back to its compiled-in system
    // directories, which differ between distributions; naming the directories the libraries
    // were put in makes the lookup exact whatever host built the image.
    let ld_path = lib_dirs.iter().cloned().collect::<Vec<_>>().join(":");
    let env = if ld_path.is_empty() {
        String::new()
    } else {
        format!("ENV LD_LIBRARY_PATH={ld_path}\n")
    };
    format!(
        "# {RECIPE}\n\
         FROM scratch\n\
         COPY rootfs/ /\n\
         {env}\
         USER {UID}:{UID}\n\
         EXPOSE {port}\n\
         ENTRYPOINT [\"{BINARY_PATH}\", \"serve-model\", \"--config\", \"{CONFIG_PATH}\"]\n"
    )
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

#[derive(PartialEq, Eq)]
enum Source {
    /// Read when the context is written; a symlink gives its target's content.
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
    fn read(&self) -> Result<std::borrow::Cow<'_, [u8]>, ImageError> {
        match &self.source {
            Source::File(p) => std::fs::read(p)
                .map(std::borrow::Cow::Owned)
                .map_err(|source| ImageError::Read {
                    path: p.clone(),
                    source,
                }),
            Source::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
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
}

impl From<&ServingImageRequest<'_>> for OwnedRequest {
    fn from(r: &ServingImageRequest<'_>) -> Self {
        OwnedRequest {
            project: r.project.to_string(),
            binary: r.binary.to_path_buf(),
            runtime: r.runtime.to_path_buf(),
            models: r.models.to_vec(),
            config: r.config.clone(),
        }
    }
}

impl OwnedRequest {
    fn context(&self) -> Result<ServingContext, ImageError> {
        serving_context(&ServingImageRequest {
            project: &self.project,
            binary: &self.binary,
            runtime: &self.runtime,
            models: &self.models,
            config: &self.config,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Shared-library closure

/// Where the loader looks after an object's own RPATH/RUNPATH.
struct Resolver {
    /// `/etc/ld.so.conf` (what `ld.so.cache` is built from), then the loader's built-in dirs.
    system_dirs: Vec<PathBuf>,
}

impl Resolver {
    fn host() -> Resolver {
        let mut dirs = Vec::new();
        ld_so_conf(Path::new("/etc/ld.so.conf"), 0, &mut dirs);
        Resolver::with_conf_dirs(dirs)
    }

    fn with_conf_dirs(mut dirs: Vec<PathBuf>) -> Resolver {
        let triple = match std::env::consts::ARCH {
            "x86_64" => Some("x86_64-linux-gnu"),
            "aarch64" => Some("aarch64-linux-gnu"),
            _ => None,
        };
        // glibc's compiled-in system dirs: Debian-style multiarch, Fedora-style lib64, plain.
        if let Some(t) = triple {
            dirs.push(Path::new("/lib").join(t));
            dirs.push(Path::new("/usr/lib").join(t));
        }
        dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
        let mut seen = BTreeSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Resolver { system_dirs: dirs }
    }
}

/// Directories listed in an `ld.so.conf`, following `include` lines (globs allowed).
fn ld_so_conf(file: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    // A missing or unreadable file adds nothing, as for ldconfig; a cycle of includes stops.
    let Ok(text) = std::fs::read_to_string(file) else {
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
                for f in glob_files(&base.join(pattern)) {
                    ld_so_conf(&f, depth + 1, out);
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

/// Files matching `pattern` (a glob in its last component only, as ld.so.conf uses), sorted.
fn glob_files(pattern: &Path) -> Vec<PathBuf> {
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
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| m.is_match(e.file_name()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

struct Closure {
    libraries: Vec<Library>,
    interpreters: Vec<PathBuf>,
}

struct Library {
    /// The search directory joined with the needed name.
    path: PathBuf,
}

/// What the loader reads from one object.
struct Object {
    path: PathBuf,
    kind: (u8, u16),
    needed: Vec<String>,
    rpath: Vec<PathBuf>,
    runpath: Vec<PathBuf>,
    soname: Option<String>,
    interpreter: Option<String>,
    /// Index of the object that needed this one; RPATHs are inherited along this chain.
    parent: Option<usize>,
}

fn resolve_closure(roots: &[&Path], resolver: &Resolver) -> Result<Closure, ImageError> {
    let mut objects: Vec<Object> = Vec::new();
    // needed name or soname → index of the object that satisfies it, as the loader reuses an
    // already loaded object whose name matches.
    let mut loaded: HashMap<String, usize> = HashMap::new();
    let mut libraries = Vec::new();
    for root in roots {
        let obj = read_object(root, None)?;
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
            let path = find_library(&name, me, &objects, resolver)?;
            let obj = read_object(&path, Some(me))?;
            let idx = objects.len();
            loaded.insert(name, idx);
            if let Some(s) = &obj.soname {
                loaded.entry(s.clone()).or_insert(idx);
            }
            libraries.push(Library { path });
            objects.push(obj);
        }
    }

    let mut interpreters: Vec<PathBuf> = Vec::new();
    let mut interp_names = BTreeSet::new();
    for o in &objects {
        let Some(i) = &o.interpreter else { continue };
        let p = PathBuf::from(i);
        if interpreters.contains(&p) {
            continue;
        }
        let interp = read_object(&p, None).map_err(|_| {
            context_error(
                &o.path,
                format!("its ELF interpreter {i} does not exist or is not an ELF file"),
            )
        })?;
        if let Some(n) = p.file_name() {
            interp_names.insert(n.to_string_lossy().into_owned());
        }
        interp_names.extend(interp.soname);
        interpreters.push(p);
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
    })
}

/// The loader's search for `name` needed by `objects[me]` (glibc `_dl_map_object`): DT_RPATH of
/// the object and of those that loaded it (only when the object has no DT_RUNPATH), then its
/// DT_RUNPATH, then the system directories. LD_LIBRARY_PATH is left out on purpose: the host's
/// environment says nothing about what the image has. Candidates of another ELF class or machine
/// are skipped, as the loader does (e.g. 32-bit libraries in a multilib directory).
fn find_library(
    name: &str,
    me: usize,
    objects: &[Object],
    resolver: &Resolver,
) -> Result<PathBuf, ImageError> {
    let requester = &objects[me];
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if elf_kind(&p) == Some(requester.kind) {
            Ok(p)
        } else {
            Err(missing(name, requester, &[]))
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
    dirs.extend(requester.runpath.iter().map(PathBuf::as_path));
    dirs.extend(resolver.system_dirs.iter().map(PathBuf::as_path));
    for d in &dirs {
        let candidate = d.join(name);
        if elf_kind(&candidate) == Some(requester.kind) {
            return Ok(candidate);
        }
    }
    Err(missing(name, requester, &dirs))
}

fn missing(name: &str, requester: &Object, dirs: &[&Path]) -> ImageError {
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
    ImageError::Context {
        path: requester.path.clone(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "it needs the shared library {name}, which was not found{searched}\n  hint: install the package that provides {name} on this machine"
            ),
        ),
    }
}

/// ELF class and machine, read from the header only; None if not an ELF file.
fn elf_kind(path: &Path) -> Option<(u8, u16)> {
    let mut f = std::fs::File::open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = [0u8; 64];
    f.read_exact(&mut buf).ok()?;
    let h: Header = Elf::parse_header(&buf).ok()?;
    Some((h.e_ident[EI_CLASS], h.e_machine))
}

fn read_object(path: &Path, parent: Option<usize>) -> Result<Object, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < SIZEOF_IDENT {
        return Err(context_error(path, "not an ELF file (too short)"));
    }
    let elf = Elf::parse(&bytes)
        .map_err(|e| context_error(path, format!("not a readable ELF file: {e}")))?;
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
        kind: (elf.header.e_ident[EI_CLASS], elf.header.e_machine),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: expand(&elf.rpaths),
        runpath: expand(&elf.runpaths),
        soname: elf.soname.map(str::to_string),
        interpreter: elf.interpreter.map(str::to_string),
        parent,
    })
}

/// `$ORIGIN`/`${ORIGIN}` replaced; entries with other tokens (`$LIB`, `$PLATFORM`, whose values
/// are distribution-specific) or relative ones are dropped rather than guessed.
fn expand_origin(entry: &str, origin: &Path) -> Option<PathBuf> {
    let o = origin.to_string_lossy();
    let s = entry.replace("${ORIGIN}", &o).replace("$ORIGIN", &o);
    (!s.contains('$') && s.starts_with('/')).then(|| PathBuf::from(s))
}

// ---------------------------------------------------------------------------------------------
// Build

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
        ld_so_conf(&d.join("ld.so.conf"), 0, &mut out);
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
        let r = Resolver::with_conf_dirs(vec!["/usr/lib".into(), "/opt/x".into()]);
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

    #[test]
    fn dockerfile_runs_the_server_as_non_root_without_a_shell() {
        let d = dockerfile(9000, &BTreeSet::from(["/lib/x86_64-linux-gnu".to_string()]));
        assert!(d.contains("FROM scratch\n"));
        assert!(d.contains(&format!("USER {UID}:{UID}\n")));
        assert!(d.contains("EXPOSE 9000\n"));
        assert!(d.contains(
            "ENTRYPOINT [\"/usr/bin/ferry\", \"serve-model\", \"--config\", \"/etc/ferry/serving.json\"]"
        ));
        assert!(d.contains("ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu\n"));
        assert!(!d.contains("RUN"), "a scratch image has nothing to run");
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
