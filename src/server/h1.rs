//! A connection's plain inference requests, read and answered without hyper; everything else
//! on the connection is hyper's.
//!
//! Why: for a light model the HTTP layer is a large part of a request's cost. Under load with
//! 1-row requests, hyper's connection machinery (its dispatcher's state machine, the body
//! channel between it and the service, the boxed service future and bodies, copies of the head)
//! took about a ninth of the server's CPU, as much as reading the JSON; this loop takes under
//! half of that (perf, the same load, the handler's own work left out of both). The one kind
//! of request a busy server sees nearly only — `POST` to an inference path, HTTP/1.1, a
//! `Content-Length` body, nothing asked of the connection — is parsed here with `httparse`
//! (hyper's own parser) and answered by the same handler hyper's path calls, given the two
//! headers it reads and the body as slices of the bytes read (no `Request`, header map or boxed
//! body is made of them; that was another twentieth of the server's CPU). The first request
//! of any other kind, and everything after it, goes to hyper with the bytes already read, so
//! chunked bodies, `Expect`, upgrades, HTTP/1.0, `Connection: close`, malformed heads and
//! oversized bodies are handled exactly as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::http::HeaderName;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::AppState;
use super::front::inference_target;
use super::http::{Answer, Call, CallBody, JSON_LENGTH_HEADER, Protocol, serve_inference};
use super::lanes::Seat;

/// Heads larger than this are left to hyper (which has its own, larger limit).
const MAX_HEAD: usize = 16 << 10;
/// Headers a request may have to be read here.
const MAX_HEADERS: usize = 32;
/// What one read asks for, at least.
const READ_SIZE: usize = 8 << 10;
/// What a path read here may hold besides letters and digits: characters `Uri` takes as they
/// are. Any other goes to hyper, which refuses what `Uri` refuses.
const PATH_MARKS: &[u8] = b"-._~/:@!$&'()*+,;=";

/// How the connection's plain requests ended.
pub(crate) enum Ended {
    /// Closed: by the client, an I/O error, or the server draining.
    Closed,
    /// A request this loop does not answer arrived: hyper serves the connection from here on,
    /// starting with these bytes.
    Handoff(TcpStream, Bytes),
    /// Its lane gives the connection up ([`Seat::should_move`]): it goes on on another, with
    /// these bytes read and not yet answered.
    Moving(TcpStream, BytesMut),
}

/// Answers the plain inference requests on `tcp` (`read` holds what was read of it already)
/// until it closes, the server drains (`draining` closes) between requests, its lane gives it
/// up, or another kind of request arrives.
pub(crate) async fn serve(
    state: &std::sync::Arc<AppState>,
    mut tcp: TcpStream,
    read: BytesMut,
    draining: &watch::Sender<()>,
    seat: &Seat,
) -> Ended {
    let mut closed = std::pin::pin!(draining.closed());
    let mut buffer = read;
    let mut out = Vec::with_capacity(1024);
    loop {
        // The next request: its head, then its body.
        let plain = loop {
            match plain_request(&buffer, &state.key_header) {
                Ok(Some(plain)) => break plain,
                Err(ForHyper) => return Ended::Handoff(tcp, buffer.freeze()),
                Ok(None) if buffer.len() > MAX_HEAD => {
                    return Ended::Handoff(tcp, buffer.freeze());
                }
                Ok(None) => {}
            }
            let read = tokio::select! {
                // The read first: waiting on the other registers a waker, a lock each time.
                biased;
                read = read_more(&mut tcp, &mut buffer) => read,
                // As hyper's graceful shutdown: a connection not yet in a body closes.
                () = &mut closed => return Ended::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        };
        if plain.content_length > state.limits.max_body_bytes {
            // The 413 and the drain of the body before it are hyper's path's.
            return Ended::Handoff(tcp, buffer.freeze());
        }
        let total = plain.head_length + plain.content_length;
        if buffer.len() < total {
            buffer.reserve(total - buffer.len());
            // Within the request timeout, as hyper's path reads a body; a client still sending
            // then is hyper's, which answers it with a 408 once the timeout has passed again.
            let rest = async {
                while buffer.len() < total {
                    if read_more(&mut tcp, &mut buffer).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok::<(), io::Error>(())
            };
            match tokio::time::timeout(state.limits.request_timeout, rest).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ended::Closed,
                Err(_) => return Ended::Handoff(tcp, buffer.freeze()),
            }
        }
        let head = buffer.split_to(plain.head_length).freeze();
        let body = buffer.split_to(plain.content_length).freeze();
        let slice = |(start, end): (u16, u16)| head.slice(usize::from(start)..usize::from(end));
        let call = Call {
            key: plain.key.map(slice),
            json_length: plain.json_length.map(slice),
            body: CallBody::Whole(body),
        };
        let target = plain.target;
        let answer = serve_inference(
            state,
            target.model(&head),
            target.version(&head),
            call,
            target.protocol,
        )
        .await;
        out.clear();
        encode(&answer, &mut out);
        if tcp.write_all(&out).await.is_err() {
            return Ended::Closed;
        }
        // A server draining closes a connection once its request is answered.
        if draining.is_closed() {
            return Ended::Closed;
        }
        if seat.should_move() {
            return Ended::Moving(tcp, buffer);
        }
    }
}

async fn read_more(tcp: &mut TcpStream, buffer: &mut BytesMut) -> io::Result<usize> {
    buffer.reserve(READ_SIZE);
    tcp.read_buf(buffer).await
}

/// The request at the start of the buffer is not a plain one: hyper's.
struct ForHyper;

/// A plain inference request's head, as positions in it (the head is at most [`MAX_HEAD`]
/// bytes), so that what the handler reads of it are slices of the head's bytes, not copies.
struct Plain {
    head_length: usize,
    content_length: usize,
    target: Placed,
    /// The variant key header's value, if sent (the first, as a header map's `get`).
    key: Option<(u16, u16)>,
    /// `Inference-Header-Content-Length`, if sent (the first).
    json_length: Option<(u16, u16)>,
}

/// What the path names ([`inference_target`]), as positions in the head.
#[derive(Clone, Copy)]
struct Placed {
    model: (u16, u16),
    version: Option<(u16, u16)>,
    protocol: Protocol,
}

impl Placed {
    fn model<'h>(&self, head: &'h [u8]) -> &'h str {
        text(head, self.model)
    }

    fn version<'h>(&self, head: &'h [u8]) -> Option<&'h str> {
        self.version.map(|at| text(head, at))
    }
}

