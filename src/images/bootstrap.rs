//! A Python base image built from Debian packages, for machines that cannot pull images.
//!
//! `debootstrap` installs a minimal Debian with Python into a temporary directory, the tree is
//! slimmed down, and the Docker engine imports it as a single-layer image (`docker import`). The
//! tag is a hash of everything that decides the content, so an existing tag means there is
//! nothing to do.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::ui::Ui;

/// Bump whenever the recipe below changes what ends up in the image, so old tags stop matching.
pub const RECIPE_VERSION: &str = "1";

/// Repository part of every bootstrapped base image tag.
pub const BASE_REPO: &str = "ferry-base";

/// Always installed: the interpreter, `venv` + `pip` to install wheels into a virtual
/// environment, and CA certificates so HTTPS works inside the image.
const BASE_PACKAGES: &[&str] = &["python3", "python3-pip", "python3-venv", "ca-certificates"];

/// Image configuration applied at import; an imported tarball has none at all.
const IMAGE_CHANGES: &[&str] = &[
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    r#"CMD ["python3"]"#,
];

/// Keeps packages installed later (in a Dockerfile `RUN apt-get install`) as slim as the base:
/// the same exclusions Debian's own `-slim` images use.
const DPKG_SLIM_CFG: &str = "\
# Written by ferry: no docs, man pages or translations in container images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
";

/// How many lines of debootstrap's output a failure report quotes.
const FAILURE_TAIL: usize = 15;

/// Size of the chunks the rootfs tarball is streamed to the engine in.
const TAR_CHUNK: usize = 1 << 20;

/// Debian suites a host mirror entry must list for it to count as a plain Debian archive (rather
/// than some vendor's repository that happens to be configured on the host).
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "bootstrapping a base image needs root (debootstrap creates root-owned files and device \
         nodes): run ferry as root or with sudo, or set `environment.base` to an image you can pull"
    )]
    NotRoot,
    #[error(
        "debootstrap is not installed; install it with `sudo apt-get install debootstrap` (or run \
         ./install.sh), or set `environment.base` to an image you can pull"
    )]
    DebootstrapMissing,
    #[error("invalid Debian suite {0:?}: expected a name such as \"bookworm\"")]
    InvalidSuite(String),
    #[error(
        "invalid Debian package name {0:?}: names are lowercase letters, digits and `+-.`, at \
         least two characters"
    )]
    InvalidPackage(String),
    #[error(
        "debootstrap failed ({status}); full log kept at {}\n{}",
        log.display(),
        tail.join("\n")
    )]
    DebootstrapFailed {
        status: String,
        tail: Vec<String>,
        log: PathBuf,
    },
    #[error("docker could not import the base image {tag}: {source}")]
    Import {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BootstrapError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| BootstrapError::Io {
            action,
            path,
            source,
        }
    }
}

pub struct BaseRequest<'a> {
    /// Debian suite, e.g. "bookworm".
    pub suite: &'a str,
    /// Extra Debian packages from the spec, e.g. `libgomp1`.
    pub packages: &'a [String],
}

