//! Pushing to a real registry through the real Docker engine: the digest ferry returns is the
//! one the registry serves, the image pulls back by it, credentials come from a Docker config,
//! and each way a push fails says what to do.
//!
//! Needs a running Docker engine and Debian's `docker-registry` (the distribution registry),
//! started here on 127.0.0.1, which the engine allows over plain HTTP. Without it the tests that
//! need a registry say they are skipped and pass. Images are made with `docker import` from a
//! one-file tar, so nothing is pulled, and removed when each test ends.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::free_port;
use common::registry::{MANIFEST_TYPES, PASSWORD, Registry, USER};
use ferry::images::push::{PushError, Pushed, push, push_with_config};
use ferry::ui::Ui;

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker_cli(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A one-file image made with `docker import` (nothing pulled), removed with all its tags when
/// dropped.
struct TestImage {
    /// `ferrytest/push-<pid>-<n>:<tag>`
    reference: String,
    tag: String,
    id: String,
}

impl TestImage {
    fn new() -> TestImage {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let content = format!("ferry push test {pid} {n} {nanos}\n");
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "hello.txt", content.as_bytes())
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        let tag = format!("{:012x}", (nanos as u64) & 0xffff_ffff_ffff);
        let reference = format!("ferrytest/push-{pid}-{n}:{tag}");
        let mut child = Command::new("docker")
            .args(["import", "-", &reference])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        TestImage { reference, tag, id }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        docker_cli(&["rmi", "-f", &self.id]);
    }
}

/// A Docker config directory holding `config.json` with `json`.
fn docker_config(json: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

fn auths(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    let auth = base64(format!("{user}:{password}").as_bytes());
    docker_config(&format!(
        r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#
    ))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The digest the registry itself gives for `repository:tag`.
async fn registry_digest(registry: &Registry, name: &str, tag: &str, auth: bool) -> String {
    let mut req = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/ml/{name}/manifests/{tag}",
            registry.host
        ))
        .header("Accept", MANIFEST_TYPES);
    if auth {
        req = req.basic_auth(USER, Some(PASSWORD));
    }
    let response = req.send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "manifest of ml/{name}:{tag}"
    );
    response
        .headers()
        .get("Docker-Content-Digest")
        .expect("the registry names the manifest's digest")
        .to_str()
        .unwrap()
        .to_string()
}

async fn engine() -> bollard::Docker {
    ferry::docker::connect().await.expect("a Docker engine")
}

fn check_pushed(pushed: &Pushed, repository: &str, tag: &str) {
    assert_eq!(pushed.repository, repository);
    assert_eq!(pushed.tag, tag);
    let hex = pushed
        .digest
        .strip_prefix("sha256:")
        .expect("a sha256 digest");
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(pushed.reference, format!("{repository}@{}", pushed.digest));
}

#[tokio::test]
async fn a_push_returns_the_registrys_digest_and_the_image_pulls_back_by_it() {
    let Some(registry) = Registry::start(false).await else {
        return;
    };
    let docker = engine().await;
    let image = TestImage::new();
    let name = format!("roundtrip-{}", std::process::id());
    let repository = registry.repository(&name);
    let empty = docker_config("{}");

    let pushed = push_with_config(
        &docker,
        &image.reference,
        &repository,
        Some(empty.path()),
        &Ui::silent(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
    check_pushed(&pushed, &repository, &image.tag);
    assert_eq!(
        pushed.digest,
        registry_digest(&registry, &name, &image.tag, false).await,
        "ferry's digest is the registry's"
    );

    // Every layer is there already: the same manifest, so the same digest.
    let again = push_with_config(
        &docker,
        &image.reference,
        &repository,
        Some(empty.path()),
        &Ui::silent(),
    )
    .await
    .unwrap();
    assert_eq!(again, pushed);

    // An image id has no tag to carry over: it is pushed under its short id, same manifest.
    let by_id = push_with_config(&docker, &image.id, &repository, None, &Ui::silent())
        .await
        .unwrap();
    let short = &image.id.trim_start_matches("sha256:")[..12];
    check_pushed(&by_id, &repository, short);
    assert_eq!(by_id.digest, pushed.digest);

    // Gone from this engine, then back from the registry by digest alone: the same image.
    docker_ok(&["rmi", "-f", &image.id]);
    assert!(
        !docker_cli(&["image", "inspect", &image.id])
            .status
            .success()
    );
    docker_ok(&["pull", "-q", &pushed.reference]);
    let pulled = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pushed.reference]);
    assert_eq!(
        pulled, image.id,
        "the digest names exactly the pushed image"
    );
}

#[tokio::test]
async fn credentials_come_from_the_docker_config() {
    let Some(registry) = Registry::start(true).await else {
        return;
    };
    let docker = engine().await;
    let image = TestImage::new();
    let name = format!("auth-{}", std::process::id());
    let repository = registry.repository(&name);

    let none = docker_config("{}");
    let err = push_with_config(
        &docker,
        &image.reference,
        &repository,
        Some(none.path()),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PushError::AuthRequired { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("docker login {}", registry.host)),
        "{text}"
    );

    let wrong = auths(&registry.host, USER, "not-the-password");
    let err = push_with_config(
        &docker,
        &image.reference,
        &repository,
        Some(wrong.path()),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PushError::AuthDenied { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("config.json") && text.contains(&registry.host),
        "{text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "no secret in messages: {text}"
    );

    let right = auths(&registry.host, USER, PASSWORD);
    let pushed = push_with_config(
        &docker,
        &image.reference,
        &repository,
        Some(right.path()),
        &Ui::silent(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
    check_pushed(&pushed, &repository, &image.tag);
    assert_eq!(
        pushed.digest,
        registry_digest(&registry, &name, &image.tag, true).await
    );
}

#[tokio::test]
async fn a_registry_with_nothing_listening_is_unreachable() {
    let docker = engine().await;
    let image = TestImage::new();
    let host = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = push(
        &docker,
        &image.reference,
        &format!("{host}/ml/nothing"),
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PushError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("registry {host} is unreachable")),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an absent registry is reported at once, not after retries"
    );
    let stray = format!("{host}/ml/nothing:{}", image.tag);
    assert!(
        !docker_cli(&["image", "inspect", &stray]).status.success(),
        "a failed push takes back the tag it added"
    );
}

#[tokio::test]
async fn a_missing_local_image_points_at_ferry_build() {
    let docker = engine().await;
    let missing = format!("ferrytest/absent-{}:0123456789ab", std::process::id());
    let err = push(&docker, &missing, "127.0.0.1:1/ml/absent", &Ui::silent())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PushError::LocalImageMissing { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&missing) && text.contains("ferry build"),
        "{text}"
    );
}

#[tokio::test]
async fn a_repository_with_a_tag_is_refused_before_anything_happens() {
    let docker = engine().await;
    let err = push(
        &docker,
        "ferrytest/never-looked-up:1",
        "127.0.0.1:1/ml/x:v1",
        &Ui::silent(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PushError::InvalidRepository { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("tag (`:v1`)"));
}

#[test]
fn the_test_base64_is_standard() {
    assert_eq!(base64(b"ferry:s3cret"), "ZmVycnk6czNjcmV0");
    assert_eq!(base64(b"u:p1"), "dTpwMQ==");
    assert_eq!(base64(b"u:p"), "dTpw");
}
