//! The parts a serving image is assembled from for a given platform, none of them taken from
//! this machine's own system: ONNX Runtime from the `onnxruntime` wheel of that platform, the
//! C library and loader from a root filesystem of that platform (the environment's base image,
//! read through the engine, or Debian unpacked by debootstrap's first stage), and the server
//! binary of that platform. Each is fetched once into ferry's cache; a cached part is complete
//! or absent (written beside, then renamed into place).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::bootstrap::{self, BaseRequest, BootstrapError};
use super::build::{ImageError, cache_dir};
use super::serving::check_machine;
use crate::docker::DockerError;
use crate::plan::Base;
use crate::platform::{Arch, Platform};
use crate::ui::Ui;

/// The ONNX Runtime version install.sh puts beside ferry, and so the one serving images carry.
pub const DEFAULT_ORT_VERSION: &str = "1.32.0";
/// Chooses another ONNX Runtime version, as for install.sh.
pub const ORT_VERSION_ENV: &str = "FERRY_ORT_VERSION";
/// A directory of wheels to take the `onnxruntime` wheel from instead of the package index
/// (`pip download` run elsewhere), for a machine without network.
pub const ORT_WHEELHOUSE_ENV: &str = "FERRY_ORT_WHEELHOUSE";
/// The oldest glibc the wheel may need: what `pip download --platform` is asked for. Debian
/// bookworm has 2.36, and the `onnxruntime` wheels are built for 2.28.
const WHEEL_GLIBC: (u32, u32) = (2, 28);
/// The Python the wheel is asked for; the library inside does not depend on it.
const WHEEL_PYTHON: &str = "3.11";
/// The Debian suite whose files stand in for an environment image of another platform.
pub const DEFAULT_SUITE: &str = "bookworm";

/// Where files of a root filesystem are read from when it is taken from an image: what the
/// loader reads (its configuration) and where libraries live.
const SYSROOT_PATHS: [&str; 7] = [
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
];

/// The environment variable naming the server binary of `arch`: `FERRY_SERVE_BINARY_ARM64`.
pub fn serve_binary_env(arch: Arch) -> String {
    format!("FERRY_SERVE_BINARY_{}", arch.go_name().to_ascii_uppercase())
}

#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error(
        "no ferry server binary for {platform}: this ferry is built for {host}\n  hint: set {var} to a {platform} build of the server: build ferry on a {platform} machine with ./install.sh and take lib/ferry/ferry-serve, or run `pip download ferry-ml --no-deps --only-binary=:all: --platform {tag}` and take ferry-serve from the wheel"
    )]
    NoServerBinary {
        platform: Platform,
        host: String,
        var: String,
        tag: String,
    },
    #[error("{var} names {}, which is not a file\n  hint: point {var} at a {platform} build of ferry-serve", path.display())]
    BinaryMissing {
        var: String,
        path: PathBuf,
        platform: Platform,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "invalid ONNX Runtime version {0:?} (from {ORT_VERSION_ENV}): expected a version such as {DEFAULT_ORT_VERSION}"
    )]
    BadVersion(String),
    #[error(
        "pip could not download onnxruntime=={version} for {platform}{from}{}:\n{output}\n  hint: check the network and pip's index configuration, or, on a machine without network, run `pip download onnxruntime=={version} --no-deps --only-binary=:all: --platform {} --implementation cp --python-version {WHEEL_PYTHON} -d DIR` elsewhere and set {ORT_WHEELHOUSE_ENV}=DIR",
        if *unreachable { " (the package index could not be reached)" } else { "" },
        platform.manylinux_tag(WHEEL_GLIBC)
    )]
    Pip {
        version: String,
        platform: Platform,
        from: String,
        output: String,
        /// pip could not connect to the index at all (rather than not finding the wheel there).
        unreachable: bool,
    },
    #[error(
        "{} has no {member}\n  hint: this onnxruntime wheel does not carry ONNX Runtime's C library; choose another version with {ORT_VERSION_ENV}",
        wheel.display()
    )]
    NoLibraryInWheel { wheel: PathBuf, member: String },
    #[error("cannot extract {member} from {}: {message}", wheel.display())]
    Extract {
        wheel: PathBuf,
        member: String,
        message: String,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "reading the files of image {image} through the engine: {source}\n  hint: check that the engine is running and the image exists (`docker image inspect {image}`)"
    )]
    ReadImage {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image} is for {arch}, not {platform}, so its libraries cannot go into a {platform} serving image"
    )]
    ImageArch {
        image: String,
        arch: String,
        platform: Platform,
    },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PartsError {
    let path = path.to_path_buf();
    move |source| PartsError::Io { what, path, source }
}

