//! TLS termination with rustls (ring provider): a certificate chain and key from PEM files,
//! ALPN h2 and http/1.1. Read again on every reload, so a renewed certificate is picked up.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::TlsAcceptor;

use super::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {message}")]
    Cert { path: String, message: String },
    #[error("{path}: cannot read a private key: {message}")]
    Key { path: String, message: String },
    #[error("{cert} and {key}: {message}")]
    Config { cert: String, key: String, message: String },
}

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let show = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: show(&files.cert), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: show(&files.cert), message: "no CERTIFICATE block in the file".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: show(&files.key), message: e.to_string() })?;
    let config_err =
        |e: rustls::Error| TlsError::Config { cert: show(&files.cert), key: show(&files.key), message: e.to_string() };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(config_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