impl BaseRequest<'_> {
    /// The spec's packages, sorted and without duplicates, so the tag does not depend on order.
    fn extra_packages(&self) -> BTreeSet<&str> {
        self.packages
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Everything debootstrap's `--include` gets: the base set, then the spec's extras.
    fn include_list(&self) -> Vec<&str> {
        let mut all: Vec<&str> = BASE_PACKAGES.to_vec();
        for p in self.extra_packages() {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        all
    }
}

/// `ferry-base:<suite>-<12 hex>`, the hash covering the suite, the extra packages (order and
/// duplicates ignored) and the recipe version.
pub fn base_tag(req: &BaseRequest) -> String {
    let mut h = Sha256::new();
    h.update(b"recipe\0");
    h.update(RECIPE_VERSION.as_bytes());
    h.update(b"\0suite\0");
    h.update(req.suite.as_bytes());
    for p in req.extra_packages() {
        h.update(b"\0package\0");
        h.update(p.as_bytes());
    }
    let digest = hex::encode(h.finalize());
    format!("{BASE_REPO}:{}-{}", req.suite, &digest[..12])
}

/// Returns the tag of a base image for `req`, bootstrapping and importing it first unless the
/// engine already has it.
pub async fn ensure_base(
    docker: &Docker,
    req: &BaseRequest<'_>,
    ui: &Ui,
) -> Result<String, BootstrapError> {
    validate(req)?;
    let tag = base_tag(req);
    match docker.inspect_image(&tag).await {
        Ok(_) => return Ok(tag),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(BootstrapError::Docker(e)),
    }

    if is_root() == Some(false) {
        return Err(BootstrapError::NotRoot);
    }
    let debootstrap = find_program("debootstrap").ok_or(BootstrapError::DebootstrapMissing)?;

    let started = Instant::now();
    let tmp_parent = std::env::temp_dir();
    let tmp = tempfile::Builder::new()
        .prefix("ferry-base-")
        .tempdir_in(&tmp_parent)
        .map_err(BootstrapError::io("creating a directory in", &tmp_parent))?;
    let workdir = Workdir::new(tmp);

    let result = build_in(docker, req, ui, &tag, &debootstrap, workdir.rootfs()).await;

    // The rootfs is a few hundred MB of files: remove it off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(workdir)).await;

    let size = result?;
    ui.info(format!(
        "base image {tag}: {} in {}",
        human_bytes(size),
        crate::ui::human_duration(started.elapsed())
    ));
    Ok(tag)
}

/// Runs debootstrap into `rootfs`, trims it and imports it; returns the image size in bytes.
async fn build_in(
    docker: &Docker,
    req: &BaseRequest<'_>,
    ui: &Ui,
    tag: &str,
    debootstrap: &Path,
    rootfs: PathBuf,
) -> Result<u64, BootstrapError> {
    let mirror = host_mirror();
    run_debootstrap(req, ui, tag, debootstrap, &rootfs, mirror.as_deref()).await?;

    let step = ui.step("slimming the base image");
    let trim_root = rootfs.clone();
    match tokio::task::spawn_blocking(move || trim_rootfs(&trim_root)).await {
        Ok(Ok(())) => step.finish("slimmed the base image"),
        Ok(Err(e)) => {
            step.fail();
            return Err(e);
        }
        Err(join) => {
            step.fail();
            return Err(BootstrapError::Io {
                action: "slimming",
                path: rootfs,
                source: io::Error::other(join),
            });
        }
    }

    let step = ui.step(format!("importing {tag}"));
    match import_rootfs(docker, &rootfs, tag).await {
        Ok(()) => {}
        Err(e) => {
            step.fail();
            return Err(e);
        }
    }
    let size = docker
        .inspect_image(tag)
        .await
        .ok()
        .and_then(|i| i.size)
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    step.finish(format!("imported {tag} ({})", human_bytes(size)));
    Ok(size)
}

fn validate(req: &BaseRequest) -> Result<(), BootstrapError> {
    // The suite ends up in an image tag and a URL path; Debian's names are plain lowercase words.
    let suite_ok = req.suite.len() <= 64
        && req
            .suite
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase())
        && req
            .suite
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !suite_ok {
        return Err(BootstrapError::InvalidSuite(req.suite.to_string()));
    }
    // Names go into a comma-separated `--include`; Debian policy 5.6.1 keeps them unambiguous.
    for p in req.extra_packages() {
        let ok = p.len() >= 2
            && p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'.'
            });
        if !ok {
            return Err(BootstrapError::InvalidPackage(p.to_string()));
        }
    }
    Ok(())
}

