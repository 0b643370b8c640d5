//! Image archives streamed to the engine's image load (`POST /images/load`) from a blocking
//! writer, a few chunks in flight: an archive can be as large as the image, and is never held
//! whole in memory.

use std::io::{self, Write};

use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::build::ImageError;
use crate::docker::{self, DockerError};
use crate::ui::{Step, human_bytes};

/// Bytes of each piece of the archive sent to the engine.
const CHUNK: usize = 1 << 20;

/// Loads the archive that `write` writes (on a blocking thread), showing the engine's progress
/// on `step`; returns the ID of the image the archive's manifest tags `tag`.
pub(crate) async fn stream_archive(
    docker: &Docker,
    tag: &str,
    step: &Step,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ImageError> + Send + 'static,
) -> Result<String, ImageError> {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let what = format!("the image archive of {tag}");
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = Chunks {
            tx,
            buf: Vec::with_capacity(CHUNK),
            closed: false,
        };
        let written = write(&mut out).and_then(|()| {
            out.flush()
                .map_err(|source| ImageError::Write { what, source })
        });
        if let Err(e) = &written
            && !out.closed
        {
            // Ends the request with an error rather than with a short archive.
            let _ = out.tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        (written, out.closed)
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let opts = ImportImageOptionsBuilder::default().quiet(false).build();
    let mut stream = docker.import_image(opts, bollard::body_try_stream(body), None);
    let mut refused = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = &info.stream {
                    for line in s.lines() {
                        step.output_line(line);
                    }
                }
                if let Some(status) = &info.status {
                    let done = info.progress_detail.as_ref().and_then(|p| {
                        let (current, total) = (p.current?, p.total?);
                        Some(format!(
                            " {} of {}",
                            human_bytes(u64::try_from(current).ok()?),
                            human_bytes(u64::try_from(total).ok()?)
                        ))
                    });
                    step.set_detail(format!("{status}{}", done.unwrap_or_default()));
                }
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    // Ends the request, so a writer still sending stops.
    drop(stream);
    let (written, closed) = match writer.await {
        Ok(r) => r,
        Err(join) => (
            Err(ImageError::Write {
                what: format!("the image archive of {tag}"),
                source: io::Error::other(format!("the writer panicked: {join}")),
            }),
            false,
        ),
    };
    match (written, refused) {
        // The writer's own failure comes first; one caused by the engine hanging up does not.
        (Err(e), _) if !closed => Err(e),
        (_, Some(e)) => Err(load_error(tag, e)),
        (Err(_), None) => Err(ImageError::LoadFailed {
            tag: tag.to_string(),
            message: "the engine stopped reading the image archive without saying why".into(),
        }),
        (Ok(()), None) => match docker::image_id(docker, tag).await? {
            Some(id) => Ok(id),
            None => Err(ImageError::LoadFailed {
                tag: tag.to_string(),
                message: "the engine took the archive but has no image of that name".into(),
            }),
        },
    }
}

/// The engine's refusal of an archive, with its own words.
pub(crate) fn load_error(tag: &str, e: bollard::errors::Error) -> ImageError {
    let message = match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        other => match DockerError::api("loading an image", other) {
            DockerError::Api { message, .. } => message,
            unreachable => return unreachable.into(),
        },
    };
    ImageError::LoadFailed {
        tag: tag.to_string(),
        message,
    }
}

/// Sends what is written to the engine in chunks, from a blocking thread.
struct Chunks {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// The engine stopped reading: whatever went wrong, it says what.
    closed: bool,
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk.into())).map_err(|_| {
            self.closed = true;
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the image archive",
            )
        })
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_load_names_the_engines_words() {
        let stream = bollard::errors::Error::DockerStreamError {
            error: "invalid diffID for layer 1: expected sha256:aa, got sha256:bb".into(),
        };
        let err = load_error("ferry/p-serve:0123456789ab", stream).to_string();
        assert!(
            err.contains("loading ferry/p-serve:0123456789ab")
                && err.contains("invalid diffID for layer 1: expected sha256:aa, got sha256:bb"),
            "{err}"
        );
        let response = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "no space left on device".into(),
        };
        let err = load_error("t", response).to_string();
        assert!(err.contains("no space left on device"), "{err}");
    }
}
