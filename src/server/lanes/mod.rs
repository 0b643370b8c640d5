//! The HTTP threads ("lanes"): one single-threaded tokio runtime per CPU, each serving the
//! connections handed to it. One task accepts and deals the connections out to the open lanes
//! (the one with the fewest first); a connection stays on its lane until it closes, or until
//! the balancer asks its lane to give connections up: then it moves, between two requests, to
//! another open lane.
//!
//! Why not one multi-threaded runtime: its threads wake one another to share out work (a futex
//! or an eventfd write and a context switch), and for a light model that took a fifth of a
//! request's cost whenever the server was not saturated. Lanes share nothing per request, as
//! nginx's and actix-web's workers do; a light model's inference runs on the lane too
//! ([`super::batch::Engine::lead`]), batched per round of the lane's runtime.
//!
//! Why lanes open and close: see `balance`. The balancer looks once a second at what `usage`
//! measures; where that cannot be measured, every lane is open from the start and stays so.

mod balance;
mod usage;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::front::Front;
use super::h1::{self, Ended, Rewind};
use super::{AppState, ServerError};
use balance::{LaneUse, Policy};
use usage::{CpuClock, Machine, ThreadTimes};

/// How often the balancer looks at the lanes.
const INTERVAL: Duration = Duration::from_secs(1);

/// A connection on its way to a lane, with what was read of it and not yet answered.
pub(crate) struct Incoming {
    tcp: std::net::TcpStream,
    read: BytesMut,
}

/// One lane as the accepting task sees it.
struct Lane {
    /// Accepted connections for the lane; closed when the server stops accepting.
    connections: mpsc::UnboundedSender<Incoming>,
    /// Fires when the lane's thread has finished.
    finished: oneshot::Receiver<()>,
}

/// What the lanes share: who holds how many connections, who should give some up, how many
/// are open.
pub(crate) struct Lanes {
    lanes: Vec<Shared>,
    /// Lanes `0..open` take connections; the others give theirs up.
    open: AtomicUsize,
    /// Where the open lanes and the moves are counted.
    state: Arc<AppState>,
}

/// One lane's part of [`Lanes`].
struct Shared {
    connections: AtomicUsize,
    /// Connections the lane should give up, each at its next request's end.
    leaving: AtomicUsize,
    /// The lane thread's id in `/proc`, once it runs.
    thread: OnceLock<u32>,
    /// Where connections moving to this lane go. Weak: the accepting task's sender closing is
    /// what starts the lane's shutdown.
    moves: mpsc::WeakUnboundedSender<Incoming>,
}

impl Lanes {
    fn set_open(&self, open: usize) {
        self.open.store(open, Ordering::Relaxed);
        self.state.metrics.lanes_open.set(open as i64);
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed).clamp(1, self.lanes.len())
    }

    /// The open lane holding the fewest connections, other than `except`.
    fn emptiest(&self, except: Option<usize>) -> Option<usize> {
        (0..self.open())
            .filter(|&i| Some(i) != except)
            .min_by_key(|&i| self.lanes[i].connections.load(Ordering::Relaxed))
    }

    /// Asks each lane to give up what it holds beyond its share of the open lanes' connections
    /// (all of them, for a lane not open).
    fn rebalance(&self) {
        let open = self.open();
        let held: Vec<usize> = self
            .lanes
            .iter()
            .map(|lane| lane.connections.load(Ordering::Relaxed))
            .collect();
        let share = held.iter().sum::<usize>().div_ceil(open);
        for (i, (lane, &held)) in self.lanes.iter().zip(&held).enumerate() {
            let keep = if i < open { share } else { 0 };
            lane.leaving
                .store(held.saturating_sub(keep), Ordering::Relaxed);
        }
    }
}

/// A connection's place: its lane, and the way to another.
pub(crate) struct Seat {
    lanes: Arc<Lanes>,
    lane: usize,
}

impl Seat {
    fn take(lanes: &Arc<Lanes>, lane: usize) -> Seat {
        lanes.lanes[lane]
            .connections
            .fetch_add(1, Ordering::Relaxed);
        Seat {
            lanes: lanes.clone(),
            lane,
        }
    }

