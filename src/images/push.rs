//! Pushing a local image to a registry, so a cluster can run it by digest.
//!
//! The image is tagged `<repository>:<tag>` (the local tag's content hash, or the image id's
//! short form) and pushed through the engine, with the credentials the user's Docker config
//! already holds. The result names the image by the digest the registry stored, never by tag:
//! tags move, digests do not, and a cluster that pulls `repository@sha256:…` runs exactly what
//! was built here.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::ProgressDetail;
use bollard::query_parameters::{
    PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::docker::DockerError;
use crate::platform::Platform;
use crate::ui::{Step, Ui, human_bytes};

/// What a registry without an explicit host in the reference is.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// The key `docker login` stores Docker Hub's credentials under, and what helpers expect.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// An image in a registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pushed {
    /// As given, e.g. `127.0.0.1:5000/ml/churn-serve`.
    pub repository: String,
    pub tag: String,
    /// `sha256:…`, the manifest digest the registry stored.
    pub digest: String,
    /// `repository@digest`: what a cluster should pull.
    pub reference: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("`{repository}` is not a repository to push to: {reason}")]
    InvalidRepository { repository: String, reason: String },
    #[error(
        "there is no local image {image}\n  hint: build it first (`ferry build`), or check the name with `docker images`"
    )]
    LocalImageMissing { image: String },
    #[error(
        "registry {registry} is unreachable: {message}\n  hint: check that the registry is running and that `{registry}` (host and port) is the right address; the Docker daemon, not ferry, connects to it, so it must be reachable from the daemon's machine"
    )]
    Unreachable { registry: String, message: String },
    #[error(
        "registry {registry} requires authentication: {message}\n  hint: log in with `docker login {registry}`; ferry uses the credentials the Docker config holds"
    )]
    AuthRequired { registry: String, message: String },
    #[error(
        "registry {registry} refused the credentials from {source_of}: {message}\n  hint: log in again with `docker login {registry}`, and check that the account may push to this repository"
    )]
    AuthDenied {
        registry: String,
        source_of: String,
        message: String,
    },
    #[error(
        "registry {registry} speaks plain HTTP, but the Docker daemon expects HTTPS from it: {message}\n  hint: serve the registry over HTTPS, or add \"{registry}\" to \"insecure-registries\" in the daemon's daemon.json and restart the daemon (addresses in 127.0.0.0/8 are allowed over HTTP without that)"
    )]
    InsecureRegistry { registry: String, message: String },
    #[error(
        "the Docker daemon does not trust the TLS certificate of registry {registry}: {message}\n  hint: install the registry's CA certificate as /etc/docker/certs.d/{registry}/ca.crt on the daemon's machine, or list \"{registry}\" under \"insecure-registries\" in daemon.json"
    )]
    Certificate { registry: String, message: String },
    #[error(
        "registry {registry} went away during the push: {message}\n  hint: once the registry answers again, push again; layers it already stored are not sent twice"
    )]
    GoneMidPush { registry: String, message: String },
    #[error("registry {registry} rejected the push: {message}")]
    Rejected { registry: String, message: String },
    #[error(
        "pushed {repository} to {registry}, but {what}\n  hint: push again; if it persists, compare `docker inspect --format '{{{{json .RepoDigests}}}}' {repository}` with the registry"
    )]
    Digest {
        registry: String,
        repository: String,
        what: String,
    },
    #[error(
        "cannot read the Docker config {} for the credentials of {registry}: {message}\n  hint: fix the file (it is JSON), or move it away to push without credentials",
        path.display()
    )]
    Config {
        path: PathBuf,
        registry: String,
        message: String,
    },
    #[error(
        "the credential helper docker-credential-{helper} failed for registry {registry}: {message}\n  hint: check that it is installed and works (`echo {server} | docker-credential-{helper} get`), or log in again with `docker login {registry}`"
    )]
    CredentialHelper {
        helper: String,
        registry: String,
        server: String,
        message: String,
    },
    #[error("cannot make an image index in {repository}: {reason}")]
    InvalidIndex { repository: String, reason: String },
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// Pushes `local` (a tag or id of a local image) to `repository` with the user's Docker
/// credentials, and returns it by digest.
pub async fn push(
    docker: &Docker,
    local: &str,
    repository: &str,
    ui: &Ui,
) -> Result<Pushed, PushError> {
    let config = docker_config_dir();
    push_with_config(docker, local, repository, config.as_deref(), ui).await
}

/// [`push`] with the credentials of the Docker config directory `config_dir` (the directory that
/// holds `config.json`), or none at all when it is `None`.
pub async fn push_with_config(
    docker: &Docker,
    local: &str,
    repository: &str,
    config_dir: Option<&Path>,
    ui: &Ui,
) -> Result<Pushed, PushError> {
    validate_repository(repository)?;
    let registry = registry_host(repository).to_string();

    let id = match crate::docker::image_id(docker, local).await? {
        Some(id) => id,
        None => {
            return Err(PushError::LocalImageMissing {
                image: local.to_string(),
            });
        }
    };
    let tag = match local_tag(local) {
        Some(t) => t.to_string(),
        None => short_id(&id).to_string(),
    };

    let credentials = match config_dir {
        Some(dir) => {
            // A credential helper is a process that may take its time (a keychain, a prompt).
            let (owned, reg) = (dir.to_path_buf(), registry.clone());
            let found = tokio::task::spawn_blocking(move || {
                lookup_credentials(&owned, &reg, &|helper, server| {
                    run_helper(&format!("docker-credential-{helper}"), server)
                })
            })
            .await
            .map_err(|e| PushError::Config {
                path: dir.join("config.json"),
                registry: registry.clone(),
                message: format!("reading the credentials panicked: {e}"),
            })??;
            for w in &found.warnings {
                ui.warn(w);
            }
            found.credentials
        }
        None => None,
    };

    let target = format!("{repository}:{tag}");
    let existed = crate::docker::image_id(docker, &target).await?.is_some();
    let opts = TagImageOptionsBuilder::default()
        .repo(repository)
        .tag(&tag)
        .build();
    docker
        .tag_image(local, Some(opts))
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => PushError::LocalImageMissing {
                image: local.to_string(),
            },
            e => DockerError::api(format!("tagging {local} as {target}"), e).into(),
        })?;

    let step = ui.step(format!("pushing {local} to {target}"));
    match send(docker, repository, &registry, &tag, credentials, &step).await {
        Ok(digest) => {
            let reference = format!("{repository}@{digest}");
            step.finish(format!("pushed {reference}"));
            Ok(Pushed {
                repository: repository.to_string(),
                tag,
                digest,
                reference,
            })
        }
        Err(e) => {
            step.fail();
            if !existed {
                untag(docker, &target).await;
            }
            Err(e)
        }
    }
}