async fn run_debootstrap(
    req: &BaseRequest<'_>,
    ui: &Ui,
    tag: &str,
    debootstrap: &Path,
    rootfs: &Path,
    mirror: Option<&str>,
) -> Result<(), BootstrapError> {
    let step = ui.step(format!(
        "bootstrapping Debian {} with Python ({})",
        req.suite,
        mirror.unwrap_or("debootstrap's default mirror")
    ));

    // Outlives the temporary rootfs: it is what a user looks at when the bootstrap fails.
    let log_path = std::env::temp_dir().join(format!(
        "ferry-debootstrap-{}.log",
        tag.rsplit('-').next().unwrap_or("base")
    ));
    let log_file = tokio::fs::File::create(&log_path)
        .await
        .map_err(BootstrapError::io("creating", &log_path))?;
    let mut log = tokio::io::BufWriter::new(log_file);

    let mut cmd = tokio::process::Command::new(debootstrap);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", req.include_list().join(",")))
        .arg(req.suite)
        .arg(rootfs);
    if let Some(m) = mirror {
        cmd.arg(m);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Dropping the future (Ctrl-C, an error elsewhere) must not leave debootstrap writing
        // into a directory that is being deleted.
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            step.fail();
            return Err(BootstrapError::io("running", debootstrap)(e));
        }
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, tx.clone()));
    }
    drop(tx);

    let mut log_error = None;
    while let Some(line) = rx.recv().await {
        step.output_line(&line);
        if log_error.is_none() {
            let written = async {
                log.write_all(line.as_bytes()).await?;
                log.write_all(b"\n").await
            }
            .await;
            log_error = written.err();
        }
    }
    let status = child
        .wait()
        .await
        .map_err(BootstrapError::io("waiting for", debootstrap))?;

    if status.success() {
        drop(log);
        let _ = tokio::fs::remove_file(&log_path).await;
        step.finish(format!("bootstrapped Debian {}", req.suite));
        return Ok(());
    }

    let mut tail = last_lines(step.tail(), FAILURE_TAIL);
    // debootstrap's own log has the failing command's output, which its terminal output lacks
    // when the failure is in a package's configuration (it then only says "see the log", a log
    // inside the directory about to be deleted).
    let inner_log = rootfs.join("debootstrap/debootstrap.log");
    if let Ok(inner) = tokio::fs::read_to_string(&inner_log).await {
        let _ = log
            .write_all(b"\n--- debootstrap/debootstrap.log ---\n")
            .await;
        let _ = log.write_all(inner.as_bytes()).await;
        if !tail.iter().any(|l| l.starts_with("E:")) {
            tail.push("--- debootstrap/debootstrap.log ---".to_string());
            tail.extend(last_lines(
                inner.lines().map(str::to_string).collect(),
                FAILURE_TAIL,
            ));
        }
    }
    let _ = log.flush().await;
    step.fail();
    Err(BootstrapError::DebootstrapFailed {
        status: match status.code() {
            Some(code) => format!("exit code {code}"),
            None => format!("{status}"),
        },
        tail,
        log: log_path,
    })
}

fn last_lines(mut lines: Vec<String>, n: usize) -> Vec<String> {
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

async fn forward_lines(src: impl tokio::io::AsyncRead + Unpin, tx: mpsc::UnboundedSender<String>) {
    let mut lines = BufReader::new(src).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// Removes what a container image does not need: package downloads and indexes, docs, caches.
fn trim_rootfs(root: &Path) -> Result<(), BootstrapError> {
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/man",
        "usr/share/info",
    ] {
        clear_dir(&root.join(dir), &[])?;
    }
    // Copyright files stay: they are the licences of what the image ships.
    let doc = root.join("usr/share/doc");
    if let Ok(entries) = fs::read_dir(&doc) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                clear_dir(&entry.path(), &["copyright"])?;
            } else {
                remove_path(&entry.path())?;
            }
        }
    }
    clear_dir(&root.join("usr/share/locale"), &["locale.alias"])?;
    for log in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        remove_path(&root.join(log))?;
    }
    clear_dir(&root.join("var/log/apt"), &[])?;
    remove_pycache(&root.join("usr"))?;

    // Docker mounts its own resolv.conf at run time; the host's has no business in the image.
    let resolv = root.join("etc/resolv.conf");
    if resolv.symlink_metadata().is_ok() {
        remove_path(&resolv)?;
        fs::write(&resolv, b"").map_err(BootstrapError::io("writing", &resolv))?;
    }
    let dpkg_cfg = root.join("etc/dpkg/dpkg.cfg.d");
    if dpkg_cfg.is_dir() {
        let p = dpkg_cfg.join("ferry-slim");
        fs::write(&p, DPKG_SLIM_CFG).map_err(BootstrapError::io("writing", &p))?;
    }
    Ok(())
}

