//! Inputs named by URL (`http(s)://…`, such as presigned object-store links), as a scoring pod
//! fetches them: streamed to a temporary file and renamed when whole, the length checked
//! against the server's Content-Length, the sha256 against the one the URL names (pip's
//! `#sha256=HEX` fragment, never sent to the server) when it names one, and the ETag kept for
//! the run's record. Messages and records name a URL without its query: a presigned link's
//! query is its credential.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long connecting may take, and how long a read may wait for the next bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// An input given as a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlInput {
    /// What is requested: the URL without its fragment.
    pub url: String,
    /// From `#sha256=HEX`, lower-case.
    pub sha256: Option<String>,
}

/// `text` as a URL input: `None` when it is not an `http://` or `https://` URL, an error when
/// it is one ferry cannot use.
pub fn parse(text: &str) -> Option<Result<UrlInput, String>> {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    Some(parse_url(text))
}

fn parse_url(text: &str) -> Result<UrlInput, String> {
    let (url, fragment) = match text.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (text, None),
    };
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    let sha256 = match fragment {
        None | Some("") => None,
        Some(f) => {
            let hex = f.strip_prefix("sha256=").ok_or_else(|| {
                format!("#{f}: the only fragment ferry reads is #sha256=HEX (the file's sha256)")
            })?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("#sha256={hex}: not a sha256 (64 hex digits)"));
            }
            Some(hex.to_ascii_lowercase())
        }
    };
    Ok(UrlInput {
        url: url.to_string(),
        sha256,
    })
}

/// The URL as messages and records show it: scheme, host and path, no credentials, no query.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or(url).to_string(),
    }
}

