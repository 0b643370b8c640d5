//! Ctrl-C and SIGTERM for the operations that own containers or cluster objects, on Docker and
//! in a cluster alike: caught from the moment the operation starts, so a signal at any point
//! reaches its cleanup instead of killing ferry.

use std::future::Future;

/// The signals could not be watched for.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch for signals SIGINT: {0}")]
pub struct WatchError(#[source] std::io::Error);

/// A signal came before the operation finished; what it had started is gone.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; what it had started was stopped and removed, and no artifact was recorded")]
pub struct Interrupted;

/// Ctrl-C and SIGTERM, caught from the moment this is made: an operation that owns containers
/// creates it first, so a signal at any point reaches its cleanup instead of killing ferry.
pub struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    pub fn new() -> Result<Interrupt, WatchError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt()).map_err(WatchError)?,
            term: signal(SignalKind::terminate()).map_err(WatchError)?,
        })
    }

    /// Resolves at the next Ctrl-C or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    /// Runs `f`, or gives up with `Interrupted` at a signal (dropping `f`).
    pub async fn guard<T, E: From<Interrupted>>(
        &mut self,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::select! {
            r = f => r,
            _ = self.recv() => Err(Interrupted.into()),
        }
    }
}