/// The OCI image index media type: what a multi-platform image is named by.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// What a registry is asked for when ferry reads back a pushed image's manifest.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// An image index in a registry, and the image of each platform it references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushedIndex {
    /// The index by its digest: what a cluster runs; each node pulls its platform's image.
    pub index: Pushed,
    pub images: Vec<(Platform, Pushed)>,
}

/// The index's JSON, fields in the order of the OCI image spec, so its digest follows from the
/// images alone.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<IndexEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: String,
    size: u64,
    platform: IndexPlatform,
}

#[derive(Serialize)]
struct IndexPlatform {
    architecture: &'static str,
    os: &'static str,
}

/// Pushes each local image (one per platform) to `repository`, then an OCI image index that
/// references each by digest with its platform, and returns the index by its digest.
pub async fn push_index(
    docker: &Docker,
    images: &[(Platform, String)],
    repository: &str,
    ui: &Ui,
) -> Result<PushedIndex, PushError> {
    let config = docker_config_dir();
    push_index_with_config(docker, images, repository, config.as_deref(), ui).await
}

/// [`push_index`] with the credentials of the Docker config directory `config_dir`, or none.
pub async fn push_index_with_config(
    docker: &Docker,
    images: &[(Platform, String)],
    repository: &str,
    config_dir: Option<&Path>,
    ui: &Ui,
) -> Result<PushedIndex, PushError> {
    validate_repository(repository)?;
    let registry = registry_host(repository).to_string();
    let mut seen = std::collections::BTreeSet::new();
    for (p, _) in images {
        if !seen.insert(*p) {
            return Err(PushError::InvalidIndex {
                repository: repository.to_string(),
                reason: format!("{p} is given twice; an index holds one image per platform"),
            });
        }
    }
    if images.is_empty() {
        return Err(PushError::InvalidIndex {
            repository: repository.to_string(),
            reason: "no images were given".into(),
        });
    }
    let mut pushed = Vec::new();
    for (platform, local) in images {
        pushed.push((
            *platform,
            push_with_config(docker, local, repository, config_dir, ui).await?,
        ));
    }

    let step = ui.step(format!("pushing the image index of {repository}"));
    let result = async {
        let credentials = match config_dir {
            Some(dir) => {
                let (owned, reg) = (dir.to_path_buf(), registry.clone());
                tokio::task::spawn_blocking(move || {
                    lookup_credentials(&owned, &reg, &|helper, server| {
                        run_helper(&format!("docker-credential-{helper}"), server)
                    })
                })
                .await
                .map_err(|e| PushError::Config {
                    path: dir.join("config.json"),
                    registry: registry.clone(),
                    message: format!("reading the credentials panicked: {e}"),
                })??
                .credentials
                .map(|f| f.credentials)
            }
            None => None,
        };
        let client = RegistryClient::new(&registry, repository, credentials)?;
        let mut manifests = Vec::new();
        for (platform, p) in &pushed {
            let (media_type, bytes) = client.manifest(&p.digest).await?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if digest != p.digest {
                return Err(PushError::Digest {
                    registry: registry.clone(),
                    repository: repository.to_string(),
                    what: format!(
                        "the registry gave a manifest of digest {digest} when asked for {}",
                        p.digest
                    ),
                });
            }
            manifests.push(IndexEntry {
                media_type,
                digest,
                size: bytes.len() as u64,
                platform: IndexPlatform {
                    architecture: platform.arch.go_name(),
                    os: platform.os(),
                },
            });
        }
        let body = serde_json::to_vec(&ImageIndex {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE,
            manifests,
        })
        .map_err(|e| PushError::Rejected {
            registry: registry.clone(),
            message: format!("cannot write the index: {e}"),
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        // Named by its content too, as the images are; the digest is what counts.
        let tag = format!("index-{}", &digest["sha256:".len().."sha256:".len() + 12]);
        let stored = client.put_index(&tag, body).await?;
        if stored.as_deref().is_some_and(|d| d != digest) {
            return Err(PushError::Digest {
                registry: registry.clone(),
                repository: repository.to_string(),
                what: format!(
                    "the registry stored the index as {} where its content is {digest}",
                    stored.unwrap_or_default()
                ),
            });
        }
        Ok(Pushed {
            repository: repository.to_string(),
            tag,
            reference: format!("{repository}@{digest}"),
            digest,
        })
    }
    .await;
    match result {
        Ok(index) => {
            step.finish(format!("pushed image index {}", index.reference));
            Ok(PushedIndex {
                index,
                images: pushed,
            })
        }
        Err(e) => {
            step.fail();
            Err(e)
        }
    }
}

/// The registry's HTTP API for one repository: what the engine cannot do (an index).
struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    name: String,
    credentials: Option<DockerCredentials>,
    /// A bearer token, once the registry asked for one.
    token: tokio::sync::Mutex<Option<String>>,
}

impl RegistryClient {
    fn new(
        registry: &str,
        repository: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<RegistryClient, PushError> {
        let host = registry.split(':').next().unwrap_or(registry);
        // The engine lets loopback registries speak plain HTTP; so does ferry, and only them.
        let scheme =
            if host == "localhost" || host.starts_with("127.") || registry.starts_with("[::1]") {
                "http"
            } else {
                "https"
            };
        let name = repository
            .strip_prefix(registry)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(repository)
            .to_string();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| PushError::Unreachable {
                registry: registry.to_string(),
                message: e.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{registry}/v2/{name}"),
            registry: registry.to_string(),
            name,
            credentials,
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PushError> {
        let unreachable = |e: reqwest::Error| PushError::Unreachable {
            registry: self.registry.clone(),
            message: e.to_string(),
        };
        for attempt in 0..2 {
            let mut req = make();
            if let Some(t) = self.token.lock().await.as_deref() {
                req = req.bearer_auth(t);
            } else if let Some(c) = &self.credentials
                && let Some(user) = &c.username
            {
                req = req.basic_auth(user, c.password.as_deref());
            }
            let resp = req.send().await.map_err(unreachable)?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            match challenge.strip_prefix("Bearer ") {
                Some(params) => {
                    let token = self.fetch_token(params).await?;
                    *self.token.lock().await = Some(token);
                }
                None if self.credentials.is_some() => return Ok(resp),
                None => {
                    return Err(PushError::AuthRequired {
                        registry: self.registry.clone(),
                        message: "the registry answered 401 to the image index".into(),
                    });
                }
            }
        }
        Err(PushError::AuthRequired {
            registry: self.registry.clone(),
            message: "the registry kept asking for credentials".into(),
        })
    }

    /// A token from the realm a `Bearer` challenge names, for pulling and pushing this
    /// repository, with the user's credentials when there are any.
    async fn fetch_token(&self, params: &str) -> Result<String, PushError> {
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_string();
            match k {
                "realm" => realm = Some(v),
                "service" => query.push(("service", v)),
                _ => {}
            }
        }
        query.push(("scope", format!("repository:{}:pull,push", self.name)));
        let Some(realm) = realm else {
            return Err(PushError::AuthRequired {
                registry: self.registry.clone(),
                message: format!("its challenge names no token realm: Bearer {params}"),
            });
        };
        let mut url = reqwest::Url::parse(&realm).map_err(|e| PushError::AuthRequired {
            registry: self.registry.clone(),
            message: format!("its token realm {realm:?} is not a URL: {e}"),
        })?;
        for (k, v) in &query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.credentials
            && let Some(user) = &c.username
        {
            req = req.basic_auth(user, c.password.as_deref());
        }
        let resp = req.send().await.map_err(|e| PushError::Unreachable {
            registry: self.registry.clone(),
            message: format!("{realm}: {e}"),
        })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| PushError::AuthDenied {
                registry: self.registry.clone(),
                source_of: "the Docker config".into(),
                message: format!("the token service answered {status}"),
            })
    }

    /// The media type and bytes of the manifest `digest`.
    async fn manifest(&self, digest: &str) -> Result<(String, Vec<u8>), PushError> {
        let url = format!("{}/manifests/{digest}", self.base);
        let resp = self
            .send(|| {
                self.http
                    .get(&url)
                    .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let status = resp.status();
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| PushError::Unreachable {
            registry: self.registry.clone(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(PushError::Rejected {
                registry: self.registry.clone(),
                message: format!(
                    "reading back manifest {digest}: {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ),
            });
        }
        Ok((media_type, bytes.to_vec()))
    }

    /// Stores the index under `tag`; the digest the registry says it stored, if it says.
    async fn put_index(&self, tag: &str, body: Vec<u8>) -> Result<Option<String>, PushError> {
        let url = format!("{}/manifests/{tag}", self.base);
        let resp = self
            .send(|| {
                self.http
                    .put(&url)
                    .header(reqwest::header::CONTENT_TYPE, INDEX_MEDIA_TYPE)
                    .body(body.clone())
            })
            .await?;
        let status = resp.status();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status.is_success() {
            return Ok(digest);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            401 | 403 => PushError::AuthDenied {
                registry: self.registry.clone(),
                source_of: "the Docker config".into(),
                message: format!("{status}: {}", text.trim()),
            },
            _ => PushError::Rejected {
                registry: self.registry.clone(),
                message: format!("the image index: {status}: {}", text.trim()),
            },
        })
    }
}

/// Pushes `repository:tag`, showing progress on `step`, and returns the digest once the engine's
/// record agrees with it.
async fn send(
    docker: &Docker,
    repository: &str,
    registry: &str,
    tag: &str,
    credentials: Option<Found>,
    step: &Step,
) -> Result<String, PushError> {
    let target = format!("{repository}:{tag}");
    let (creds, source_of) = match credentials {
        Some(Found { credentials, from }) => (Some(credentials), Some(from)),
        None => (None, None),
    };
    let opts = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repository, Some(opts), creds);
    let mut progress = Progress::default();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                let reached = progress.reached_registry();
                return Err(stream_error(e, registry, &target, reached, source_of));
            }
        };
        if let Some(status) = info.status.as_deref() {
            match progress.observe(status, info.progress_detail.as_ref()) {
                Shown::Detail(d) => step.set_detail(d),
                Shown::Line(l) => step.output_line(&l),
            }
        }
    }
    let Some(digest) = progress.digest else {
        return Err(PushError::Digest {
            registry: registry.to_string(),
            repository: repository.to_string(),
            what: "the push reported no digest".into(),
        });
    };
    check_repo_digests(docker, &target, repository, registry, &digest).await?;
    Ok(digest)
}

/// Takes back the tag a failed push added, so failures leave no stray names behind; but only
/// where the image keeps another name, since removing its last tag would delete an image that
/// was given by id.
async fn untag(docker: &Docker, target: &str) {
    let Ok(image) = docker.inspect_image(target).await else {
        return;
    };
    if image.repo_tags.map_or(0, |t| t.len()) > 1 {
        let opts = RemoveImageOptionsBuilder::default().noprune(true).build();
        // Best effort: a stray tag is untidy, not wrong, and must not hide the push's error.
        let _ = docker.remove_image(target, Some(opts), None).await;
    }
}

/// The stream's digest must be one the engine recorded for the repository, or the engine and
/// the registry disagree about what was stored and the reference would not pull this image.
async fn check_repo_digests(
    docker: &Docker,
    target: &str,
    repository: &str,
    registry: &str,
    digest: &str,
) -> Result<(), PushError> {
    let image = docker
        .inspect_image(target)
        .await
        .map_err(|e| DockerError::api(format!("inspecting {target}"), e))?;
    let want = familiar(repository);
    let recorded: Vec<&str> = image
        .repo_digests
        .iter()
        .flatten()
        .filter_map(|r| r.split_once('@'))
        .filter(|(name, _)| familiar(name) == want)
        .map(|(_, d)| d)
        .collect();
    if recorded.contains(&digest) {
        return Ok(());
    }
    let what = if recorded.is_empty() {
        format!("the engine recorded no digest for it (the push reported {digest})")
    } else {
        format!(
            "the push reported {digest} while the engine recorded {}",
            recorded.join(", ")
        )
    };
    Err(PushError::Digest {
        registry: registry.to_string(),
        repository: repository.to_string(),
        what,
    })
}

/// The name without Docker Hub's implicit parts, as `RepoDigests` writes it.
fn familiar(name: &str) -> &str {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

/// What the push stream said, tallied. The engine tags each message with a layer id, but
/// bollard's `PushImageInfo` drops it, so layers are counted by their status messages rather
/// than followed one by one.
#[derive(Default, Debug)]
struct Progress {
    layers: usize,
    done: usize,
    /// The latest upload's bytes so far and its announced size.
    uploading: Option<(i64, Option<i64>)>,
    /// Set once the registry took part (a layer checked, uploaded or retried): an error after
    /// that means it went away, not that it was never there.
    reached: bool,
    digest: Option<String>,
}

enum Shown {
    /// Progress: replaces the step's detail.
    Detail(String),
    /// A message worth keeping in the step's output.
    Line(String),
}

impl Progress {
    fn reached_registry(&self) -> bool {
        self.reached
    }

    fn observe(&mut self, status: &str, detail: Option<&ProgressDetail>) -> Shown {
        match status {
            "Preparing" => self.layers += 1,
            "Waiting" => {}
            "Pushing" => {
                self.reached = true;
                if let Some(current) = detail.and_then(|d| d.current) {
                    self.uploading = Some((current, detail.and_then(|d| d.total)));
                }
            }
            "Pushed" | "Layer already exists" => {
                self.reached = true;
                self.done += 1;
                self.uploading = None;
            }
            s if s.starts_with("Mounted from") => {
                self.reached = true;
                self.done += 1;
            }
            s if s.starts_with("Retrying in") => {
                self.reached = true;
                return Shown::Line(format!("the registry stopped answering; {s}"));
            }
            s => {
                if let Some(d) = parse_digest(s) {
                    self.digest = Some(d);
                }
                return Shown::Line(s.to_string());
            }
        }
        Shown::Detail(self.detail())
    }

    fn detail(&self) -> String {
        let mut s = format!("{}/{} layers", self.done, self.layers);
        if let Some((current, total)) = self.uploading {
            s.push_str(&format!(
                ", uploading {}",
                human_bytes(current.max(0) as u64)
            ));
            // The engine's total is sometimes smaller than what it sends (it counts the layer's
            // content, then sends the compressed tar); a fraction over 1 would only confuse.
            if let Some(t) = total.filter(|t| *t >= current) {
                s.push_str(&format!(" of {}", human_bytes(t as u64)));
            }
        }
        s
    }
}

/// The digest in the engine's closing line, `<tag>: digest: sha256:<hex> size: <n>`.
fn parse_digest(status: &str) -> Option<String> {
    let (_, rest) = status.split_once("digest: ")?;
    let d = rest.split_whitespace().next()?;
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_string())
}

fn stream_error(
    e: bollard::errors::Error,
    registry: &str,
    target: &str,
    reached: bool,
    source_of: Option<String>,
) -> PushError {
    match e {
        bollard::errors::Error::DockerStreamError { error } => {
            classify(registry, target, error, reached, source_of)
        }
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => PushError::LocalImageMissing {
            image: target.to_string(),
        },
        e => DockerError::api(format!("pushing {target}"), e).into(),
    }
}

/// Turns the engine's message for a failed push into an error that says what to do. The
/// messages are Go errors from the engine's registry client, e.g.
/// `Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused`.
pub(crate) fn classify(
    registry: &str,
    target: &str,
    message: String,
    reached: bool,
    source_of: Option<String>,
) -> PushError {
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    let registry = registry.to_string();
    if m.contains("an image does not exist locally") {
        return PushError::LocalImageMissing {
            image: target.to_string(),
        };
    }
    if has(&[
        "server gave http response to https client",
        "first record does not look like a tls handshake",
    ]) {
        return PushError::InsecureRegistry { registry, message };
    }
    if has(&["x509:", "certificate signed by unknown authority", "tls: "]) {
        return PushError::Certificate { registry, message };
    }
    if has(&[
        "no basic auth credentials",
        "unauthorized",
        "authentication required",
        "denied: ",
        "access to the resource is denied",
        "forbidden",
        "insufficient_scope",
    ]) {
        return match source_of {
            Some(source_of) => PushError::AuthDenied {
                registry,
                source_of,
                message,
            },
            None => PushError::AuthRequired { registry, message },
        };
    }
    let network = has(&[
        "connection refused",
        "connection reset",
        "broken pipe",
        "no such host",
        "server misbehaving",
        "name resolution",
        "network is unreachable",
        "no route to host",
        "i/o timeout",
        "timeout",
        "deadline exceeded",
        ": eof",
        "unexpected eof",
        "use of closed network connection",
        "dial tcp",
    ]);
    if network {
        return if reached {
            PushError::GoneMidPush { registry, message }
        } else {
            PushError::Unreachable { registry, message }
        };
    }
    PushError::Rejected { registry, message }
}

// ---------------------------------------------------------------------------------------------
// References

/// The registry a repository lives in, by Docker's rule: the first path component is a registry
/// host when it has a `.` or a `:`, is `localhost`, or has an upper-case letter (a repository
/// path never has one); anything else is on Docker Hub (`docker.io`).
pub fn registry_host(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            first
        }
        _ => DOCKER_HUB,
    }
}

