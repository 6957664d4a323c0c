//! TLS for the TCP and HTTP/WebSocket listeners (rustls, ring provider).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

/// Builds an acceptor from PEM files: a certificate chain and its private key.
pub fn acceptor_from_pem_files(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", key.display())))?;
    acceptor_from_pem(&cert_pem, &key_pem)
}

/// Builds an acceptor from PEM bytes.
pub fn acceptor_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad certificate PEM: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no certificate in the PEM",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad private key PEM: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