/// Empties `dir` (keeping it and any entry named in `keep`); a missing dir is fine.
fn clear_dir(dir: &Path, keep: &[&str]) -> Result<(), BootstrapError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BootstrapError::io("reading", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(BootstrapError::io("reading", dir))?;
        if keep.iter().any(|k| entry.file_name() == **k) {
            continue;
        }
        remove_path(&entry.path())?;
    }
    Ok(())
}

fn remove_path(path: &Path) -> Result<(), BootstrapError> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BootstrapError::io("removing", path)(e)),
    }
}

fn remove_pycache(dir: &Path) -> Result<(), BootstrapError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BootstrapError::io("reading", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(BootstrapError::io("reading", dir))?;
        // `file_type` does not follow symlinks, so a link to a directory is never descended into.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == "__pycache__" {
            remove_path(&entry.path())?;
        } else {
            remove_pycache(&entry.path())?;
        }
    }
    Ok(())
}

/// Streams `rootfs` as a tarball into `POST /images/create?fromSrc=-`.
async fn import_rootfs(docker: &Docker, rootfs: &Path, tag: &str) -> Result<(), BootstrapError> {
    let (repo, tag_part) = tag.split_once(':').unwrap_or((tag, "latest"));
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);

    let root = rootfs.to_path_buf();
    let producer = tokio::task::spawn_blocking(move || {
        let result = write_rootfs_tar(&root, ChannelWriter { tx: tx.clone() });
        if let Err(BootstrapError::Io { source, .. }) = &result {
            // An error item aborts the upload, so the engine never imports a truncated tree.
            let _ = tx.blocking_send(Err(io::Error::new(source.kind(), source.to_string())));
        }
        result
    });

    let body = bollard::body_try_stream(
        tokio_stream_from(rx).map(|chunk: io::Result<Vec<u8>>| chunk.map(Into::into)),
    );
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag_part)
        .message("ferry: Debian base bootstrapped with debootstrap")
        .changes(IMAGE_CHANGES.iter().map(|c| c.to_string()).collect())
        .build();
    let mut progress = docker.create_image(Some(options), Some(body), None);
    let mut import_error = None;
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            import_error = Some(e);
            break;
        }
    }
    drop(progress);

    let produced = match producer.await {
        Ok(r) => r,
        Err(join) => Err(BootstrapError::Io {
            action: "archiving",
            path: rootfs.to_path_buf(),
            source: io::Error::other(join),
        }),
    };
    // The archiving error explains an aborted upload better than the engine's view of it.
    if let Err(e) = produced {
        if import_error.is_none() {
            let _ = docker
                .remove_image(
                    tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
        return Err(e);
    }
    match import_error {
        Some(source) => Err(BootstrapError::Import {
            tag: tag.to_string(),
            source,
        }),
        None => Ok(()),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An `io::Write` that hands its bytes to the async side; a closed channel (the upload ended)
/// turns into a write error that stops the archiver.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the image upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the tree under `root` as a tar stream: numeric owners and modes kept, symlinks as
/// symlinks, hard links as links, device nodes, sockets and FIFOs left out (the engine provides
/// `/dev`), other file systems mounted below `root` not entered.
fn write_rootfs_tar(root: &Path, out: impl Write) -> Result<(), BootstrapError> {
    let root_meta = root
        .symlink_metadata()
        .map_err(BootstrapError::io("reading", root))?;
    let mut ar = tar::Builder::new(BufWriter::with_capacity(TAR_CHUNK, out));
    ar.follow_symlinks(false);
    let mut walker = TarWalker {
        root_dev: root_meta.dev(),
        links: HashMap::new(),
        ar: &mut ar,
    };
    walker.dir(root, Path::new(""))?;
    let mut inner = ar
        .into_inner()
        .map_err(BootstrapError::io("archiving", root))?;
    inner
        .flush()
        .map_err(BootstrapError::io("archiving", root))?;
    Ok(())
}

struct TarWalker<'a, W: Write> {
    root_dev: u64,
    /// First archive path of each multiply-linked file, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
    ar: &'a mut tar::Builder<W>,
}

impl<W: Write> TarWalker<'_, W> {
    fn dir(&mut self, dir: &Path, rel: &Path) -> Result<(), BootstrapError> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(BootstrapError::io("reading", dir))?
            .collect::<Result<_, _>>()
            .map_err(BootstrapError::io("reading", dir))?;
        // Sorted, so the same tree always gives the same archive.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = path
                .symlink_metadata()
                .map_err(BootstrapError::io("reading", &path))?;
            self.entry(&path, &rel, &meta)
                .map_err(BootstrapError::io("archiving", &path))?;
            if meta.is_dir() && meta.dev() == self.root_dev {
                self.dir(&path, &rel)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            return Ok(());
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        if ft.is_symlink() {
            let target = fs::read_link(path)?;
            return self.ar.append_link(&mut header, rel, target);
        }
        if ft.is_dir() {
            return self.ar.append_data(&mut header, rel, io::empty());
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                let first = first.clone();
                return self.ar.append_link(&mut header, rel, first);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let file = fs::File::open(path)?;
        // The header already carries the size; reading more would corrupt the archive.
        self.ar
            .append_data(&mut header, rel, io::Read::take(file, meta.len()))
    }
}

/// The temporary directory debootstrap works in. Dropping it unmounts anything an interrupted
/// debootstrap left mounted inside (`/proc`, `/sys`) before deleting the tree, so the deletion
/// can never reach into the host's pseudo file systems.
struct Workdir {
    dir: Option<tempfile::TempDir>,
}

impl Workdir {
    fn new(dir: tempfile::TempDir) -> Self {
        Workdir { dir: Some(dir) }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("rootfs"))
            .unwrap_or_default()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let base = fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().to_path_buf());
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| mounts_below(&t, &base))
            .unwrap_or_default();
        for m in &mounts {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let still_mounted = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| !mounts_below(&t, &base).is_empty())
            .unwrap_or(false);
        if still_mounted {
            // Deleting would descend into a mounted file system; leaking the directory is safer.
            let _ = dir.keep();
        }
    }
}

