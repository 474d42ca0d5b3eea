//! TLS material shared by the services: loading a PEM certificate chain and key into a rustls
//! server config, and the client config every firstmile client uses (webpki roots plus an
//! optional extra CA file) for `tls://` sessions and `https://` directors. Ring provider only,
//! so no second crypto provider is linked in.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// TLS material that cannot be used. The operator is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {message}")]
    Cert { path: String, message: String },
    #[error("TLS key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("CA file {path}: {message}")]
    Ca { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Load a PEM certificate chain and key into a rustls server config (ring provider) offering
/// the given ALPN protocols (none = no ALPN).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_file.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_file.display().to_string(),
            message: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A rustls client config (ring provider) trusting the webpki roots and the certificates in
/// `ca_file` (PEM), if given: for a private CA or a self-signed director or entry server.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |message: String| TlsError::Ca {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block found".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Makes ring the process-wide default rustls provider (idempotent; a provider installed
/// earlier stays). Needed by code that builds rustls configs or HTTP clients without naming a
/// provider (`reqwest::get`, `reqwest::Client::new()`): reqwest is built without one here, so
/// that aws-lc is never linked in.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
