//! The HTTP threads ("lanes"): one single-threaded tokio runtime per CPU, each serving the
//! connections handed to it. One task accepts and deals the connections out in turn; a
//! connection then stays on its lane from its first request to its close.
//!
//! Why not one multi-threaded runtime: its threads wake one another to share out work (a futex
//! or an eventfd write and a context switch), and for a light model that took a fifth of a
//! request's cost whenever the server was not saturated. Lanes share nothing per request, as
//! nginx's and actix-web's workers do; a light model's inference runs on the lane too
//! ([`super::batch::Engine::lead`]), batched per round of the lane's runtime.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::front::Front;
use super::h1::{self, Ended, Rewind};
use super::{AppState, ServerError};

/// One lane as the accepting task sees it.
struct Lane {
    /// Accepted connections for the lane; closed when the server stops accepting.
    connections: mpsc::UnboundedSender<std::net::TcpStream>,
    /// Fires when the lane's thread has finished.
    finished: oneshot::Receiver<()>,
}

/// Serves `state` on `listener` with `lanes` HTTP threads until `stop` completes; then stops
/// accepting, lets each connection finish the request it is on, and returns once all have
/// closed — or after `grace`, abandoning what is still running (false then).
pub(crate) async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    lanes: usize,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Result<bool, ServerError> {
    let (abandon, abandoned) = watch::channel(false);
    let mut started = Vec::with_capacity(lanes.max(1));
    for index in 0..lanes.max(1) {
        let (connections, incoming) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel();
        let state = state.clone();
        let abandoned = abandoned.clone();
        std::thread::Builder::new()
            .name(format!("ferry-http-{index}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(run_lane(state, incoming, abandoned)),
                    Err(e) => eprintln!("ferry serve-model: starting an HTTP thread: {e}"),
                }
                let _ = done.send(());
            })
            .map_err(ServerError::Thread)?;
        started.push(Lane {
            connections,
            finished,
        });
    }

    let mut stop = std::pin::pin!(stop);
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        match accepted {
            Ok((tcp, _)) => {
                // Responses are written whole; Nagle would only delay them.
                let _ = tcp.set_nodelay(true);
                let Ok(tcp) = tcp.into_std() else {
                    continue;
                };
                // A lane whose thread failed to start is passed over.
                let mut tcp = tcp;
                for _ in 0..started.len() {
                    let lane = &started[next];
                    next = (next + 1) % started.len();
                    match lane.connections.send(tcp) {
                        Ok(()) => break,
                        Err(mpsc::error::SendError(back)) => tcp = back,
                    }
                }
            }
            Err(e) if connection_error(&e) => {}
            // Out of file descriptors, most likely: wait for connections to close.
            Err(e) => {
                eprintln!("ferry serve-model: accepting a connection: {e}; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);

    let (senders, finished): (Vec<_>, Vec<_>) = started
        .into_iter()
        .map(|lane| (lane.connections, lane.finished))
        .unzip();
    // Closing the channels starts the lanes' graceful shutdown.
    drop(senders);
    let mut finished = std::pin::pin!(async move {
        for lane in finished {
            let _ = lane.await;
        }
    });
    let drained = tokio::select! {
        () = &mut finished => true,
        () = tokio::time::sleep(grace) => false,
    };
    if !drained {
        let _ = abandon.send(true);
        finished.await;
    }
    Ok(drained)
}

/// The errors of one connection that leave the listener fine.
fn connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A lane: serves the connections it is handed until the channel closes, then shuts them down
/// gracefully and waits for them, unless told to abandon them.
async fn run_lane(
    state: Arc<AppState>,
    mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut abandoned: watch::Receiver<bool>,
) {
    let front = Front::new(state);
    // Connections watch `draining` close to shut down; the lane watches `open` to see them gone.
    let (draining, drain) = watch::channel(());
    let (open, _) = watch::channel(());
    while let Some(tcp) = incoming.recv().await {
        let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
            continue;
        };
        let front = front.clone();
        let draining = draining.clone();
        let still_open = open.subscribe();
        tokio::spawn(async move {
            // Plain inference requests first; hyper takes the connection at the first other one.
            let tcp = match h1::serve(front.state(), tcp, &draining).await {
                Ended::Closed => return,
                Ended::Handoff(tcp, read) => Rewind::new(tcp, read),
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), front);
            let mut connection = std::pin::pin!(connection);
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    // A failed connection (the client went, a malformed request) ends only itself.
                    _ = connection.as_mut() => break,
                    () = draining.closed(), if !shutting_down => {
                        shutting_down = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(still_open);
        });
    }
    drop(drain);
    tokio::select! {
        () = open.closed() => {}
        _ = abandoned.wait_for(|abandon| *abandon) => {}
    }
}
