//! A container registry on 127.0.0.1 (Debian's docker-registry), for tests that push images.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `ferry` / `ferry-test-secret`, bcrypt (cost 4, which the registry accepts and checks fast).
pub const HTPASSWD: &str = "ferry:$2b$04$beWeKad9se8ydbwDJinl9.FzCqexIyzdQih6rUO.5CK3KARJiQAz2\n";
pub const USER: &str = "ferry";
pub const PASSWORD: &str = "ferry-test-secret";

pub const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

pub fn registry_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("docker-registry"))
        .find(|p| p.is_file())
}

/// A registry on 127.0.0.1 with its storage in a temporary directory, killed when dropped.
pub struct Registry {
    child: Child,
    pub host: String,
    binary: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// None (after saying so) when the registry is not installed.
    pub async fn start(with_auth: bool) -> Option<Registry> {
        let Some(binary) = registry_binary() else {
            eprintln!(
                "skipped: docker-registry is not installed (Debian package docker-registry; .ci/run installs it)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: ferry-tests\n",
            storage.display()
        );
        if with_auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ferry-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Registry {
            child,
            host,
            binary,
            _dir: dir,
        };
        registry.wait_ready().await;
        Some(registry)
    }

    /// Until `GET /v2/` answers at all (401 counts: the registry is up, it wants a login).
    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/", self.host);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if client.get(&url).send().await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {url}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the registry keeps blobs, manifests and uploads in progress.
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("storage")
    }

    /// Kills the registry process (SIGKILL: it gets no chance to finish anything).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same address with the same storage.
    pub async fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("registry.log"))
            .unwrap();
        self.child = Command::new(&self.binary)
            .arg("serve")
            .arg(self._dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_ready().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn repository(&self, name: &str) -> String {
        format!("{}/ml/{name}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The engine's names for images in this registry are this registry's alone (its port
        // is new every run): without them, every run would leave tags behind.
        let prefix = format!("{}/", self.host);
        if let Ok(out) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        {
            let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|t| t.starts_with(&prefix))
                .map(str::to_string)
                .collect();
            if !tags.is_empty() {
                let _ = Command::new("docker").arg("rmi").args(&tags).output();
            }
        }
    }
}
