//! Worker runtimes: one OS thread per worker, each with its own
//! current-thread tokio runtime, and the spread of new connections over
//! them by load. A connection stays on the worker it was handed to (no
//! work stealing, no hand-over between threads after that).
//!
//! This module owns the threads, the listening socket's creation and the
//! count of each worker's open connections ([`Spread`]); what a worker
//! serves, and how a connection reaches it, is the caller's. It never
//! touches a request or a connection, and never holds process-wide state:
//! the scheduler, budgets, metrics and the admin port live on the caller's
//! runtime and are shared by reference.
//!
//! One socket listens and one acceptor hands each new connection to the
//! worker with the fewest open connections (ties: round robin), so 8
//! keep-alive connections on 2 workers are always 4 and 4. A
//! `SO_REUSEPORT` group per worker, as before, let the kernel pick by a
//! hash of addresses and ports: 4/4 in only 15 of 50 trials. See
//! docs/architecture.md, "Threads and runtimes".

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The listen backlog (tokio's default for `bind`).
const BACKLOG: i32 = 1024;

/// The listening socket on `addr`, non-blocking, for one acceptor to serve
/// every worker from.
///
/// A port that something already listens on is refused ("address in use"),
/// even a `SO_REUSEPORT` group of another crmgate of the same user (an
/// older one bound its workers' sockets that way): this socket does not
/// set `SO_REUSEPORT`, so it can join no group, and two gateways can never
/// share one port and each spend the whole budget.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restart may bind while old
    // connections sit in TIME_WAIT. (Not SO_REUSEPORT: see above.)
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The open connections of each worker, and the choice of a worker for
/// the next one: the fewest open, ties broken round robin (the scan starts
/// just after the last worker chosen). Shared by the acceptors of every
/// listener, so a worker's load counts its cleartext and HTTPS connections
/// alike.
pub struct Spread {
    open: Box<[AtomicUsize]>,
    /// Where the next scan starts.
    next: AtomicUsize,
}

/// One connection counted on its worker until dropped: drop it when the
/// connection ends, however it ends (closed, drained, aborted with its
/// runtime, or never served because its worker was gone).
pub struct Slot {
    spread: Arc<Spread>,
    worker: usize,
}

impl Spread {
    /// The counts of `n` workers (at least 1), all 0.
    pub fn new(n: usize) -> Arc<Spread> {
        Arc::new(Spread {
            open: (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Open connections on `worker` now.
    pub fn open(&self, worker: usize) -> usize {
        self.open[worker].load(Ordering::Acquire)
    }

    /// Chooses the worker for a new connection and counts it there. Two
    /// acceptors choosing at the same instant may both see the same counts
    /// (a choice off by one connection, corrected by the next ones); one
    /// acceptor's choices are exact.
    pub fn assign(self: &Arc<Self>) -> Slot {
        let n = self.open.len();
        let start = self.next.load(Ordering::Relaxed) % n;
        let (mut worker, mut least) = (start, usize::MAX);
        for k in 0..n {
            let i = (start + k) % n;
            let open = self.open(i);
            if open < least {
                (worker, least) = (i, open);
            }
        }
        self.open[worker].fetch_add(1, Ordering::AcqRel);
        self.next.store(worker + 1, Ordering::Relaxed);
        Slot {
            spread: Arc::clone(self),
            worker,
        }
    }
}

impl Slot {
    /// The worker this connection is counted on (and must be served by).
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.spread.open[self.worker].fetch_sub(1, Ordering::AcqRel);
    }
}

/// Running worker threads. Dropping this aborts them (as
/// [`Workers::abort`]) without waiting for them to end.
pub struct Workers {
    /// Closed (every sender dropped) once every worker thread has ended.
    done: mpsc::Receiver<()>,
    abort: CancellationToken,
}

/// Starts one thread per input, named `crmgate-worker-N`, each running
/// `serve(N, input)` on its own current-thread runtime until the future ends
/// or [`Workers::abort`] is called; then the runtime is dropped, which ends
/// whatever tasks the worker still had (its open connections).
pub fn spawn<T, F, Fut>(inputs: Vec<T>, serve: F) -> std::io::Result<Workers>
where
    T: Send + 'static,
    F: Fn(usize, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let serve = Arc::new(serve);
    let abort = CancellationToken::new();
    let (tx, done) = mpsc::channel(1);
    for (i, input) in inputs.into_iter().enumerate() {
        // I/O and timers only: signals are the control runtime's, and a
        // runtime with the signal driver checks for child processes to
        // reap each time it parks.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (serve, abort, tx) = (serve.clone(), abort.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("crmgate-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async {
                    tokio::select! {
                        () = serve(i, input) => {}
                        () = abort.cancelled() => {}
                    }
                });
                drop(runtime);
                drop(tx);
            })?;
    }
    Ok(Workers { done, abort })
}

impl Workers {
    /// Resolves once every worker thread has ended. Cancel-safe: a
    /// timeout around it can be retried.
    pub async fn finished(&mut self) {
        while self.done.recv().await.is_some() {}
    }

    /// Ends every worker now: its serving future and open connections are
    /// dropped.
    pub fn abort(&self) {
        self.abort.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_anyone_listens_on_is_refused() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = first.local_addr().unwrap();
        let err = bind(taken).expect_err("a second listener on a taken port");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        drop(first);
        // Free again once the first is closed.
        bind(taken).unwrap();
    }

    #[test]
    fn a_port_a_reuseport_group_listens_on_is_refused() {
        // What a crmgate of the same user that binds SO_REUSEPORT sockets
        // (an older version) holds.
        let group = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        group.set_reuse_port(true).unwrap();
        group
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        group.listen(8).unwrap();
        let taken = group.local_addr().unwrap().as_socket().unwrap();
        let err = bind(taken).expect_err("joined another gateway's group");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }

    /// The workers' counts after assigning `n` connections from empty.
    fn counts(spread: &Spread, n: usize) -> Vec<usize> {
        (0..n).map(|i| spread.open(i)).collect()
    }

    #[test]
    fn connections_go_to_the_worker_with_the_fewest() {
        let spread = Spread::new(2);
        let mut slots: Vec<Slot> = (0..8).map(|_| spread.assign()).collect();
        assert_eq!(counts(&spread, 2), [4, 4]);
        slots.push(spread.assign());
        assert_eq!(counts(&spread, 2), [5, 4]);
        // Closing three of worker 0's connections frees its count, and the
        // next two both go there.
        let mut on_0 = 0;
        slots.retain(|s| {
            let close = s.worker() == 0 && on_0 < 3;
            on_0 += usize::from(close);
            !close
        });
        assert_eq!(counts(&spread, 2), [2, 4]);
        let more: Vec<Slot> = (0..2).map(|_| spread.assign()).collect();
        assert!(more.iter().all(|s| s.worker() == 0));
        assert_eq!(counts(&spread, 2), [4, 4]);
        drop((slots, more));
        assert_eq!(counts(&spread, 2), [0, 0]);
    }

    #[test]
    fn ties_rotate_over_the_workers() {
        let spread = Spread::new(3);
        // One short connection at a time: each finds every count at 0.
        let chosen: Vec<usize> = (0..6).map(|_| spread.assign().worker()).collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
        let held: Vec<Slot> = (0..7).map(|_| spread.assign()).collect();
        assert_eq!(counts(&spread, 3), [3, 2, 2]);
        drop(held);
    }
}