/// Checks `repository` against Docker's reference grammar, without tag or digest, and names the
/// part that is wrong.
pub fn validate_repository(repository: &str) -> Result<(), PushError> {
    let bad = |reason: String| PushError::InvalidRepository {
        repository: repository.to_string(),
        reason,
    };
    if repository.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if let Some((_, digest)) = repository.split_once('@') {
        return Err(bad(format!(
            "it has a digest (`@{digest}`); give the repository alone, the push returns the digest"
        )));
    }
    // `127.0.0.1:5000` alone is a registry without an image, not an image `127.0.0.1` tagged
    // `5000` on Docker Hub, which is how Docker would read it.
    let port_only = repository
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !repository.contains('/')
        && (repository.contains('.') || repository == "localhost" || port_only)
    {
        return Err(bad(format!(
            "it names only a registry; add the image's path, e.g. `{repository}/ml/<image>`"
        )));
    }
    let host = registry_host(repository);
    let path = if host == DOCKER_HUB && !repository.starts_with("docker.io/") {
        repository
    } else {
        &repository[host.len() + 1..]
    };
    if let Some(last) = path.rsplit('/').next()
        && let Some((_, tag)) = last.split_once(':')
    {
        return Err(bad(format!(
            "it has a tag (`:{tag}`); give the repository alone, ferry tags the image with its content hash"
        )));
    }
    if host != DOCKER_HUB || repository.starts_with("docker.io/") {
        check_host(host).map_err(|why| bad(format!("the registry host `{host}` {why}")))?;
    }
    if path.is_empty() {
        return Err(bad(format!(
            "it names the registry `{host}` but no image; add a path, e.g. `{host}/ml/<image>`"
        )));
    }
    for component in path.split('/') {
        check_path_component(component).map_err(|why| {
            bad(format!(
                "the path component `{component}` {why}; components are lower-case letters and digits, separated by `.`, `_`, `__` or dashes"
            ))
        })?;
    }
    if repository.len() > 255 {
        return Err(bad(format!(
            "it is {} characters long; at most 255 are allowed",
            repository.len()
        )));
    }
    if host == DOCKER_HUB && path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "64 hexadecimal characters read as an image id, not a name".into(),
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 address: `[::1]:5000`.
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| "has an unclosed `[`".to_string())?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "has `{addr}` in brackets, which is not an IPv6 address"
            ));
        }
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("has `{p}` after the address"))?,
                ),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port
        && !(p.bytes().all(|b| b.is_ascii_digit()) && matches!(p.parse::<u32>(), Ok(1..=65535)))
    {
        return Err(format!(
            "has the port `{p}`, which is not a number from 1 to 65535"
        ));
    }
    if host.starts_with('[') {
        return Ok(());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "has the part `{label}`, which is not a host name label (letters, digits and inner dashes)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("is empty (two `/` in a row, or one at an end)");
    }
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("has upper-case letters");
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err("has a separator other than `.`, `_`, `__` or dashes");
        }
    }
    Ok(())
}