// ---------------------------------------------------------------------------------------------
// The server binary

/// The server binary for `platform`: the one `FERRY_SERVE_BINARY_<ARCH>` names, else `host`
/// (ferry's own server build) when `platform` is this machine's; checked to be an ELF program of
/// `platform`'s CPU.
pub fn server_binary(platform: Platform, host: Option<&Path>) -> Result<PathBuf, PartsError> {
    let var = serve_binary_env(platform.arch);
    let binary = match (std::env::var_os(&var), host) {
        (Some(p), _) => {
            let path = PathBuf::from(p);
            if !path.is_file() {
                return Err(PartsError::BinaryMissing {
                    var,
                    path,
                    platform,
                });
            }
            path
        }
        (None, Some(h)) if Platform::host() == Some(platform) => h.to_path_buf(),
        (None, _) => {
            return Err(PartsError::NoServerBinary {
                platform,
                host: Platform::host()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| std::env::consts::ARCH.to_string()),
                var,
                tag: platform.manylinux_tag(WHEEL_GLIBC),
            });
        }
    };
    check_machine(&binary, platform)?;
    Ok(binary)
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime

/// ONNX Runtime's library for a platform, and the wheel it came from.
#[derive(Clone, Debug)]
pub struct OrtLibrary {
    /// `libonnxruntime.so.<version>` in ferry's cache.
    pub library: PathBuf,
    /// The wheel's file name and sha256, as recorded when it was fetched.
    pub wheel: String,
    pub wheel_sha256: String,
}

/// The ONNX Runtime version to use: `FERRY_ORT_VERSION`, else the pinned one.
pub fn ort_version() -> Result<String, PartsError> {
    let v = std::env::var(ORT_VERSION_ENV).unwrap_or_else(|_| DEFAULT_ORT_VERSION.to_string());
    if valid_version(&v) {
        Ok(v)
    } else {
        Err(PartsError::BadVersion(v))
    }
}

/// Digits and dots only: the version goes into pip's arguments and the cache's paths.
fn valid_version(v: &str) -> bool {
    v.split('.').count() >= 2
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// ONNX Runtime `version` for `platform`, from the `onnxruntime` manylinux wheel of that
/// platform: taken from ferry's cache, else fetched with pip (from `FERRY_ORT_WHEELHOUSE` when
/// set, else pip's configured index), its sha256 recorded, its library extracted. Blocking.
pub fn onnxruntime(platform: Platform, version: &str) -> Result<OrtLibrary, PartsError> {
    if !valid_version(version) {
        return Err(PartsError::BadVersion(version.to_string()));
    }
    let dir = cache_dir()
        .join("onnxruntime")
        .join(format!("{version}-{}", platform.arch.go_name()));
    let lib_name = format!("libonnxruntime.so.{version}");
    if let Some(found) = cached_ort(&dir, &lib_name) {
        return Ok(found);
    }
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetching-")
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a directory in", &parent))?;
    let wheels = tmp.path().join("wheel");
    let tag = platform.manylinux_tag(WHEEL_GLIBC);
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download"])
        .arg(format!("onnxruntime=={version}"))
        .args(["--no-deps", "--only-binary=:all:", "--implementation", "cp"])
        .args(["--platform", &tag, "--python-version", WHEEL_PYTHON])
        .arg("--disable-pip-version-check")
        .arg("-d")
        .arg(&wheels);
    let wheelhouse = std::env::var_os(ORT_WHEELHOUSE_ENV).map(PathBuf::from);
    if let Some(w) = &wheelhouse {
        pip.arg("--no-index").arg("--find-links").arg(w);
    }
    let from = wheelhouse
        .as_ref()
        .map(|w| format!(" from {}", w.display()))
        .unwrap_or_default();
    let out = pip
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("cannot run pip with", Path::new(&python)))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let unreachable = could_not_connect(&text);
    let pip_failed = |output: String| PartsError::Pip {
        version: version.to_string(),
        platform,
        from: from.clone(),
        output,
        unreachable,
    };
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Err(pip_failed(tail));
    }
    let wheel = fs::read_dir(&wheels)
        .map_err(io_err("cannot read", &wheels))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension() == Some(OsStr::new("whl")))
        .ok_or_else(|| pip_failed("pip reported success but left no wheel".into()))?;
    let wheel_sha256 = sha256_of(&wheel)?;
    let out_dir = tmp.path().join("out");
    fs::create_dir_all(&out_dir).map_err(io_err("cannot create", &out_dir))?;
    let member = format!("onnxruntime/capi/{lib_name}");
    extract_member(&python, &wheel, &member, &out_dir.join(&lib_name))?;
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = out_dir.join("wheel.sha256");
    fs::write(&record, format!("{wheel_sha256}  {wheel_name}\n"))
        .map_err(io_err("cannot write", &record))?;
    if let Err(e) = fs::rename(&out_dir, &dir) {
        // Another ferry may have put the same version there first; its copy is as good.
        return cached_ort(&dir, &lib_name).ok_or_else(|| io_err("cannot create", &dir)(e));
    }
    cached_ort(&dir, &lib_name).ok_or_else(|| PartsError::Io {
        what: "cannot read back",
        path: dir.clone(),
        source: io::Error::new(io::ErrorKind::NotFound, "the cached library vanished"),
    })
}