/// Mount points at or below `base` in `/proc/self/mountinfo` text, deepest first.
fn mounts_below(mountinfo: &str, base: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(base))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// debootstrap, when this process can run it (as root): what [`foreign_first_stage`] needs.
pub fn foreign_requirements_met() -> Result<PathBuf, BootstrapError> {
    if is_root() == Some(false) {
        return Err(BootstrapError::NotRoot);
    }
    find_program("debootstrap").ok_or(BootstrapError::DebootstrapMissing)
}

/// debootstrap's first stage for another CPU (`--foreign`): it downloads and unpacks the
/// packages of a minimal Debian of `arch` into `dest` without running any of them, so it works
/// on any machine, emulator or not. The tree is the platform's C library, loader and their
/// links as Debian lays them out: enough to take a serving image's libraries from. `dest` must
/// not exist or be empty. The same mirror as [`ensure_base`] is used (apt's, else debootstrap's
/// default).
pub async fn foreign_first_stage(
    suite: &str,
    arch: crate::platform::Arch,
    dest: &Path,
    ui: &Ui,
) -> Result<(), BootstrapError> {
    validate(&BaseRequest {
        suite,
        packages: &[],
    })?;
    let debootstrap = foreign_requirements_met()?;
    let mirror = host_mirror();
    let step = ui.step(format!(
        "unpacking Debian {suite} for {} ({})",
        arch.debian(),
        mirror.as_deref().unwrap_or("debootstrap's default mirror")
    ));
    let log = std::env::temp_dir().join(format!("ferry-debootstrap-{suite}-{}.log", arch.debian()));
    let mut cmd = tokio::process::Command::new(&debootstrap);
    cmd.arg("--foreign")
        .arg(format!("--arch={}", arch.debian()))
        .arg("--variant=minbase")
        .arg(suite)
        .arg(dest);
    if let Some(m) = &mirror {
        cmd.arg(m);
    }
    let out = cmd
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .kill_on_drop(true)
        .output()
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            step.fail();
            return Err(BootstrapError::io("running", debootstrap)(e));
        }
    };
    if out.status.success() {
        step.finish(format!("unpacked Debian {suite} for {}", arch.debian()));
        return Ok(());
    }
    step.fail();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Ok(inner) = fs::read_to_string(dest.join("debootstrap/debootstrap.log")) {
        text.push_str("\n--- debootstrap/debootstrap.log ---\n");
        text.push_str(&inner);
    }
    fs::write(&log, &text).map_err(BootstrapError::io("writing", &log))?;
    Err(BootstrapError::DebootstrapFailed {
        status: out.status.to_string(),
        tail: last_lines(text.lines().map(str::to_string).collect(), FAILURE_TAIL),
        log,
    })
}