/// The tag part of a local reference, if it has one (`ferry/x:3f2a…` → `3f2a…`); none for an
/// image id, a digest reference or a bare name.
fn local_tag(local: &str) -> Option<&str> {
    if local.contains('@') || local.starts_with("sha256:") {
        return None;
    }
    let last = local.rsplit('/').next()?;
    last.split_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.is_empty())
}

/// `sha256:0123456789ab…` → `0123456789ab`, the short id `docker images` shows.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// Where the Docker CLI keeps its config: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => dirs::home_dir().map(|h| h.join(".docker")),
    }
}

/// The credentials the Docker config holds for `registry`, and where they come from (a file,
/// or a credential helper); `None` when it has none. For `ferry doctor`.
pub fn credentials_for(registry: &str) -> Result<Option<(String, DockerCredentials)>, PushError> {
    let Some(dir) = docker_config_dir() else {
        return Ok(None);
    };
    let found = lookup_credentials(&dir, registry, &|helper, server| {
        run_helper(&format!("docker-credential-{helper}"), server)
    })?;
    Ok(found.credentials.map(|f| (f.from, f.credentials)))
}

/// The parts of `config.json` that hold credentials.
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials and where they came from (for messages; never the secret itself).
struct Found {
    credentials: DockerCredentials,
    from: String,
}