    /// Whether this connection should move now, between two requests; true once per connection
    /// its lane was asked to give up.
    pub(crate) fn should_move(&self) -> bool {
        let leaving = &self.lanes.lanes[self.lane].leaving;
        // A plain load first: the common case only reads a line written when connections come,
        // go or are asked to move. Where no lane takes the connection, `move_away` gives it back.
        leaving.load(Ordering::Relaxed) > 0
            && leaving
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Hands the connection to the open lane with the fewest; gives it back where none takes it
    /// (the server stopping meanwhile).
    fn move_away(&self, incoming: Incoming) -> Result<(), Incoming> {
        let Some(to) = self.lanes.emptiest(Some(self.lane)) else {
            return Err(incoming);
        };
        let Some(sender) = self.lanes.lanes[to].moves.upgrade() else {
            return Err(incoming);
        };
        sender.send(incoming).map_err(|e| e.0)?;
        self.lanes.state.metrics.connections_moved.inc();
        Ok(())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.lanes.lanes[self.lane]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the lanes are balanced.
pub(crate) enum Balancing {
    /// By what `usage` measures, where it can be measured (Linux); else all lanes stay open.
    Measured,
    /// Every interval, each lane gives up all its connections (tests of moving).
    #[cfg(test)]
    Shuffle(Duration),
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
    serve_balanced(state, listener, lanes, Balancing::Measured, stop, grace)
        .await
        .map(|(drained, _)| drained)
}

/// [`serve`], balanced as `balancing` says; also returns how many connections moved.
async fn serve_balanced(
    state: Arc<AppState>,
    listener: TcpListener,
    lanes: usize,
    balancing: Balancing,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(bool, u64), ServerError> {
    let count = lanes.max(1);
    let (abandon, abandoned) = watch::channel(false);
    let mut senders = Vec::with_capacity(count);
    let mut receivers = Vec::with_capacity(count);
    let mut shared = Vec::with_capacity(count);
    for _ in 0..count {
        let (connections, incoming) = mpsc::unbounded_channel();
        shared.push(Shared {
            connections: AtomicUsize::new(0),
            leaving: AtomicUsize::new(0),
            thread: OnceLock::new(),
            moves: connections.downgrade(),
        });
        senders.push(connections);
        receivers.push(incoming);
    }
    let shared = Arc::new(Lanes {
        lanes: shared,
        open: AtomicUsize::new(count),
        state: state.clone(),
    });
    shared.set_open(count);
    let mut started = Vec::with_capacity(count);
    for (index, (connections, incoming)) in senders.into_iter().zip(receivers).enumerate() {
        let (done, finished) = oneshot::channel();
        let state = state.clone();
        let abandoned = abandoned.clone();
        let lanes = shared.clone();
        std::thread::Builder::new()
            .name(format!("ferry-http-{index}"))
            .spawn(move || {
                if let Some(id) = usage::current_thread_id() {
                    let _ = lanes.lanes[index].thread.set(id);
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(run_lane(state, lanes, index, incoming, abandoned));
                    }
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

    let mut balancer = match balancing {
        Balancing::Measured => Balancer::start(&shared),
        #[cfg(test)]
        Balancing::Shuffle(every) => Some(Balancer::Shuffle(every)),
    };
    let mut next_look = Instant::now() + balancer.as_ref().map_or(INTERVAL, Balancer::interval);
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tokio::time::sleep_until(next_look.into()), if balancer.is_some() => {
                if let Some(balancer) = &mut balancer {
                    balancer.look(&shared);
                    next_look = Instant::now() + balancer.interval();
                }
                continue;
            }
            () = &mut stop => break,
        };
        match accepted {
            Ok((tcp, _)) => {
                // Responses are written whole; Nagle would only delay them.
                let _ = tcp.set_nodelay(true);
                let Ok(tcp) = tcp.into_std() else {
                    continue;
                };
                let mut incoming = Incoming {
                    tcp,
                    read: BytesMut::new(),
                };
                // The open lanes first, the emptiest of them first; a lane whose thread failed
                // to start is passed over.
                let first = shared.emptiest(None).unwrap_or(0);
                for lane in (first..started.len()).chain(0..first) {
                    match started[lane].connections.send(incoming) {
                        Ok(()) => break,
                        Err(mpsc::error::SendError(back)) => incoming = back,
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
    Ok((drained, state.metrics.connections_moved.get()))
}

/// Opens and closes lanes: by measure, or (in tests) by shuffling connections about.
enum Balancer {
    Measured(Box<Measure>),
    #[cfg(test)]
    Shuffle(Duration),
}

/// The balancer's figures from its last look, and its policy.
struct Measure {
    policy: Policy,
    machine: Machine,
    clock: CpuClock,
    threads: Vec<ThreadTimes>,
    at: Instant,
}

impl Balancer {
    /// A measuring balancer, with one lane open; none where the lanes' threads and the CPUs'
    /// time cannot be read, and then every lane stays open.
    fn start(lanes: &Lanes) -> Option<Balancer> {
        let machine = Machine::read();
        let clock = CpuClock::read(&machine)?;
        // The lane threads' own ids are set as they start; this thread's tells whether
        // `schedstat` can be read at all.
        usage::thread_times(usage::current_thread_id()?)?;
        lanes.set_open(1);
        Some(Balancer::Measured(Box::new(Measure {
            policy: Policy::new(lanes.lanes.len()),
            machine,
            clock,
            threads: Vec::new(),
            at: Instant::now(),
        })))
    }

    fn interval(&self) -> Duration {
        match self {
            Balancer::Measured(_) => INTERVAL,
            #[cfg(test)]
            Balancer::Shuffle(every) => *every,
        }
    }

    fn look(&mut self, lanes: &Lanes) {
        match self {
            Balancer::Measured(measure) => measure.look(lanes),
            #[cfg(test)]
            Balancer::Shuffle(_) => {
                for lane in &lanes.lanes {
                    let held = lane.connections.load(Ordering::Relaxed);
                    lane.leaving.store(held, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Measure {
    fn look(&mut self, lanes: &Lanes) {
        let threads: Option<Vec<ThreadTimes>> = lanes
            .lanes
            .iter()
            .map(|lane| usage::thread_times(*lane.thread.get()?))
            .collect();
        let (Some(threads), Some(clock)) = (threads, CpuClock::read(&self.machine)) else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        let spare = clock.free_since(&self.clock, &self.machine);
        let previous = std::mem::replace(&mut self.threads, threads);
        self.clock = clock;
        self.at = now;
        let (Some(spare), true) = (spare, previous.len() == self.threads.len() && elapsed > 0.0)
        else {
            return;
        };
        let share = |later: Duration, earlier: Duration| {
            later.saturating_sub(earlier).as_secs_f64() / elapsed
        };
        let open: Vec<LaneUse> = self
            .threads
            .iter()
            .zip(&previous)
            .take(self.policy.open())
            .map(|(now, before)| LaneUse {
                running: share(now.running, before.running),
                waiting: share(now.waiting, before.waiting),
            })
            .collect();
        if self.policy.observe(&open, spare).is_some() {
            lanes.set_open(self.policy.open());
            lanes.rebalance();
        } else if lanes.lanes[self.policy.open()..]
            .iter()
            .any(|lane| lane.connections.load(Ordering::Relaxed) > 0)
        {
            // Connections left on closed lanes (idle ones move only once they ask something).
            lanes.rebalance();
        }
    }
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
    lanes: Arc<Lanes>,
    index: usize,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    mut abandoned: watch::Receiver<bool>,
) {
    let front = Front::new(state);
    // Connections watch `draining` close to shut down; the lane watches `open` to see them gone.
    let (draining, drain) = watch::channel(());
    let (open, _) = watch::channel(());
    while let Some(Incoming { tcp, read }) = incoming.recv().await {
        let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
            continue;
        };
        let front = front.clone();
        let draining = draining.clone();
        let still_open = open.subscribe();
        let seat = Seat::take(&lanes, index);
        tokio::spawn(async move {
            // Plain inference requests first; hyper takes the connection at the first other one.
            let (mut tcp, mut read) = (tcp, read);
            let tcp = loop {
                match h1::serve(front.state(), tcp, read, &draining, &seat).await {
                    Ended::Closed => return,
                    Ended::Handoff(tcp, read) => break Rewind::new(tcp, read),
                    Ended::Moving(leaving, rest) => {
                        let Ok(std) = leaving.into_std() else {
                            return;
                        };
                        match seat.move_away(Incoming {
                            tcp: std,
                            read: rest,
                        }) {
                            Ok(()) => return,
                            Err(back) => match tokio::net::TcpStream::from_std(back.tcp) {
                                Ok(again) => (tcp, read) = (again, back.read),
                                Err(_) => return,
                            },
                        }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    fn churn_state() -> Arc<AppState> {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/server/churn.onnx");
        let config: crate::server::ServingConfig = serde_json::from_value(serde_json::json!({
            "host": "127.0.0.1",
            "models": [{
                "name": "churn",
                "variants": [{"name": "default", "path": model, "weight": 1}],
                "batching": {"max_batch_size": 64, "max_delay_ms": 2}
            }]
        }))
        .expect("config");
        crate::server::load(&config)
            .expect("the churn model loads")
            .state
    }

    /// A request for one customer whose features are all `value`.
    fn request(value: usize) -> Vec<u8> {
        let features = vec![value.to_string(); 78].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"features","shape":[1,78],"datatype":"FP32","data":[{features}]}}]}}"#
        );
        format!(
            "POST /v2/models/churn/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Reads one response: its status line and body.
    fn response(reader: &mut BufReader<std::net::TcpStream>) -> (String, String) {
        let mut status = String::new();
        reader.read_line(&mut status).expect("a status line");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header");
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("the body");
        (
            status.trim_end().to_string(),
            String::from_utf8(body).expect("text"),
        )
    }

    /// The same label, and probabilities the same but for rounding: a row's figures may differ
    /// in the last bits with the batch it was run in.
    fn same_answer(got: &str, expected: &str, client: usize) {
        let output = |body: &str, name: &str| -> Vec<f64> {
            let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
            let outputs = v["outputs"].as_array().expect("outputs");
            let o = outputs.iter().find(|o| o["name"] == name).expect(name);
            o["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .collect()
        };
        assert_eq!(
            output(got, "label"),
            output(expected, "label"),
            "client {client}"
        );
        let (got, expected) = (
            output(got, "probabilities"),
            output(expected, "probabilities"),
        );
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() < 1e-5,
                "client {client}: {got:?} against {expected:?}"
            );
        }
    }

    #[test]
    fn connections_moved_between_lanes_lose_no_request() {
        let state = churn_state();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a port");
        let address = listener.local_addr().expect("its address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = runtime.spawn(serve_balanced(
            state.clone(),
            listener,
            3,
            Balancing::Shuffle(Duration::from_millis(2)),
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(10),
        ));

        // What each customer's answer is, asked on a connection of its own.
        let expected: Vec<String> = (0..4)
            .map(|c| {
                let mut tcp = std::net::TcpStream::connect(address).expect("connect");
                tcp.write_all(&request(c)).expect("send");
                let (status, body) = response(&mut BufReader::new(tcp));
                assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
                body
            })
            .collect();
        // Each client sends two requests at once (the second is read, and carried along, when
        // its connection moves), until the connections have moved many times.
        let clients: Vec<_> = expected
            .iter()
            .enumerate()
            .map(|(c, answer)| {
                let answer = answer.clone();
                let state = state.clone();
                std::thread::spawn(move || {
                    let tcp = std::net::TcpStream::connect(address).expect("connect");
                    let mut writer = tcp.try_clone().expect("a second handle");
                    let mut reader = BufReader::new(tcp);
                    let pair = [request(c), request(c)].concat();
                    let mut answered = 0;
                    while answered < 200 || state.metrics.connections_moved.get() < 100 {
                        writer.write_all(&pair).expect("send");
                        for _ in 0..2 {
                            let (status, body) = response(&mut reader);
                            assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
                            same_answer(&body, &answer, c);
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: usize = clients
            .into_iter()
            .map(|c| c.join().expect("the client finished"))
            .sum();
        // Idle connections, one on each lane (each new one goes to the emptiest), are closed by
        // the shutdown; the lanes finish within the grace period.
        let idle: Vec<BufReader<std::net::TcpStream>> = (0..3)
            .map(|c| {
                let mut tcp = std::net::TcpStream::connect(address).expect("connect");
                tcp.write_all(&request(c)).expect("send");
                let mut reader = BufReader::new(tcp);
                let (status, _) = response(&mut reader);
                assert_eq!(status, "HTTP/1.1 200 OK");
                reader
            })
            .collect();
        let _ = stop.send(());
        let (drained, moved) = runtime
            .block_on(serving)
            .expect("the server task")
            .expect("the server");
        assert!(drained, "idle connections kept a lane from finishing");
        for mut reader in idle {
            let mut rest = Vec::new();
            assert_eq!(reader.read_to_end(&mut rest).expect("closed"), 0);
        }
        assert!(moved >= 100, "{moved} moves");
        assert!(answered >= 800, "{answered}");
    }
}
