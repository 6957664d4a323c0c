//! The gate: accepts client connections (TCP, optionally TLS, and WebSocket),
//! runs the login handshake and one task per connection, and owns the
//! per-connection outbound queue, keepalive, limits and the retransmit timer
//! of unacknowledged pushes. Requests go to [`switchboard_core::Logic`].

mod config;
mod rate;
mod session;
pub mod tls;
mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use switchboard_core::{Hub, Logic};
use switchboard_proto::{Packet, code};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use config::{BadOrigin, GateConfig, WsOrigins};
pub use transport::{StreamTransport, Transport, WsTransport};

/// Shared state of the gate on one node.
pub struct Gate {
    pub logic: Arc<Logic>,
    pub hub: Arc<Hub>,
    pub config: GateConfig,
    /// Admission: one permit per open connection (mini-redis style); the
    /// permit moves into the connection task and is released when it ends.
    slots: Arc<Semaphore>,
    next_conn_id: AtomicU64,
    /// Connection tasks, drained on shutdown.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    refused_full: AtomicU64,
    /// Refusals of connections past the limit under way ([`Gate::refusal`]).
    refusing: Arc<Semaphore>,
}

/// Connections past the limit told so at once; more are closed unanswered.
pub const MAX_REFUSING: usize = 256;

/// Longest a refusal takes (or the login deadline, when shorter).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

impl Gate {
    pub fn new(
        logic: Arc<Logic>,
        hub: Arc<Hub>,
        config: GateConfig,
        shutdown: CancellationToken,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            logic,
            hub,
            config,
            next_conn_id: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            shutdown,
            refused_full: AtomicU64::new(0),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        })
    }

    fn conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections open now (logged in or not).
    pub fn open_connections(&self) -> usize {
        self.config.max_connections - self.slots.available_permits()
    }

    /// Connections refused because the gate was full, since start.
    pub fn refused_connections(&self) -> u64 {
        self.refused_full.load(Ordering::Relaxed)
    }

    /// A slot for a connection just accepted, or `None` at the limit
    /// (counted in [`Gate::refused_connections`]). Every accepted socket
    /// takes one, on either port, from accept until it closes.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// A slot for telling a connection past the limit that the server is
    /// full, or `None` when [`MAX_REFUSING`] refusals are already under way
    /// (the socket is then closed without a word): refusals cost a task and
    /// a socket each, so they are bounded too.
    pub fn refusal(&self) -> Option<OwnedSemaphorePermit> {
        self.refusing.clone().try_acquire_owned().ok()
    }

    /// How long a refusal may take (TLS handshake included).
    pub fn refusal_timeout(&self) -> Duration {
        self.config.login_timeout.min(REFUSAL_TIMEOUT)
    }

    /// Kicks every connection and waits (up to `grace`) for their tasks to end.
    pub async fn drain(&self, grace: Duration) {
        // Connections still logging in watch `shutdown`; logged-in ones wait
        // on their outbound queue, which carries the kick (a login that
        // registers after this sweep sees `shutdown` set and kicks itself).
        self.shutdown.cancel();
        self.hub.kick_all(code::KICK_SHUTDOWN);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.tracker.len(),
                "connections still open after the shutdown grace period"
            );
        }
    }
}

/// Accepts TCP connections until `shutdown`, each served by its own task.
/// With `tls`, every connection does a TLS handshake before the first
/// frame; the login deadline runs from accept, so the handshake and the
/// login share it.
pub async fn run_tcp(gate: Arc<Gate>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let shutdown = gate.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_error(&e);
                    // Back off so a persistent error (out of file descriptors)
                    // does not spin; connections already open carry on.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let deadline = Instant::now() + gate.config.login_timeout;
        let _ = stream.set_nodelay(true);
        let Some(permit) = gate.admit() else {
            if let Some(refusing) = gate.refusal() {
                let frame = Packet::error(
                    code::SERVER_FULL,
                    "server is at its connection limit; retry later",
                    true,
                )
                .encode(0);
                let within = gate.refusal_timeout();
                gate.tracker
                    .spawn(refuse_full(stream, tls.clone(), frame, within, refusing));
            }
            continue;
        };
        gate.tracker.spawn(serve_tcp(
            gate.clone(),
            stream,
            peer,
            permit,
            tls.clone(),
            deadline,
        ));
    }
    info!("TCP listener stopped");
}