struct Lookup {
    credentials: Option<Found>,
    warnings: Vec<String>,
}

/// What a credential helper answered.
#[derive(Debug, PartialEq)]
enum HelperAnswer {
    Found {
        username: String,
        secret: String,
    },
    NotFound,
    /// The helper program is not installed.
    Missing,
    Failed(String),
}

/// The credentials for `registry` in the Docker config directory `dir`, the way the Docker CLI
/// picks them: the registry's own helper (`credHelpers`), else the default store (`credsStore`),
/// else the `auths` entry. `run` asks a helper (by its name) for a server's credentials.
fn lookup_credentials(
    dir: &Path,
    registry: &str,
    run: &dyn Fn(&str, &str) -> HelperAnswer,
) -> Result<Lookup, PushError> {
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Lookup {
                credentials: None,
                warnings: vec![],
            });
        }
        Err(e) => {
            return Err(PushError::Config {
                path,
                registry: registry.into(),
                message: e.to_string(),
            });
        }
    };
    // serde_json's messages give positions, never the content, so no secret leaks into them.
    let config: ConfigFile = serde_json::from_str(&text).map_err(|e| PushError::Config {
        path: path.clone(),
        registry: registry.into(),
        message: e.to_string(),
    })?;
    let server = if registry == DOCKER_HUB {
        DOCKER_HUB_SERVER
    } else {
        registry
    };
    let mut warnings = Vec::new();

    let own_helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| same_registry(k, registry))
        .map(|(_, v)| v.as_str())
        .filter(|h| !h.is_empty());
    let store = config.creds_store.as_deref().filter(|s| !s.is_empty());
    if let Some(helper) = own_helper.or(store) {
        let helper_error = |message: String| PushError::CredentialHelper {
            helper: helper.to_string(),
            registry: registry.to_string(),
            server: server.to_string(),
            message,
        };
        match run(helper, server) {
            HelperAnswer::Found { username, secret } => {
                let mut credentials = DockerCredentials {
                    serveraddress: Some(server.to_string()),
                    ..Default::default()
                };
                // Helpers hand out identity tokens under this placeholder user name.
                if username == "<token>" {
                    credentials.identitytoken = Some(secret);
                } else {
                    credentials.username = Some(username);
                    credentials.password = Some(secret);
                }
                return Ok(Lookup {
                    credentials: Some(Found {
                        credentials,
                        from: format!("docker-credential-{helper}"),
                    }),
                    warnings,
                });
            }
            HelperAnswer::NotFound => {}
            HelperAnswer::Missing if own_helper.is_none() => {
                // The default store is often set by a desktop install and copied to machines
                // without it; a registry that needs no login should still work there.
                warnings.push(format!(
                    "{} names the credential store `{helper}`, but docker-credential-{helper} is not installed; pushing to {registry} without its credentials",
                    path.display()
                ));
            }
            HelperAnswer::Missing => {
                return Err(helper_error(format!(
                    "docker-credential-{helper} is not installed (named for {registry} under credHelpers in {})",
                    path.display()
                )));
            }
            HelperAnswer::Failed(message) => return Err(helper_error(message)),
        }
    }

    let entry = config
        .auths
        .get(registry)
        .or_else(|| config.auths.get(server))
        .or_else(|| {
            config
                .auths
                .iter()
                .find(|(k, _)| same_registry(k, registry))
                .map(|(_, v)| v)
        });
    let Some(entry) = entry else {
        return Ok(Lookup {
            credentials: None,
            warnings,
        });
    };
    let mut credentials = DockerCredentials {
        serveraddress: Some(server.to_string()),
        username: entry.username.clone().filter(|s| !s.is_empty()),
        password: entry.password.clone().filter(|s| !s.is_empty()),
        identitytoken: entry.identitytoken.clone().filter(|s| !s.is_empty()),
        registrytoken: entry.registrytoken.clone().filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let (user, pass) = decode_auth(auth).ok_or_else(|| PushError::Config {
            path: path.clone(),
            registry: registry.into(),
            message: format!(
                "auths.\"{registry}\".auth is not base64 of `user:password` (log in again to rewrite it)"
            ),
        })?;
        credentials.username = Some(user);
        credentials.password = Some(pass);
    }
    let any = credentials.username.is_some()
        || credentials.identitytoken.is_some()
        || credentials.registrytoken.is_some();
    Ok(Lookup {
        credentials: any.then(|| Found {
            credentials,
            from: format!("{} (auths)", path.display()),
        }),
        warnings,
    })
}