/// Whether pip's output says it could not connect to an index (its retries name the cause), as
/// opposed to an index that answered without the wheel.
fn could_not_connect(pip_stderr: &str) -> bool {
    [
        "NewConnectionError",
        "ConnectTimeoutError",
        "ProxyError",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "Connection refused",
    ]
    .iter()
    .any(|m| pip_stderr.contains(m))
}

fn cached_ort(dir: &Path, lib_name: &str) -> Option<OrtLibrary> {
    let library = dir.join(lib_name);
    let record = fs::read_to_string(dir.join("wheel.sha256")).ok()?;
    let (sha, wheel) = record.trim().split_once("  ")?;
    library.is_file().then(|| OrtLibrary {
        library,
        wheel: wheel.to_string(),
        wheel_sha256: sha.to_string(),
    })
}

fn sha256_of(path: &Path) -> Result<String, PartsError> {
    crate::spec::sha256_file(path).map_err(io_err("cannot read", path))
}

/// Copies one member of a wheel (a zip) out with the Python that ran pip, which reads zips.
fn extract_member(python: &OsStr, wheel: &Path, member: &str, to: &Path) -> Result<(), PartsError> {
    const SCRIPT: &str = "import shutil, sys, zipfile\n\
        wheel, member, out = sys.argv[1:4]\n\
        with zipfile.ZipFile(wheel) as z:\n\
        \x20   try:\n\
        \x20       info = z.getinfo(member)\n\
        \x20   except KeyError:\n\
        \x20       sys.exit(3)\n\
        \x20   with z.open(info) as src, open(out, 'wb') as dst:\n\
        \x20       shutil.copyfileobj(src, dst)\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(wheel)
        .arg(member)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("cannot run", Path::new(python)))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(PartsError::NoLibraryInWheel {
            wheel: wheel.to_path_buf(),
            member: member.to_string(),
        }),
        _ => Err(PartsError::Extract {
            wheel: wheel.to_path_buf(),
            member: member.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Root filesystems

/// A root filesystem of `platform` to take the serving image's libraries from: the environment's
/// base image when the engine has it for that platform (read through the engine, so the image's
/// own C library is what the server gets), else Debian's files for that platform unpacked by
/// debootstrap's first stage (the base's suite, which is what a bootstrapped base is made of).
pub async fn sysroot(
    docker: &Docker,
    base: &Base,
    platform: Platform,
    ui: &Ui,
) -> Result<PathBuf, PartsError> {
    let (image, suite) = match base {
        Base::Image(reference) => (reference.clone(), DEFAULT_SUITE.to_string()),
        Base::Bootstrap { suite, packages } => (
            bootstrap::base_tag(&BaseRequest {
                suite,
                packages: packages.as_slice(),
            }),
            suite.clone(),
        ),
    };
    if let Ok(info) = docker.inspect_image(&image).await
        && info.architecture.as_deref().and_then(Arch::parse) == Some(platform.arch)
    {
        return sysroot_from_image(docker, &image, platform, ui).await;
    }
    debian_sysroot(&suite, platform, ui).await
}

/// The loader's files of a local image, read through the engine (a container is created from
/// it, never started, and removed), kept in ferry's cache by image ID.
pub async fn sysroot_from_image(
    docker: &Docker,
    image: &str,
    platform: Platform,
    ui: &Ui,
) -> Result<PathBuf, PartsError> {
    let info = docker
        .inspect_image(image)
        .await
        .map_err(|source| PartsError::ReadImage {
            image: image.to_string(),
            source,
        })?;
    let arch = info.architecture.clone().unwrap_or_default();
    if Arch::parse(&arch) != Some(platform.arch) {
        return Err(PartsError::ImageArch {
            image: image.to_string(),
            arch,
            platform,
        });
    }
    let id = info.id.unwrap_or_else(|| image.to_string());
    let hex = id.strip_prefix("sha256:").unwrap_or(&id);
    let dir = cache_dir().join("sysroots").join(format!("image-{hex}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".reading-")
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a directory in", &parent))?;
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).map_err(io_err("cannot create", &root))?;

    let step = ui.step(format!("reading the C library of {image}"));
    let body = ContainerCreateBody {
        image: Some(id.clone()),
        // Never run: the command only has to be there for the engine to create the container.
        cmd: Some(vec!["/ferry-reads-files-only".to_string()]),
        entrypoint: Some(vec![]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
        .await
        .map_err(|source| PartsError::ReadImage {
            image: image.to_string(),
            source,
        });
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            step.fail();
            return Err(e);
        }
    };
    let registered = super::leftovers::container_created(&created.id);
    let read = read_paths(docker, &created.id, image, tmp.path(), &root).await;
    registered.remove(docker).await;
    if let Err(e) = read {
        step.fail();
        return Err(e);
    }
    if let Err(e) = fs::rename(&root, &dir)
        && !dir.is_dir()
    {
        step.fail();
        return Err(io_err("cannot create", &dir)(e));
    }
    step.finish(format!("read the C library of {image}"));
    Ok(dir)
}

async fn read_paths(
    docker: &Docker,
    container: &str,
    image: &str,
    scratch: &Path,
    root: &Path,
) -> Result<(), PartsError> {
    for path in SYSROOT_PATHS {
        let archive = scratch.join("archive.tar");
        let mut file = fs::File::create(&archive).map_err(io_err("cannot create", &archive))?;
        let opts = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut stream = docker.download_from_container(container, Some(opts));
        let mut absent = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => file
                    .write_all(&bytes)
                    .map_err(io_err("cannot write", &archive))?,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    absent = true;
                    break;
                }
                Err(source) => {
                    return Err(PartsError::ReadImage {
                        image: image.to_string(),
                        source,
                    });
                }
            }
        }
        drop(file);
        if absent {
            continue;
        }
        // The archive of /usr/lib names its entries lib/…: they go under usr/.
        let under = Path::new(path)
            .parent()
            .map(|p| root.join(p.strip_prefix("/").unwrap_or(p)))
            .unwrap_or_else(|| root.to_path_buf());
        unpack_loader_files(&archive, &under)?;
    }
    Ok(())
}

