//! A fixed-reply server on ferry's HTTP stack, for bench/serve.sh: `fixed-reply MODE PORT BODY`
//! answers every request with the bytes of BODY as `application/json`, after reading the
//! request's body to its end, as ferry does before it parses. MODE:
//!   stack  `axum::serve` with one service and no router: the connection handling ferry's
//!          server runs on (hyper-util's connection builder, TCP_NODELAY), on a tokio runtime
//!          with one worker per core
//!   hyper  hyper's HTTP/1 connection alone, on the same runtime
//! The difference between these and nginx's fixed reply is what the HTTP library itself costs;
//! what ferry adds on top (routing, parsing, the model, the answer) is the rest.

use std::convert::Infallible;
use std::process::ExitCode;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::serve::ListenerExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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

async fn stack(listener: TcpListener, reply: Bytes) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let service = tower::service_fn(move |request: Request| {
        let reply = reply.clone();
        async move {
            let _ = request.into_body().collect().await;
            let mut response = Response::new(Body::from(reply));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok::<_, Infallible>(response)
        }
    });
    axum::serve(listener, axum::ServiceExt::into_make_service(service)).await
}

async fn hyper_alone(listener: TcpListener, reply: Bytes) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let reply = reply.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let reply = reply.clone();
                async move {
                    let _ = request.into_body().collect().await;
                    let mut response = hyper::Response::new(Full::new(reply));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