/// The text at `at` in the head: a part of the path, which `httparse` read as text.
fn text(head: &[u8], (start, end): (u16, u16)) -> &str {
    std::str::from_utf8(&head[usize::from(start)..usize::from(end)]).unwrap_or_default()
}

/// Reads the head at the start of `bytes`: a plain inference request, `None` while the head is
/// not whole yet, or [`ForHyper`].
fn plain_request(bytes: &[u8], key_header: &HeaderName) -> Result<Option<Plain>, ForHyper> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_length = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        // Malformed or too many headers: hyper answers or closes as it does.
        Err(_) => return Err(ForHyper),
    };
    if parsed.method != Some("POST") || parsed.version != Some(1) || head_length > MAX_HEAD {
        return Err(ForHyper);
    }
    // Positions within the head, which is at most `MAX_HEAD` bytes.
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
        (start as u16, (start + part.len()) as u16)
    };
    let path = parsed.path.ok_or(ForHyper)?;
    // Only paths `Uri` surely takes as they are, so that none is answered here that hyper
    // would refuse.
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || PATH_MARKS.contains(&b))
    {
        return Err(ForHyper);
    }
    // Only inference paths in origin form, without a query; the rest is the router's.
    let target = inference_target(path).ok_or(ForHyper)?;
    let mut plain = Plain {
        head_length,
        content_length: 0,
        target: Placed {
            model: at(target.model.as_bytes()),
            version: target.version.map(|v| at(v.as_bytes())),
            protocol: target.protocol,
        },
        key: None,
        json_length: None,
    };
    let mut content_length = None;
    // `httparse` takes the names and values `http` does (tokens; no control bytes in values),
    // so every header here is one hyper would have taken.
    for header in parsed.headers.iter() {
        let name = |wanted: &str| header.name.eq_ignore_ascii_case(wanted);
        // What these ask of the connection is hyper's to do. `Connection: keep-alive`, which
        // many clients send, asks for nothing HTTP/1.1 does not do anyway.
        if name(TRANSFER_ENCODING.as_str()) || name(EXPECT.as_str()) || name(UPGRADE.as_str()) {
            return Err(ForHyper);
        }
        if name(CONNECTION.as_str()) && !header.value.eq_ignore_ascii_case(b"keep-alive") {
            return Err(ForHyper);
        }
        if name(key_header.as_str()) {
            plain.key = plain.key.or(Some(at(header.value)));
        } else if name(JSON_LENGTH_HEADER) {
            plain.json_length = plain.json_length.or(Some(at(header.value)));
        } else if name(CONTENT_LENGTH.as_str()) {
            // One plain decimal value; anything else (a list, a repeat) is hyper's to refuse.
            let value = header.value;
            if content_length.is_some()
                || value.is_empty()
                || value.len() > 18
                || !value.iter().all(u8::is_ascii_digit)
            {
                return Err(ForHyper);
            }
            content_length = Some(
                value
                    .iter()
                    .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
            );
        }
    }
    plain.content_length = content_length.ok_or(ForHyper)?;
    Ok(Some(plain))
}

/// The answer as HTTP/1.1 bytes, with `Content-Length` and `Date` as hyper adds them.
fn encode(answer: &Answer, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(answer.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        answer
            .status
            .canonical_reason()
            .unwrap_or("<none>")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    answer.headers(|name, value| header(out, name.as_str().as_bytes(), value.as_bytes()));
    let mut length = itoa::Buffer::new();
    header(
        out,
        b"content-length",
        length.format(answer.body.len()).as_bytes(),
    );
    DATE_NOW.with(|date| date.write(out));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&answer.body);
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE_NOW: CachedDate = CachedDate::new();
}

/// The `Date` header's value, rendered once a second.
struct CachedDate {
    rendered: std::cell::RefCell<(u64, String)>,
}

impl CachedDate {
    fn new() -> CachedDate {
        CachedDate {
            rendered: std::cell::RefCell::new((u64::MAX, String::new())),
        }
    }

    /// Writes the `Date` header.
    fn write(&self, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut rendered = self.rendered.borrow_mut();
        if rendered.0 != second {
            *rendered = (second, httpdate::fmt_http_date(now));
        }
        header(out, b"date", rendered.1.as_bytes());
    }
}

/// A connection whose first bytes were already read: hyper reads those first.
pub(crate) struct Rewind {
    first: Bytes,
    tcp: TcpStream,
}

impl Rewind {
    pub(crate) fn new(tcp: TcpStream, first: Bytes) -> Rewind {
        Rewind { first, tcp }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            let first = self.first.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