/// Unpacks what the loader may read from an archive: directories, links, shared libraries and
/// the loader's configuration. Everything else (Python's modules, data files) is left out.
fn unpack_loader_files(archive: &Path, under: &Path) -> Result<(), PartsError> {
    let bad = |e: io::Error| PartsError::Io {
        what: "cannot unpack",
        path: archive.to_path_buf(),
        source: e,
    };
    let file = fs::File::open(archive).map_err(io_err("cannot read", archive))?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.into_owned();
        // An entry that would land outside the tree is not one the engine writes; skip it.
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            continue;
        }
        let dest = under.join(&rel);
        let kind = entry.header().entry_type();
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let wanted = kind.is_dir()
            || kind.is_symlink()
            || name.contains(".so")
            || rel.starts_with("ld.so.conf.d")
            || name == "ld.so.conf";
        if !wanted {
            continue;
        }
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
        }
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(io_err("cannot create", &dest))?;
        } else if kind.is_symlink() {
            let Some(target) = entry.link_name().map_err(bad)? else {
                continue;
            };
            // Kept as written, absolute or not: the resolver follows it inside the root.
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(&target, &dest).map_err(io_err("cannot create", &dest))?;
        } else if kind.is_hard_link() {
            let Some(target) = entry.link_name().map_err(bad)? else {
                continue;
            };
            let from = under.join(target);
            let _ = fs::remove_file(&dest);
            if fs::hard_link(&from, &dest).is_err() {
                fs::copy(&from, &dest).map_err(io_err("cannot copy", &from))?;
            }
        } else if kind.is_file() {
            let mut out = fs::File::create(&dest).map_err(io_err("cannot create", &dest))?;
            io::copy(&mut entry, &mut out).map_err(io_err("cannot write", &dest))?;
        }
    }
    Ok(())
}

