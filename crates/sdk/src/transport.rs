//! Byte transports under the protocol: TCP or TLS with frames back to back,
//! or WebSocket (plain or over TLS) with one frame per binary message.
//!
//! [`Endpoint`] is parsed and validated once (URL, TLS roots) so a bad
//! configuration fails in `connect` instead of on every reconnect. [`Conn`]
//! hides the transport from the connection task: it sends encoded frames
//! and yields decoded ones, and its `recv` is cancel-safe so the task can
//! `select!` on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard_proto::{Frame, decode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{ClientConfig, SdkError};

/// Any byte stream the transports run over (plain TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how to connect, validated.
#[derive(Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    /// `Some(url)` for WebSocket: the request URL of the handshake.
    ws_url: Option<String>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Bind to this address before connecting.
    local_addr: Option<IpAddr>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ws_url", &self.ws_url)
            .field("tls", &self.tls.is_some())
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// The parts of a URL the SDK needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/` (`/` when absent).
    pub path: String,
}

/// Parses `scheme://host[:port][/path]`. Hosts may be bracketed IPv6.
pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, SdkError> {
    let bad = |why: &str| SdkError::InvalidUrl(format!("{url}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "tcp" | "tls" => None,
        "ws" => Some(80),
        "wss" => Some(443),
        _ => return Err(bad("scheme must be tcp, tls, ws or wss")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("user info is not supported"));
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (host, tail) = after.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => default_port.ok_or_else(|| bad("a port is required"))?,
    };
    if port == 0 {
        return Err(bad("port 0"));
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(ParsedUrl {
        scheme,
        host: host.to_string(),
        port,
        path,
    })
}

impl Endpoint {
    /// Validates the URL and builds the TLS client configuration.
    pub(crate) fn from_config(cfg: &ClientConfig) -> Result<Endpoint, SdkError> {
        let url = parse_url(&cfg.url)?;
        let secure = matches!(url.scheme.as_str(), "tls" | "wss");
        let tls = if secure {
            let name = cfg
                .tls_server_name
                .clone()
                .unwrap_or_else(|| url.host.clone());
            let name = ServerName::try_from(name)
                .map_err(|e| SdkError::Tls(format!("bad server name: {e}")))?;
            Some((tls_connector(&cfg.root_certs_pem)?, name))
        } else {
            None
        };
        let ws_url = match url.scheme.as_str() {
            "ws" | "wss" => {
                let host = if url.host.contains(':') {
                    format!("[{}]", url.host)
                } else {
                    url.host.clone()
                };
                Some(format!(
                    "{}://{}:{}{}",
                    url.scheme, host, url.port, url.path
                ))
            }
            _ => None,
        };
        Ok(Endpoint {
            host: url.host,
            port: url.port,
            ws_url,
            tls,
            local_addr: cfg.local_addr,
        })
    }

    /// Opens the transport (TCP, then TLS, then the WebSocket handshake).
    pub(crate) async fn open(&self, max_frame: usize) -> Result<Conn, SdkError> {
        let tcp = match self.local_addr {
            None => TcpStream::connect((self.host.as_str(), self.port)).await?,
            Some(local) => self.connect_from(local).await?,
        };
        // Frames are small and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| SdkError::Tls(e.to_string()))?,
            ),
            None => Box::new(tcp),
        };
        match &self.ws_url {
            None => Ok(Conn::Stream {
                io,
                rbuf: BytesMut::with_capacity(8 * 1024),
                max_frame,
            }),
            Some(url) => {
                // A WebSocket message carries one frame, so the message limit is the frame limit.
                let ws_cfg = WebSocketConfig::default()
                    .max_message_size(Some(max_frame))
                    .max_frame_size(Some(max_frame));
                let (ws, _resp) =
                    tokio_tungstenite::client_async_with_config(url.as_str(), io, Some(ws_cfg))
                        .await?;
                Ok(Conn::Ws {
                    ws: Box::new(ws),
                    max_frame,
                })
            }
        }
    }
}

impl Endpoint {
    /// Connects from `local` (port 0: the OS picks it) to the first
    /// resolved address of the same family.
    async fn connect_from(&self, local: IpAddr) -> Result<TcpStream, SdkError> {
        let remote = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .ok_or_else(|| {
                SdkError::Io(std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("{} has no address of the family of {local}", self.host),
                ))
            })?;
        let socket = if local.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(local, 0))?;
        Ok(socket.connect(remote).await?)
    }
}

/// Linux: the port of a socket bound to an address with port 0 is picked
/// by `connect`, for the whole 4-tuple, instead of by `bind`, which would
/// reserve it against every later autobound connect for as long as the
/// socket (and its TIME_WAIT) lives. Best effort elsewhere.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor (borrowed for the call) and a
    // pointer to a c_int that outlives it, with its length.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// A rustls connector trusting exactly the configured roots (ring provider:
/// the only one in the build).
fn tls_connector(roots_pem: &[Vec<u8>]) -> Result<TlsConnector, SdkError> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| SdkError::Tls(format!("bad root certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SdkError::Tls(format!("bad root certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(SdkError::Tls(
            "no root certificates configured (ClientConfig::root_certs_pem)".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SdkError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One open connection.
pub(crate) enum Conn {
    /// TCP or TLS: frames back to back.
    Stream {
        io: Box<dyn Io>,
        rbuf: BytesMut,
        max_frame: usize,
    },
    /// WebSocket: one frame per binary message.
    Ws {
        ws: Box<WebSocketStream<Box<dyn Io>>>,
        max_frame: usize,
    },
}

impl Conn {
    /// Writes one encoded frame, giving up after `timeout` (a peer that
    /// stopped reading must not wedge the task).
    pub(crate) async fn send(&mut self, frame: Bytes, timeout: Duration) -> Result<(), SdkError> {
        let write = async {
            match self {
                Conn::Stream { io, .. } => {
                    io.write_all(&frame).await?;
                    // TLS buffers records until flushed.
                    io.flush().await?;
                    Ok(())
                }
                Conn::Ws { ws, .. } => ws
                    .send(WsMessage::Binary(frame))
                    .await
                    .map_err(SdkError::from),
            }
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| SdkError::Timeout)?
    }

    /// The next frame; `Ok(None)` when the peer closed. Cancel-safe: bytes
    /// read before a cancellation stay buffered for the next call.
    pub(crate) async fn recv(&mut self) -> Result<Option<Frame>, SdkError> {
        match self {
            Conn::Stream {
                io,
                rbuf,
                max_frame,
            } => loop {
                if let Some(frame) = decode(rbuf, *max_frame)? {
                    return Ok(Some(frame));
                }
                if io.read_buf(rbuf).await? == 0 {
                    return if rbuf.is_empty() {
                        Ok(None)
                    } else {
                        Err(SdkError::Protocol("connection closed mid-frame".into()))
                    };
                }
            },
            Conn::Ws { ws, max_frame } => loop {
                let Some(msg) = ws.next().await else {
                    return Ok(None);
                };
                match msg? {
                    WsMessage::Binary(data) => {
                        let mut buf = BytesMut::from(data);
                        let frame = decode(&mut buf, *max_frame)?.ok_or_else(|| {
                            SdkError::Protocol("websocket message shorter than its frame".into())
                        })?;
                        if !buf.is_empty() {
                            return Err(SdkError::Protocol(
                                "websocket message carries more than one frame".into(),
                            ));
                        }
                        return Ok(Some(frame));
                    }
                    WsMessage::Close(_) => return Ok(None),
                    // Control frames are answered by tungstenite; JSON text frames
                    // are never asked for by this client.
                    WsMessage::Text(_) => {
                        return Err(SdkError::Protocol(
                            "unexpected websocket text message".into(),
                        ));
                    }
                    _ => {}
                }
            },
        }
    }

    /// Closes politely (best effort).
    pub(crate) async fn close(&mut self) {
        let done = async {
            match self {
                Conn::Stream { io, .. } => {
                    let _ = io.shutdown().await;
                }
                Conn::Ws { ws, .. } => {
                    let _ = ws.close().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> ParsedUrl {
        parse_url(url).unwrap()
    }

    #[test]
    fn urls_of_every_scheme_parse() {
        assert_eq!(
            p("tcp://127.0.0.1:7000"),
            ParsedUrl {
                scheme: "tcp".into(),
                host: "127.0.0.1".into(),
                port: 7000,
                path: "/".into()
            }
        );
        assert_eq!(p("TLS://example.com:7443").scheme, "tls");
        let ws = p("ws://localhost:8080/ws?x=1");
        assert_eq!((ws.port, ws.path.as_str()), (8080, "/ws?x=1"));
        assert_eq!(p("wss://example.com/ws").port, 443);
        assert_eq!(p("ws://example.com").port, 80);
        let v6 = p("tcp://[::1]:7000");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7000));
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "localhost:7000",
            "http://localhost:80",
            "tcp://localhost",
            "tcp://:7000",
            "tcp://host:notaport",
            "tcp://host:0",
            "tcp://host:70000",
            "ws://user@host:80/ws",
            "tcp://[::1:7000",
        ] {
            assert!(
                matches!(parse_url(url), Err(SdkError::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn tls_without_roots_is_a_config_error() {
        let cfg = ClientConfig::new("tls://localhost:7443", "t");
        assert!(matches!(Endpoint::from_config(&cfg), Err(SdkError::Tls(_))));
        let cfg = cfg.with_root_certs_pem(b"not pem".to_vec());
        assert!(matches!(Endpoint::from_config(&cfg), Err(SdkError::Tls(_))));
        let ok = ClientConfig::new("ws://localhost:80/ws", "t");
        assert!(Endpoint::from_config(&ok).is_ok());
    }
}