/// Whether a config key (`https://host/v1/`, `http://host`, `host`) names `registry`, with
/// Docker Hub's several spellings taken as one.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = host.split('/').next().unwrap_or(host);
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (hub(host) && hub(registry))
}

/// `base64(user:password)` → (user, password). Standard alphabet, padding optional.
fn decode_auth(auth: &str) -> Option<(String, String)> {
    let bytes = decode_base64(auth.trim())?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.trim_end_matches('\0').to_string()))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character carries fewer than 8 bits: not valid base64.
    (bits < 6).then_some(out)
}

/// Runs `<program> get` with `server` on stdin, the credential helper protocol.
fn run_helper(program: &str, server: &str) -> HelperAnswer {
    let child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HelperAnswer::Missing,
        Err(e) => return HelperAnswer::Failed(format!("cannot run {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is judged by its exit status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return HelperAnswer::Failed(format!("{program} did not finish: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // On failure helpers print an error message, not credentials, so it can be shown.
        let said = format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let said = said.trim();
        if said.contains("credentials not found") {
            return HelperAnswer::NotFound;
        }
        return HelperAnswer::Failed(format!(
            "it exited with {}{}",
            out.status,
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.chars().take(300).collect::<String>())
            }
        ));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    match serde_json::from_str::<Answer>(&stdout) {
        Ok(a) if a.username.is_empty() && a.secret.is_empty() => HelperAnswer::NotFound,
        Ok(a) => HelperAnswer::Found {
            username: a.username,
            secret: a.secret,
        },
        // The output may hold a secret; say only that it was not the expected JSON.
        Err(_) => HelperAnswer::Failed(
            "its answer is not the JSON the credential helper protocol defines".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(repository: &str) -> String {
        match validate_repository(repository) {
            Err(PushError::InvalidRepository { reason, .. }) => reason,
            other => panic!("{repository}: {other:?}"),
        }
    }

    #[test]
    fn registry_host_follows_dockers_rule() {
        assert_eq!(
            registry_host("127.0.0.1:5000/ml/churn-serve"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("localhost/ml/x"), "localhost");
        assert_eq!(registry_host("localhost:5000/x"), "localhost:5000");
        assert_eq!(
            registry_host("registry.example.com/team/x"),
            "registry.example.com"
        );
        assert_eq!(registry_host("[::1]:5000/x"), "[::1]:5000");
        assert_eq!(registry_host("Registry/x"), "Registry");
        assert_eq!(registry_host("ml/churn"), "docker.io");
        assert_eq!(registry_host("churn"), "docker.io");
        assert_eq!(registry_host("docker.io/ml/churn"), "docker.io");
    }

    #[test]
    fn valid_repositories_pass() {
        for r in [
            "127.0.0.1:5000/ml/churn-serve",
            "localhost:5000/a",
            "registry.example.com/team/sub/x_y.z",
            "reg-1.example.com:443/a__b/c---d",
            "[::1]:5000/ml/x",
            "ml/churn",
            "churn",
            "docker.io/library/churn",
        ] {
            validate_repository(r).unwrap_or_else(|e| panic!("{r}: {e}"));
        }
    }

    #[test]
    fn invalid_repositories_name_the_wrong_part() {
        let r = reason("127.0.0.1:5000/ml/churn:v1");
        assert!(r.contains("tag (`:v1`)"), "{r}");
        let r = reason("ml/churn:v1");
        assert!(r.contains("tag (`:v1`)"), "{r}");
        let r = reason("127.0.0.1:5000/ml/churn@sha256:abc");
        assert!(r.contains("digest"), "{r}");
        let r = reason("127.0.0.1:5000/ml/Churn");
        assert!(r.contains("`Churn`") && r.contains("upper-case"), "{r}");
        let r = reason("127.0.0.1:5000/ml//x");
        assert!(r.contains("is empty"), "{r}");
        let r = reason("127.0.0.1:5000/ml/-x");
        assert!(r.contains("`-x`"), "{r}");
        let r = reason("127.0.0.1:5000/ml/a..b");
        assert!(r.contains("separator"), "{r}");
        let r = reason("127.0.0.1:99999/ml/x");
        assert!(
            r.contains("host `127.0.0.1:99999`") && r.contains("port"),
            "{r}"
        );
        let r = reason("bad_host.example.com/x");
        assert!(r.contains("`bad_host`"), "{r}");
        let r = reason("127.0.0.1:5000/");
        assert!(r.contains("no image"), "{r}");
        let r = reason("127.0.0.1:5000");
        assert!(r.contains("only a registry"), "{r}");
        let r = reason("localhost:5000");
        assert!(r.contains("only a registry"), "{r}");
        let r = reason("churn:v1");
        assert!(r.contains("tag (`:v1`)"), "{r}");
        let r = reason("");
        assert!(r.contains("empty"), "{r}");
        let r = reason(&"a".repeat(64));
        assert!(r.contains("image id"), "{r}");
        let r = reason(&format!("example.com/{}", "a".repeat(250)));
        assert!(r.contains("255"), "{r}");
        // The message leads with the repository, so it can be found in the spec.
        let e = validate_repository("127.0.0.1:5000/ml/churn:v1").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`127.0.0.1:5000/ml/churn:v1` is not")
        );
    }

    #[test]
    fn local_tags_and_ids() {
        assert_eq!(
            local_tag("ferry/churn-serve:3f2a9c01b2d4"),
            Some("3f2a9c01b2d4")
        );
        assert_eq!(local_tag("127.0.0.1:5000/ml/x:abc"), Some("abc"));
        assert_eq!(local_tag("127.0.0.1:5000/ml/x"), None);
        assert_eq!(local_tag("ferry/churn"), None);
        assert_eq!(local_tag("sha256:0123456789abcdef"), None);
        assert_eq!(local_tag("0123456789ab"), None);
        assert_eq!(local_tag("ferry/x@sha256:0123"), None);
        assert_eq!(short_id("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn the_digest_comes_from_the_closing_status() {
        let hex = "f9376ed3f526221b4a675c691b2568d94892ccdc8ea8b5b59f0c4f715414daa9";
        assert_eq!(
            parse_digest(&format!("abc123: digest: sha256:{hex} size: 523")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(parse_digest("abc: digest: sha256:abc size: 1"), None);
        assert_eq!(parse_digest("The push refers to repository [x]"), None);
    }

    #[test]
    fn progress_counts_layers_and_knows_when_the_registry_took_part() {
        let mut p = Progress::default();
        let d = |current, total| ProgressDetail {
            current: Some(current),
            total: Some(total),
        };
        p.observe("The push refers to repository [127.0.0.1:5000/ml/x]", None);
        p.observe("Preparing", None);
        p.observe("Preparing", None);
        assert!(
            !p.reached_registry(),
            "preparing happens before any request"
        );
        p.observe("Layer already exists", None);
        assert!(p.reached_registry());
        match p.observe("Pushing", Some(&d(1_500_000, 3_000_000))) {
            Shown::Detail(s) => assert_eq!(s, "1/2 layers, uploading 1.5 MB of 3.0 MB"),
            Shown::Line(l) => panic!("{l}"),
        }
        match p.observe("Pushing", Some(&d(10_240, 6))) {
            Shown::Detail(s) => assert_eq!(s, "1/2 layers, uploading 10.2 KB"),
            Shown::Line(l) => panic!("{l}"),
        }
        p.observe("Pushed", None);
        assert_eq!((p.done, p.layers), (2, 2));
        let hex = "0".repeat(64);
        p.observe(&format!("abc: digest: sha256:{hex} size: 1"), None);
        assert_eq!(p.digest, Some(format!("sha256:{hex}")));
    }

    fn kind(e: &PushError) -> &'static str {
        match e {
            PushError::Unreachable { .. } => "unreachable",
            PushError::AuthRequired { .. } => "auth-required",
            PushError::AuthDenied { .. } => "auth-denied",
            PushError::InsecureRegistry { .. } => "insecure",
            PushError::Certificate { .. } => "certificate",
            PushError::GoneMidPush { .. } => "gone",
            PushError::Rejected { .. } => "rejected",
            PushError::LocalImageMissing { .. } => "missing",
            _ => "other",
        }
    }

    /// The messages are the engine's own, recorded from Docker 20.10.
    #[test]
    fn engine_messages_become_actionable_errors() {
        let reg = "127.0.0.1:5999";
        let c = |m: &str, reached: bool, creds: bool| {
            classify(
                reg,
                "127.0.0.1:5999/ml/x:abc",
                m.to_string(),
                reached,
                creds.then(|| "docker-credential-pass".to_string()),
            )
        };
        let refused =
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused";
        let e = c(refused, false, false);
        assert_eq!(kind(&e), "unreachable");
        let text = e.to_string();
        assert!(
            text.contains("registry 127.0.0.1:5999 is unreachable"),
            "{text}"
        );
        let dns = "Get \"https://nosuchhost.invalid:5000/v2/\": dial tcp: lookup nosuchhost.invalid on 10.0.0.53:53: no such host";
        assert_eq!(kind(&c(dns, false, false)), "unreachable");
        let http =
            "Get \"https://192.0.2.2:5998/v2/\": http: server gave HTTP response to HTTPS client";
        let e = c(http, false, false);
        assert_eq!(kind(&e), "insecure");
        assert!(e.to_string().contains("insecure-registries"));
        assert!(e.to_string().contains("127.0.0.0/8"));
        let x509 =
            "Get \"https://r.example.com/v2/\": x509: certificate signed by unknown authority";
        assert_eq!(kind(&c(x509, false, false)), "certificate");
        let e = c("no basic auth credentials", false, false);
        assert_eq!(kind(&e), "auth-required");
        assert!(e.to_string().contains("docker login 127.0.0.1:5999"));
        let e = c("unauthorized: authentication required", false, true);
        assert_eq!(kind(&e), "auth-denied");
        assert!(e.to_string().contains("docker-credential-pass"));
        assert!(e.to_string().contains("docker login 127.0.0.1:5999"));
        let denied = "denied: requested access to the resource is denied";
        assert_eq!(kind(&c(denied, true, false)), "auth-required");
        // After retries the engine gives up with a bare dial error.
        let gone = "dial tcp 127.0.0.1:5999: connect: connection refused";
        let e = c(gone, true, false);
        assert_eq!(kind(&e), "gone");
        assert!(e.to_string().contains("went away during the push"));
        assert_eq!(kind(&c("Put \"http://x/v2/\": EOF", true, false)), "gone");
        let missing = "An image does not exist locally with the tag: 127.0.0.1:5999/ml/x";
        assert_eq!(kind(&c(missing, false, false)), "missing");
        assert_eq!(
            kind(&c("manifest invalid: manifest invalid", true, false)),
            "rejected"
        );
    }

    #[test]
    fn base64_auth_decodes() {
        assert_eq!(
            decode_auth("ZmVycnk6czNjcmV0OndpdGg6Y29sb25z"),
            Some(("ferry".into(), "s3cret:with:colons".into()))
        );
        // Padding is optional, as some tools write it without.
        assert_eq!(decode_auth("dTpw"), Some(("u".into(), "p".into())));
        assert_eq!(decode_auth("dTpwMQ=="), Some(("u".into(), "p1".into())));
        assert_eq!(decode_auth("dTpwMQ"), Some(("u".into(), "p1".into())));
        assert_eq!(decode_auth("bm9jb2xvbg=="), None, "no colon");
        assert_eq!(decode_auth("***"), None);
        assert_eq!(decode_auth("dTpwM"), None, "a dangling character");
    }

    fn config_dir(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        dir
    }

    fn no_helpers(_: &str, _: &str) -> HelperAnswer {
        panic!("no helper should run")
    }

    #[test]
    fn auths_entries_give_credentials_by_host() {
        let dir = config_dir(
            r#"{"auths": {
                "127.0.0.1:5000": {"auth": "ZmVycnk6czNjcmV0"},
                "https://registry.example.com/v1/": {"auth": "YTpi"},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                "token.example.com": {"identitytoken": "tok"}
            }}"#,
        );
        let get = |reg: &str| {
            lookup_credentials(dir.path(), reg, &no_helpers)
                .unwrap()
                .credentials
                .map(|f| f.credentials)
        };
        let c = get("127.0.0.1:5000").unwrap();
        assert_eq!(c.username.as_deref(), Some("ferry"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.serveraddress.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(
            get("registry.example.com").unwrap().username.as_deref(),
            Some("a")
        );
        let hub = get("docker.io").unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert_eq!(hub.serveraddress.as_deref(), Some(DOCKER_HUB_SERVER));
        let t = get("token.example.com").unwrap();
        assert_eq!(t.identitytoken.as_deref(), Some("tok"));
        assert!(
            get("127.0.0.1:5001").is_none(),
            "another port is another registry"
        );
    }

    #[test]
    fn helpers_come_first_and_missing_config_means_anonymous() {
        let dir = config_dir(
            r#"{"auths": {"r.example.com": {"auth": "YTpi"}, "s.example.com": {"auth": "YTpi"}},
                "credsStore": "store",
                "credHelpers": {"r.example.com": "own"}}"#,
        );
        let run = |helper: &str, server: &str| match (helper, server) {
            ("own", "r.example.com") => HelperAnswer::Found {
                username: "<token>".into(),
                secret: "idtok".into(),
            },
            ("store", _) => HelperAnswer::NotFound,
            other => panic!("unexpected helper call {other:?}"),
        };
        let found = lookup_credentials(dir.path(), "r.example.com", &run)
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(found.from, "docker-credential-own");
        assert_eq!(found.credentials.identitytoken.as_deref(), Some("idtok"));
        assert_eq!(found.credentials.username, None);
        // The store knows nothing of s.example.com: the auths entry is used.
        let found = lookup_credentials(dir.path(), "s.example.com", &run)
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(found.credentials.username.as_deref(), Some("a"));
        assert!(found.from.ends_with("config.json (auths)"));

        let empty = tempfile::tempdir().unwrap();
        let l = lookup_credentials(empty.path(), "r.example.com", &no_helpers).unwrap();
        assert!(l.credentials.is_none());
    }

    #[test]
    fn a_missing_store_warns_but_a_missing_own_helper_fails() {
        let dir =
            config_dir(r#"{"credsStore": "desktop", "credHelpers": {"r.example.com": "gone"}}"#);
        let run = |_: &str, _: &str| HelperAnswer::Missing;
        let l = lookup_credentials(dir.path(), "127.0.0.1:5000", &run).unwrap();
        assert!(l.credentials.is_none());
        assert!(l.warnings[0].contains("docker-credential-desktop is not installed"));
        let e = lookup_credentials(dir.path(), "r.example.com", &run)
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("docker-credential-gone"), "{text}");
        assert!(text.contains("docker login r.example.com"), "{text}");
    }

    #[test]
    fn a_broken_config_is_named_without_its_content() {
        let dir =
            config_dir(r#"{"auths": {"r.example.com": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24"}}}"#);
        let e = lookup_credentials(dir.path(), "r.example.com", &no_helpers)
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(
            text.contains("config.json") && text.contains("not base64"),
            "{text}"
        );
        assert!(!text.contains("c2VjcmV0") && !text.contains("secret-without"));
        let dir = config_dir(r#"{"auths": {"r.example.com": {"auth": "hunter2"#);
        let text = lookup_credentials(dir.path(), "r.example.com", &no_helpers)
            .err()
            .unwrap()
            .to_string();
        assert!(
            text.contains("config.json") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn credential_helpers_speak_the_protocol() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker-credential-test");
        // Answers for r.example.com only, as real helpers do; records what it was asked.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" > {}/asked\n\
                 if [ \"$server\" = r.example.com ]; then\n\
                   echo '{{\"ServerURL\":\"r.example.com\",\"Username\":\"u\",\"Secret\":\"s3\"}}'\n\
                 elif [ \"$server\" = bad.example.com ]; then\n  echo 'keychain locked'; exit 1\n\
                 else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = script.to_string_lossy().into_owned();
        assert_eq!(
            run_helper(&program, "r.example.com"),
            HelperAnswer::Found {
                username: "u".into(),
                secret: "s3".into()
            }
        );
        let asked = std::fs::read_to_string(dir.path().join("asked")).unwrap();
        assert_eq!(asked.trim(), "r.example.com");
        assert_eq!(
            run_helper(&program, "other.example.com"),
            HelperAnswer::NotFound
        );
        match run_helper(&program, "bad.example.com") {
            HelperAnswer::Failed(m) => assert!(m.contains("keychain locked"), "{m}"),
            other => panic!("{other:?}"),
        }
        let absent = dir.path().join("docker-credential-absent");
        assert_eq!(
            run_helper(&absent.to_string_lossy(), "r.example.com"),
            HelperAnswer::Missing
        );
    }
}
