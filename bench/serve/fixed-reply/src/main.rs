//! A fixed-reply server on ferry's HTTP stack, for bench/serve.sh: `fixed-reply MODE PORT BODY`
//! answers every request with the bytes of BODY as `application/json`, after reading the
//! request's body to its end, as ferry does before it parses. MODE:
//!   stack  the connection handling ferry's server runs on (`src/server/lanes.rs`): one task
//!          accepts and deals connections out in turn to one single-threaded tokio runtime per
//!          core, each serving its connections with hyper's HTTP/1 (TCP_NODELAY), as ferry does
//!          for every request but plain inference ones (which `src/server/h1.rs` reads itself)
//!   hyper  hyper's HTTP/1 connection on tokio's multi-threaded runtime (one worker per core),
//!          the usual way to serve with hyper
//! The difference between these and nginx's fixed reply is what the HTTP library itself costs;
//! what ferry adds on top (parsing, the model, the answer) is the rest.

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, port, body] = args.as_slice() else {
        eprintln!("usage: fixed-reply stack|hyper PORT BODY_FILE");
        return ExitCode::from(2);
    };
    let reply = match std::fs::read(body) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            eprintln!("fixed-reply: reading {body}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("fixed-reply: {port} is not a port");
        return ExitCode::from(2);
    };
    let runtime = match mode.as_str() {
        // The accepting task needs no more than a thread.
        "stack" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fixed-reply: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        match mode.as_str() {
            "stack" => stack(listener, reply).await,
            "hyper" => hyper_alone(listener, reply).await,
            other => Err(std::io::Error::other(format!("unknown mode {other}"))),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixed-reply: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The fixed reply to one request, once its body has been read.
async fn answer(
    request: hyper::Request<Incoming>,
    reply: Bytes,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    let mut response = hyper::Response::new(Full::new(reply));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

async fn stack(listener: TcpListener, reply: Bytes) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut lanes = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (connections, mut incoming) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let reply = reply.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                while let Some(tcp) = incoming.recv().await {
                    let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
                        continue;
                    };
                    let reply = reply.clone();
                    let service =
                        hyper::service::service_fn(move |request| answer(request, reply.clone()));
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
        });
        lanes.push(connections);
    }
    let mut next = 0;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let _ = lanes[next].send(tcp.into_std()?);
        next = (next + 1) % lanes.len();
    }
}

async fn hyper_alone(listener: TcpListener, reply: Bytes) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let reply = reply.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, reply.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
