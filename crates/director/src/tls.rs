//! HTTPS: the director's rustls server configuration (ring provider, HTTP/1.1 by ALPN).
//!
//! TLS is terminated by the shared serve loop (`plumbing::listen::http`): handshakes run in each
//! connection's own task under the listener's header deadline (`http.header_timeout_ms`), so one
//! slow or silent client holds up nobody, and a connection over the caps is closed before any
//! handshake work.
//!
//! **What not.** No client certificates, no certificate reloading (restart to rotate).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;

pub use plumbing::tls::TlsError;

/// Load a PEM certificate chain and key into a rustls server config (ring provider, HTTP/1.1).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    plumbing::tls::server_config(cert_file, key_file, &[b"http/1.1"])
}

/// The peer address of a TLS connection, as axum connect info. The serve loop gives every
/// request `ConnectInfo<SocketAddr>` (HTTP and HTTPS alike); the client-IP extractor also
/// accepts this type, for routers served by other means.
#[derive(Clone, Copy, Debug)]
pub struct TlsPeer(pub SocketAddr);
