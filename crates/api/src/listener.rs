//! The HTTP listener. Every accepted socket takes one of the gate's
//! connection slots at accept (`gate.max_connections` counts TCP clients,
//! WebSockets and HTTP connections alike) and keeps it until it closes; a
//! socket past the limit is answered `503 SERVER_FULL`. Each connection is
//! served by its own task with hyper's HTTP/1 server (as `axum::serve`
//! does, plus the deadlines):
//!
//! - the TLS handshake and the first request's headers must be done within
//!   the login deadline (`gate.login_timeout_ms`), counted from accept; a
//!   WebSocket upgraded by that request keeps the same deadline for its
//!   login;
//! - a keep-alive connection with no request for `gate.http_idle_timeout_ms`
//!   is closed, and a later request's headers must arrive within it too
//!   (hyper's header read timeout, which restarts when a response is done);
//! - on shutdown, idle connections close and requests in flight finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_gate::Gate;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info};

use crate::error::{ApiError, codes};

/// A connection's admission, in the extensions of each of its requests:
/// the connection's slot, which `/ws` moves into the WebSocket session, and
/// the login deadline of a WebSocket upgraded by this request.
#[derive(Clone)]
pub struct Admission {
    slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// The accept deadline for the connection's first request; a later
    /// request of a keep-alive connection starts a login deadline of its own.
    pub login_deadline: Instant,
}

impl Admission {
    /// The connection's slot, once (a connection upgrades at most once).
    pub fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Accepts HTTP connections (with TLS when given) until the gate shuts
/// down; each is served by its own task, tracked by the gate's tracker so
/// that a stopping node lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    gate: Arc<Gate>,
    tls: Option<TlsAcceptor>,
) {
    let shutdown = gate.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    switchboard_gate::accept_error(&e);
                    // Back off so a persistent error (out of file descriptors)
                    // does not spin; connections already open carry on.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let deadline = Instant::now() + gate.config.login_timeout;
        let _ = stream.set_nodelay(true);
        match gate.admit() {
            Some(permit) => {
                let admission = Admission {
                    slot: Arc::new(Mutex::new(Some(permit))),
                    login_deadline: deadline,
                };
                gate.tracker.spawn(serve_conn(
                    gate.clone(),
                    router.clone(),
                    stream,
                    peer,
                    tls.clone(),
                    admission,
                ));
            }
            None => {
                if let Some(refusing) = gate.refusal() {
                    let within = gate.refusal_timeout();
                    gate.tracker
                        .spawn(refuse_full(stream, tls.clone(), within, refusing));
                }
            }
        }
    }
    info!("HTTP listener stopped");
}

/// One accepted connection: the TLS handshake (within the login deadline),
/// then HTTP. The slot in `admission` is released when this ends, unless a
/// WebSocket took it.
async fn serve_conn(
    gate: Arc<Gate>,
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    admission: Admission,
) {
    match tls {
        None => serve_http(&gate, router, stream, peer, admission).await,
        Some(acceptor) => {
            let deadline = admission.login_deadline;
            if let Some(tls) =
                switchboard_gate::tls_handshake(&acceptor, stream, peer, deadline).await
            {
                serve_http(&gate, router, tls, peer, admission).await
            }
        }
    }
}

async fn serve_http<S>(gate: &Gate, router: Router, io: S, peer: SocketAddr, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = admission.login_deadline;
    let login_timeout = gate.config.login_timeout;
    // Set when the first request's headers are in: from then on hyper's
    // header read timeout bounds the connection.
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let started = started.clone();
        service_fn(move |mut req: hyper::Request<Incoming>| {
            let first = !started.swap(true, Ordering::Relaxed);
            let login_deadline = if first {
                admission.login_deadline
            } else {
                Instant::now() + login_timeout
            };
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(Admission {
                slot: admission.slot.clone(),
                login_deadline,
            });
            router.clone().oneshot(req)
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gate.config.http_idle_timeout);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut first_headers_due = pin!(tokio::time::sleep_until(deadline));
    let mut waiting_first = true;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "HTTP connection ended on an error");
                }
                return;
            }
            _ = &mut first_headers_due, if waiting_first => {
                waiting_first = false;
                if !started.load(Ordering::Relaxed) {
                    // Nothing was asked of this connection yet: nothing is
                    // lost by dropping it.
                    info!(%peer, "HTTP connection closed: no request within the login deadline");
                    return;
                }
            }
            _ = gate.shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection past the limit `503 SERVER_FULL` (after the TLS
/// handshake when the listener has TLS), all within `within`.
async fn refuse_full(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    within: Duration,
    _refusing: OwnedSemaphorePermit,
) {
    let refuse = async move {
        match tls {
            None => answer_full(stream).await,
            Some(acceptor) => {
                if let Ok(tls) = acceptor.accept(stream).await {
                    answer_full(tls).await
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, refuse).await;
}

async fn answer_full<S>(io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|_req: hyper::Request<Incoming>| async {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SERVER_FULL,
            "server is at its connection limit; retry later",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let _ = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await;
}
