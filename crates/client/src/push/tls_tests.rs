//! `tls://` URLs and server verification of [`TcpConnect`].

use super::*;
use tokio_rustls::rustls::ServerConfig;

#[test]
fn native_urls_parse() {
    assert_eq!(
        native_addr("tcp://10.0.0.1:7001").unwrap(),
        ("10.0.0.1:7001", false)
    );
    assert_eq!(
        native_addr("tls://entry.example:7001/").unwrap(),
        ("entry.example:7001", true)
    );
    assert_eq!(tcp_addr("tls://[::1]:7001").unwrap(), "[::1]:7001");
    for bad in ["tls://", "ws://h:1/v1/ingest", "h:1", "tcps://h:1"] {
        let e = native_addr(bad).unwrap_err();
        assert!(e.to_string().contains("tls://host:port"), "{bad}: {e}");
    }
    use rustls_pki_types::ServerName;
    assert!(matches!(
        server_name("127.0.0.1:7001").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name("[::1]:7001").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name("entry.example:7001").unwrap(),
        ServerName::DnsName(_)
    ));
    assert!(server_name("bad name:1").is_err());
}

/// A self-signed certificate for `ip` as (cert PEM, key PEM).
fn self_signed(ip: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A TLS server on `ip` answering with `cert`: the address; it echoes one line.
async fn tls_server(ip: &str, cert: &str, key: &str) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(s).await {
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                        let _ = s.flush().await;
                    }
                }
            });
        }
    });
    addr
}

fn target(url: String) -> PathTarget {
    PathTarget {
        role: Role::Primary,
        server_id: "e1".into(),
        url,
        token: String::new(),
    }
}

#[tokio::test]
async fn the_right_ca_is_trusted_and_a_wrong_one_refused() {
    let ip = "127.0.0.31";
    let (cert, key) = self_signed(ip);
    let (other_cert, _) = self_signed(ip);
    let dir = std::env::temp_dir().join(format!("firstmile-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, wrong, junk) = (
        dir.join("ca.pem"),
        dir.join("wrong.pem"),
        dir.join("junk.pem"),
    );
    std::fs::write(&ca, &cert).unwrap();
    std::fs::write(&wrong, &other_cert).unwrap();
    std::fs::write(&junk, "not a certificate").unwrap();
    let addr = tls_server(ip, &cert, &key).await;
    let t = target(format!("tls://{addr}"));

    let mut s = TcpConnect::new(Some(&ca))
        .unwrap()
        .connect(&t)
        .await
        .unwrap();
    assert!(matches!(s, NativeStream::Tls(_)));
    s.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello");

    for c in [
        TcpConnect::new(Some(&wrong)).unwrap(),
        TcpConnect::default(),
    ] {
        let e = c.connect(&t).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("TLS handshake") && msg.contains("certificate"),
            "{msg}"
        );
    }

    let e = TcpConnect::new(Some(&junk)).unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
