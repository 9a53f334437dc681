//! Worker runtimes: one OS thread per worker, each with its own
//! current-thread tokio runtime and its own listening socket in a
//! `SO_REUSEPORT` group, so a connection stays on the thread that accepted
//! it (no work stealing, no hand-over between threads).
//!
//! This module owns the threads and the sockets' creation; what a worker
//! serves is the caller's future. It never touches a request, and never
//! holds process-wide state: the scheduler, budgets, metrics and the admin
//! port live on the caller's runtime and are shared by reference.
//!
//! The kernel spreads new connections over a `SO_REUSEPORT` group by a hash
//! of the connection's addresses and ports, not by load: with few
//! long-lived connections (a benchmark's `-c8`) one worker may get more
//! than its share. See docs/architecture.md, "Threads and runtimes".

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The listen backlog of each socket (tokio's default for `bind`).
const BACKLOG: i32 = 1024;

/// `n` listening sockets on `addr` in one `SO_REUSEPORT` group, non-blocking,
/// for [`spawn`] to hand one to each worker. With port 0 the first socket
/// picks the port and the others join it.
pub fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
        // As tokio's `TcpListener::bind`: a restart may bind while old
        // connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
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