/// What a fetch brought.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    pub bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url}: the server answered {status}{hint}")]
    Status {
        url: String,
        status: String,
        hint: &'static str,
    },
    #[error(
        "{url}: {got} bytes arrived, but the server announced {expected}: the transfer was cut short"
    )]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "{url}: the file's sha256 is {actual}, but the URL's #sha256= says {expected}; it was not scored"
    )]
    Sha256 {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<hyper::body::Bytes>,
>;

/// How many redirects a fetch follows (object stores answer some requests with one).
const MAX_REDIRECTS: usize = 5;

/// An HTTP(S) client whose TLS trusts Mozilla's roots (built in: a serving image has no CA
/// files) and the system's, where it has them (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
/// honoured, for a private object store's CA).
pub fn client() -> Result<Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as the system's tools would.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// Fetches `input` into `to` (through a temporary file beside it), checked; blocking.
pub fn fetch(input: &UrlInput, to: &Path) -> Result<Fetched, FetchError> {
    let shown = redact(&input.url);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::Request {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    let temp = to.with_extension("part");
    let result = runtime.block_on(download(input, &shown, &temp));
    match result {
        Ok(fetched) => {
            std::fs::rename(&temp, to).map_err(|e| FetchError::Io {
                path: to.to_path_buf(),
                message: e.to_string(),
            })?;
            Ok(fetched)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

async fn download(input: &UrlInput, shown: &str, temp: &Path) -> Result<Fetched, FetchError> {
    use http_body_util::BodyExt;
    let failed = |message: String| FetchError::Request {
        url: shown.to_string(),
        message,
    };
    let client = client().map_err(failed)?;
    let mut url = url::Url::parse(&input.url).map_err(|e| failed(e.to_string()))?;
    let mut redirects = 0;
    let response = loop {
        let request = hyper::Request::get(url.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("ferry/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::new())
            .map_err(|e| failed(e.to_string()))?;
        let response = tokio::time::timeout(READ_TIMEOUT, client.request(request))
            .await
            .map_err(|_| failed(format!("no answer in {}s", READ_TIMEOUT.as_secs())))?
            .map_err(|e| failed(describe(&e)))?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(failed(format!("more than {MAX_REDIRECTS} redirects")));
            }
            url = url
                .join(location)
                .map_err(|e| failed(format!("a redirect to a bad URL: {e}")))?;
            continue;
        }
        break response;
    };
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (a presigned link may have expired, or not allow GET)",
            404 => " (no such object)",
            _ => "",
        };
        return Err(FetchError::Status {
            url: shown.to_string(),
            status: status.to_string(),
            hint,
        });
    }
    let header = |name: hyper::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let expected: Option<u64> =
        header(hyper::header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
    let etag = header(hyper::header::ETAG);
    let io = |e: std::io::Error| FetchError::Io {
        path: temp.to_path_buf(),
        message: e.to_string(),
    };
    let mut file =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(temp).map_err(io)?);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut body = response.into_body();
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
            .await
            .map_err(|_| failed(format!("no data for {}s", READ_TIMEOUT.as_secs())))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| failed(describe(&e)))?;
        if let Ok(chunk) = frame.into_data() {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk).map_err(io)?;
        }
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    if let Some(expected) = expected
        && expected != bytes
    {
        return Err(FetchError::Truncated {
            url: shown.to_string(),
            got: bytes,
            expected,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = &input.sha256
        && *expected != actual
    {
        return Err(FetchError::Sha256 {
            url: shown.to_string(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(Fetched {
        bytes,
        sha256: actual,
        etag,
    })
}

/// An error with its chain of causes (hyper's own text says little: "client error (Connect)").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths_and_their_sha256_read() {
        assert_eq!(parse("data/a.csv"), None);
        assert_eq!(parse("httpdata/a.csv"), None);
        let hex = "ab".repeat(32);
        assert_eq!(
            parse(&format!(
                "https://store.example/b/x.parquet?sig=1#sha256={}",
                hex.to_uppercase()
            )),
            Some(Ok(UrlInput {
                url: "https://store.example/b/x.parquet?sig=1".into(),
                sha256: Some(hex),
            }))
        );
        assert_eq!(
            parse("HTTP://store.example/x.csv"),
            Some(Ok(UrlInput {
                url: "HTTP://store.example/x.csv".into(),
                sha256: None
            }))
        );
        let bad = |t: &str| parse(t).unwrap().unwrap_err();
        assert!(bad("https://store.example/x.csv#md5=1").contains("#sha256=HEX"));
        assert!(bad("https://store.example/x.csv#sha256=12").contains("64 hex digits"));
        assert!(bad("https://").contains("not a URL"), "{}", bad("https://"));
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            redact("https://user:pw@store.example/b/x.parquet?X-Amz-Signature=secret#sha256=00"),
            "https://store.example/b/x.parquet"
        );
    }

    #[test]
    fn the_tls_client_builds_with_roots_of_its_own() {
        assert!(!webpki_roots::TLS_SERVER_ROOTS.is_empty());
        client().unwrap();
    }

    /// One HTTP/1.1 answer on 127.0.0.1: `body` behind `length` as Content-Length.
    fn serve_once(status: &'static str, length: usize, body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        });
        format!("http://{addr}")
    }

    #[test]
    fn fetches_are_checked_and_leave_nothing_when_they_fail() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("0.csv");
        let body = b"a,b\n1,2\n".to_vec();
        let sha = hex::encode(Sha256::digest(&body));

        let url = serve_once("200 OK", body.len(), body.clone());
        let got = fetch(
            &parse(&format!("{url}/x.csv?sig=s3cr3t#sha256={sha}"))
                .unwrap()
                .unwrap(),
            &to,
        )
        .unwrap();
        assert_eq!(
            got,
            Fetched {
                bytes: body.len() as u64,
                sha256: sha.clone(),
                etag: Some("\"v1\"".into())
            }
        );
        assert_eq!(std::fs::read(&to).unwrap(), body);
        std::fs::remove_file(&to).unwrap();

        let url = serve_once("200 OK", body.len(), body.clone());
        let wrong = "0".repeat(64);
        let err = fetch(
            &parse(&format!("{url}/x.csv#sha256={wrong}"))
                .unwrap()
                .unwrap(),
            &to,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&sha) && err.contains("not scored"), "{err}");

        let url = serve_once("200 OK", body.len() + 10, body.clone());
        let err = fetch(&parse(&format!("{url}/x.csv")).unwrap().unwrap(), &to)
            .unwrap_err()
            .to_string();
        // Cut short: hyper notices the missing bytes before ferry's own count does.
        assert!(err.contains("/x.csv"), "{err}");

        let url = serve_once("403 Forbidden", 0, vec![]);
        let err = fetch(
            &parse(&format!("{url}/x.csv?sig=s3cr3t")).unwrap().unwrap(),
            &to,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("403") && err.contains("expired"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");

        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