/// Effective uid 0? `None` when it cannot be told (then debootstrap reports it itself).
pub(crate) fn is_root() -> Option<bool> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let effective = uids.split_whitespace().nth(1)?;
    Some(effective == "0")
}

/// Looks for `name` on PATH and in the sbin directories, which a sudo'd PATH may lack.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// The host's configured Debian mirror, so the bootstrap uses the same (perhaps internal) archive
/// as apt does. `None` lets debootstrap use its default.
fn host_mirror() -> Option<String> {
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list")
        && let Some(m) = mirror_from_one_line(&text)
    {
        return Some(m);
    }
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    // apt reads these in name order; the first match should be the same one apt prefers.
    files.sort();
    files.into_iter().find_map(|p| {
        let text = fs::read_to_string(&p).ok()?;
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => mirror_from_one_line(&text),
            Some("sources") => mirror_from_deb822(&text),
            _ => None,
        }
    })
}

/// First plain Debian archive in a one-line-style `sources.list`.
fn mirror_from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // Options such as `[arch=amd64 signed-by=…]` may contain spaces.
            if !uri.ends_with(']') {
                words.find(|w| w.ends_with(']'))?;
            }
            uri = words.next()?;
        }
        let suite = words.next()?;
        debian_archive(uri, &[suite])
    })
}

/// First plain Debian archive in a deb822-style `.sources` file.
fn mirror_from_deb822(text: &str) -> Option<String> {
    let mut stanza: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(m) = deb822_stanza(&stanza) {
                return Some(m);
            }
            stanza.clear();
        } else if !line.trim_start().starts_with('#') {
            stanza.push(line);
        }
    }
    None
}

fn deb822_stanza(lines: &[&str]) -> Option<String> {
    let field = |name: &str| -> Option<&str> {
        lines.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    };
    if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
        return None;
    }
    if !field("Types")?.split_whitespace().any(|t| t == "deb") {
        return None;
    }
    let suites: Vec<&str> = field("Suites")?.split_whitespace().collect();
    field("URIs")?
        .split_whitespace()
        .find_map(|uri| debian_archive(uri, &suites))
}