/// One accepted TCP connection's task, optionally TLS.
///
/// The task's future is allocated for every connection and lives as long
/// as it does, and an `async` block is as large as its largest state: a
/// plain TCP connection would otherwise pay for the TLS handshake
/// (`tokio_rustls::Accept` and the rustls connection held inline) and for
/// a session over `TlsStream`, which it never uses. The TLS path is boxed,
/// so each kind of connection holds only its own state.
async fn serve_tcp(
    gate: Arc<Gate>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    deadline: Instant,
) {
    let conn_id = gate.conn_id();
    let max = gate.config.max_frame_bytes;
    match tls {
        None => {
            let transport = StreamTransport::new(stream, max);
            session::serve(gate, transport, conn_id, peer, permit, deadline).await
        }
        Some(acceptor) => {
            Box::pin(serve_tls(
                gate, acceptor, stream, peer, permit, conn_id, deadline,
            ))
            .await
        }
    }
}

async fn serve_tls(
    gate: Arc<Gate>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    conn_id: u64,
    deadline: Instant,
) {
    let max = gate.config.max_frame_bytes;
    if let Some(tls_stream) = tls_handshake(&acceptor, stream, peer, deadline).await {
        let transport = StreamTransport::new(tls_stream, max);
        session::serve(gate, transport, conn_id, peer, permit, deadline).await
    }
}

/// The server side of a TLS handshake, cut at `deadline`; failures are
/// logged (a client's problem, not the server's) and give `None`.
pub async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!(%peer, "TLS handshake not done within the login deadline");
            None
        }
    }
}

/// Says clearly why accepting failed; the open-file limit is the usual one.
pub fn accept_error(e: &io::Error) {
    if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
        error!(
            error = %e,
            "out of file descriptors: the process's open-file limit (ulimit -n) is reached; \
             new connections wait until others close (see docs/deployment.md to raise it)"
        );
    } else {
        warn!(error = %e, "accept failed");
    }
}

/// Tells a client past the connection limit so (after the TLS handshake,
/// when the listener has TLS: a plain frame would be noise to it), all
/// within `within`.
async fn refuse_full(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    frame: bytes::Bytes,
    within: Duration,
    _refusing: OwnedSemaphorePermit,
) {
    let refuse = async move {
        match tls {
            None => say_and_close(stream, &frame).await,
            Some(acceptor) => {
                if let Ok(tls) = acceptor.accept(stream).await {
                    say_and_close(tls, &frame).await
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, refuse).await;
}

async fn say_and_close<S: AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) {
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// Upgrades an HTTP request to a WebSocket connection served like a TCP
/// one. `permit` is the connection's admission slot (taken at accept) and
/// `login_deadline` the end of its login deadline.
pub fn ws_upgrade(
    gate: Arc<Gate>,
    ws: WebSocketUpgrade,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    login_deadline: Instant,
) -> Response {
    let max = gate.config.max_frame_bytes;
    // A 1 KiB read buffer, grown by tungstenite while a larger frame arrives:
    // the default 128 KiB cost ~137 KB per idle connection, 4 KiB ~3.2 KB
    // more than 1 KiB (`switchboard bench connections --ws`: 14.9 -> 11.7 KB
    // per connection at 5,000).
    // Messages up to twice the frame limit are read whole, so one over the
    // limit is answered with FRAME_TOO_LARGE and a close code after the
    // socket was drained (`WsTransport::recv`); beyond that the WebSocket
    // layer refuses it from its header and the unread rest of it may reset
    // the connection before the client reads the error.
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .on_upgrade(move |socket| {
            // Built here, not inside another `async move`: a block that
            // captures the socket and then moves it into the session would
            // hold it twice for the connection's whole life.
            let conn_id = gate.conn_id();
            let tracker = gate.tracker.clone();
            let transport = WsTransport::new(socket, max);
            tracker.track_future(session::serve(
                gate,
                transport,
                conn_id,
                peer,
                permit,
                login_deadline,
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` returns, from its type alone.
    fn future_size<A, B, C, D, E, G, F: std::future::Future>(
        _: fn(A, B, C, D, E, G) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection is mostly its task: the future is allocated for
    /// every connection and is as large as its largest state. Printed for
    /// profiling (`cargo test --release -p switchboard-gate future_sizes --
    /// --nocapture`); the bound catches a large state slipping back inline
    /// or a value held twice (7.6 KB per connection at first; 2.5 KB before
    /// the session was boxed, the kick moved into the outbound queue and the
    /// `mut` arguments stopped being copied into locals).
    #[test]
    fn future_sizes() {
        let tcp = future_size(serve_tcp);
        let session_tcp = future_size(session::serve::<StreamTransport<TcpStream>>);
        let ws = future_size(session::serve::<WsTransport>);
        println!(
            "serve_tcp {tcp} B, session over TCP {session_tcp} B, session over WebSocket {ws} B"
        );
        assert!(tcp <= 1024, "the TCP connection future grew to {tcp} bytes");
        assert!(
            ws <= 1280,
            "the WebSocket session future grew to {ws} bytes"
        );
    }
}