/// Debian `suite` for `platform` as debootstrap's first stage unpacks it (nothing is run, so any
/// platform works here), kept in ferry's cache. Needs root, debootstrap and the Debian mirror
/// apt uses, the first time.
pub async fn debian_sysroot(
    suite: &str,
    platform: Platform,
    ui: &Ui,
) -> Result<PathBuf, PartsError> {
    let dir = cache_dir()
        .join("sysroots")
        .join(format!("debian-{suite}-{}", platform.arch.debian()));
    if dir.is_dir() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(&parent)
        .map_err(io_err("cannot create a directory in", &parent))?;
    let root = tmp.path().join("root");
    bootstrap::foreign_first_stage(suite, platform.arch, &root, ui).await?;
    // The packages are unpacked; the archives kept for a second stage are dead weight here.
    let debs = root.join("var/cache/apt/archives");
    if let Ok(entries) = fs::read_dir(&debs) {
        for e in entries.flatten() {
            if e.path().extension() == Some(OsStr::new("deb")) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if let Err(e) = fs::rename(&root, &dir)
        && !dir.is_dir()
    {
        return Err(io_err("cannot create", &dir)(e));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_variable_names_the_architecture() {
        assert_eq!(serve_binary_env(Arch::Arm64), "FERRY_SERVE_BINARY_ARM64");
        assert_eq!(serve_binary_env(Arch::Amd64), "FERRY_SERVE_BINARY_AMD64");
    }

    #[test]
    fn another_platform_without_a_binary_is_refused_with_the_way_to_get_one() {
        let other = Arch::ALL.into_iter().map(Platform::linux).find(|p| {
            Some(*p) != Platform::host() && std::env::var_os(serve_binary_env(p.arch)).is_none()
        });
        let Some(other) = other else { return };
        let e = server_binary(other, Some(Path::new("/nonexistent"))).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&serve_binary_env(other.arch))
                && text.contains("install.sh")
                && text.contains("pip download ferry-ml"),
            "{text}"
        );
    }

    #[test]
    fn an_archive_gives_only_what_the_loader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
            let mut add = |path: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, data).unwrap();
            };
            add("lib/x86_64-linux-gnu/libc.so.6", b"elf");
            add("lib/python3.11/os.py", b"py");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "lib/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1.2")
                .unwrap();
            b.finish().unwrap();
        }
        let under = dir.path().join("root/usr");
        unpack_loader_files(&archive, &under).unwrap();
        assert!(under.join("lib/x86_64-linux-gnu/libc.so.6").is_file());
        assert!(!under.join("lib/python3.11/os.py").exists());
        assert_eq!(
            fs::read_link(under.join("lib/libz.so.1")).unwrap(),
            PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1.2")
        );
    }

    #[test]
    fn a_refused_connection_is_told_from_a_missing_wheel() {
        assert!(could_not_connect(
            "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\"Failed to establish a new connection: [Errno 111] Connection refused\")'"
        ));
        assert!(!could_not_connect(
            "ERROR: No matching distribution found for onnxruntime==9.9.9"
        ));
    }

    #[test]
    fn versions_are_checked_before_pip_sees_them() {
        assert!(valid_version(DEFAULT_ORT_VERSION));
        assert!(!valid_version("1.2; rm"));
        assert!(!valid_version("1"));
        assert!(!valid_version("1..2"));
    }
}