/// `uri` when it looks like a plain Debian archive (not the security archive, not a third-party
/// repository) serving one of `suites`.
fn debian_archive(uri: &str, suites: &[&str]) -> Option<String> {
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s));
    if !scheme_ok || uri.contains("security") {
        return None;
    }
    let debian_suite = suites.iter().any(|s| {
        !s.ends_with("-security") && {
            let codename = s.split('-').next().unwrap_or(s);
            DEBIAN_SUITES.contains(&codename)
        }
    });
    debian_suite.then(|| uri.trim_end_matches('/').to_string())
}

fn human_bytes(n: u64) -> String {
    const MB: f64 = 1_000_000.0;
    if n >= 1_000_000_000 {
        format!("{:.2} GB", n as f64 / (1000.0 * MB))
    } else {
        format!("{:.0} MB", n as f64 / MB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(suite: &'a str, packages: &'a [String]) -> BaseRequest<'a> {
        BaseRequest { suite, packages }
    }

    #[test]
    fn base_tag_is_stable_and_ignores_order_and_duplicates() {
        let a = vec!["libgomp1".to_string(), "curl".to_string()];
        let b = vec![
            "curl".to_string(),
            "libgomp1".to_string(),
            "curl".to_string(),
        ];
        let tag = base_tag(&req("bookworm", &a));
        assert_eq!(tag, base_tag(&req("bookworm", &b)));
        assert!(tag.starts_with("ferry-base:bookworm-"));
        let hash = tag.rsplit('-').next().unwrap_or_default();
        assert_eq!(hash.len(), 12);
        assert!(hash.bytes().all(|c| c.is_ascii_hexdigit()));
        // Pinned: a change here means every user's base image is rebuilt; bump RECIPE_VERSION
        // deliberately instead.
        assert_eq!(
            base_tag(&req("bookworm", &["libgomp1".to_string()])),
            format!("ferry-base:bookworm-{}", {
                let mut h = Sha256::new();
                h.update(b"recipe\0");
                h.update(RECIPE_VERSION.as_bytes());
                h.update(b"\0suite\0bookworm\0package\0libgomp1");
                hex::encode(h.finalize())[..12].to_string()
            })
        );
    }

    #[test]
    fn base_tag_changes_with_inputs() {
        let none: Vec<String> = vec![];
        let one = vec!["libgomp1".to_string()];
        let t = base_tag(&req("bookworm", &none));
        assert_ne!(t, base_tag(&req("bookworm", &one)));
        assert_ne!(t, base_tag(&req("trixie", &none)));
        assert!(base_tag(&req("trixie", &none)).starts_with("ferry-base:trixie-"));
    }

    #[test]
    fn include_list_puts_base_packages_first_without_duplicates() {
        let extra = vec!["libgomp1".to_string(), "python3".to_string()];
        assert_eq!(
            req("bookworm", &extra).include_list(),
            vec![
                "python3",
                "python3-pip",
                "python3-venv",
                "ca-certificates",
                "libgomp1"
            ]
        );
    }

    #[test]
    fn rejects_bad_names() {
        let bad = vec!["libgomp1,evil".to_string()];
        assert!(matches!(
            validate(&req("bookworm", &bad)),
            Err(BootstrapError::InvalidPackage(_))
        ));
        assert!(matches!(
            validate(&req("../x", &[])),
            Err(BootstrapError::InvalidSuite(_))
        ));
        let good = vec!["libstdc++6".to_string(), "g++".to_string()];
        assert!(validate(&req("bookworm", &good)).is_ok());
    }

    #[test]
    fn mirror_from_deb822_skips_security_and_third_party() {
        let debian = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
";
        assert_eq!(
            mirror_from_deb822(debian).as_deref(),
            Some("http://mirror.example.org/debian")
        );

        let security_first = "\
Types: deb
URIs: https://mirror.example.org/debian-security/
Suites: bookworm-security
Components: main

Types: deb-src
URIs: https://src.example.org/debian
Suites: bookworm

Enabled: no
Types: deb
URIs: https://disabled.example.org/debian
Suites: bookworm

Types: deb
URIs: https://mirror.example.org/debian/
Suites: bookworm
Components: main
";
        assert_eq!(
            mirror_from_deb822(security_first).as_deref(),
            Some("https://mirror.example.org/debian")
        );

        let nodesource = "\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
";
        assert_eq!(mirror_from_deb822(nodesource), None);
    }

    #[test]
    fn mirror_from_one_line_format() {
        let text = "\
# deb http://commented.example.org/debian bookworm main
deb-src http://src.example.org/debian bookworm main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://ftp.example.de/debian/ bookworm main contrib
deb http://mirror.example.org/debian bookworm-updates main
";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://ftp.example.de/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb http://archive.ubuntu.com/ubuntu jammy main\n"),
            None
        );
        assert_eq!(mirror_from_one_line(""), None);
    }

    #[test]
    fn mounts_below_finds_leftover_mounts_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
40 22 0:5 / /tmp/ferry-base-x/rootfs/proc rw - proc proc rw
41 22 0:6 / /tmp/ferry-base-x/rootfs/sys rw - sysfs sysfs rw
42 41 0:7 / /tmp/ferry-base-x/rootfs/sys/fs/cgroup rw - cgroup2 cgroup rw
43 22 0:8 / /tmp/other\\040dir rw - tmpfs tmpfs rw
";
        let found = mounts_below(info, Path::new("/tmp/ferry-base-x"));
        assert_eq!(found.len(), 3);
        assert_eq!(
            found[0],
            PathBuf::from("/tmp/ferry-base-x/rootfs/sys/fs/cgroup")
        );
        assert_eq!(unescape_mountinfo("/tmp/other\\040dir"), "/tmp/other dir");
    }

    #[test]
    fn tar_keeps_symlinks_hardlinks_and_owners() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin"))?;
        fs::write(root.join("usr/bin/a"), b"hello")?;
        fs::hard_link(root.join("usr/bin/a"), root.join("usr/bin/b"))?;
        std::os::unix::fs::symlink("usr/bin", root.join("bin"))?;
        let mut out = Vec::new();
        write_rootfs_tar(root, &mut out)?;
        let mut ar = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries()? {
            let e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let link = e
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen.push((path, e.header().entry_type(), link, e.header().uid()?));
        }
        let uid = fs::metadata(root.join("usr/bin/a"))?.uid() as u64;
        assert_eq!(
            seen,
            vec![
                ("bin".into(), tar::EntryType::Symlink, "usr/bin".into(), uid),
                ("usr".into(), tar::EntryType::Directory, String::new(), uid),
                (
                    "usr/bin".into(),
                    tar::EntryType::Directory,
                    String::new(),
                    uid
                ),
                (
                    "usr/bin/a".into(),
                    tar::EntryType::Regular,
                    String::new(),
                    uid
                ),
                (
                    "usr/bin/b".into(),
                    tar::EntryType::Link,
                    "usr/bin/a".into(),
                    uid
                ),
            ]
        );
        Ok(())
    }

    /// Bootstraps the real base image (needs root, debootstrap, a Debian mirror, a Docker
    /// engine): `cargo test --lib images::bootstrap -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn ensure_base_for_real() -> Result<(), Box<dyn std::error::Error>> {
        let docker = Docker::connect_with_local_defaults()?;
        let packages = vec!["libgomp1".to_string()];
        let req = BaseRequest {
            suite: "bookworm",
            packages: &packages,
        };
        let ui = Ui::new(crate::ui::OutputMode::Human);
        let started = Instant::now();
        let tag = ensure_base(&docker, &req, &ui).await?;
        eprintln!("{tag} ready after {:?}", started.elapsed());
        assert_eq!(tag, base_tag(&req));
        let again = Instant::now();
        assert_eq!(ensure_base(&docker, &req, &ui).await?, tag);
        assert!(again.elapsed().as_secs() < 5, "an existing tag is a no-op");
        Ok(())
    }
}
