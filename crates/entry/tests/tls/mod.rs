//! The native protocol over TLS: `native_tls` on the entry server, `tls://` in the client.

use super::*;
use client::core::PathTarget;
use client::{PushConfig, Pusher};

/// A self-signed certificate for `ip`, written as PEM files in `dir`: (cert, key).
fn self_signed(dir: &std::path::Path, ip: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn tls_config(
    id: &str,
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> EntryConfig {
    EntryConfig {
        native_tls: Some(entry::NativeTls {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
        }),
        ..entry_config(id, "tls", "Paris", dir, None)
    }
}

/// The entry server registers `tls://host:port` with the director; a device pushes over TLS with
/// the client crate (trusting the test CA); a viewer reads exactly
/// the pushed bytes back. A plain-TCP client on the TLS port is dropped and the server keeps
/// serving TLS sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_over_tls_end_to_end() {
    let ip = "127.0.0.21";
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), ip);
    let d = start_director();
    let mut cfg = tls_config("tls-1", dir.path(), &cert, &key);
    cfg.director = Some(d.url.clone());
    let s = Server::start(cfg, ip);
    wait_registered(&d, 1).await;
    let signer = token::SigningKey::from_bytes(&[7u8; 32]);
    let url = format!("tls://{}", s.native);
    // The server registers its native URL as tls://.
    let reg = admin_servers(&d).await;
    assert_eq!(
        reg["entry_servers"][0]["urls"]["native"],
        json!(url),
        "{reg:#}"
    );

    // Plain TCP speaking the protocol to the TLS port: no WELCOME, just a closed connection.
    let mut plain = Path::connect(&s.native.to_string()).await.unwrap();
    let tok = token_for(&signer, "secure", "tls-1", Role::Primary, far_future());
    match plain.hello("secure", Role::Primary, &tok, None).await {
        Err(_) => {}
        Ok(f) => panic!("a plain-TCP client got {f:?} from the TLS port"),
    }

    // A silent plain-TCP connection holds up nobody while it waits for its handshake timeout.
    let _silent = TcpStream::connect(s.native).await.unwrap();

    let data: Vec<u8> = (0..400_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let push = |stream: &'static str, data: Vec<u8>, ca: Option<std::path::PathBuf>| {
        let url = url.clone();
        let tok = token_for(&signer, stream, "tls-1", Role::Primary, far_future());
        async move {
            let target = PathTarget {
                role: Role::Primary,
                server_id: "tls-1".into(),
                url,
                token: tok,
            };
            let config = PushConfig {
                chunk_max: 8192,
                ca_file: ca,
                start_timeout: Duration::from_secs(3),
                ..PushConfig::default()
            };
            Pusher::new(
                StreamId::parse(stream).unwrap(),
                vec![(Role::Primary, target)],
                config,
            )
            .run(&data[..])
            .await
        }
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        push("secure", data.clone(), Some(cert.clone())),
    )
    .await
    .expect("push in time")
    .expect("push over TLS");
    assert_eq!(summary.complete_paths, 1, "{summary:?}");
    let got = read_live(s.http, "secure", "start").await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the viewer got other bytes than were pushed");

    // Without the test CA the client refuses the server (webpki roots only).
    let e = push("untrusted", b"x".repeat(100), None)
        .await
        .expect_err("an unknown issuer must be refused");
    assert!(e.to_string().contains("certificate"), "{e}");
}

/// Unusable certificate or key files are a configuration error naming the key.
#[test]
fn bad_tls_files_are_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "127.0.0.22");
    let missing = dir.path().join("missing.pem");
    let e = Entry::init(tls_config("tls-2", dir.path(), &missing, &key)).unwrap_err();
    assert!(matches!(e, entry::InitError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("native_tls.cert_file"), "{e}");
    // A certificate where the key should be.
    let e = Entry::init(tls_config("tls-2", dir.path(), &cert, &cert)).unwrap_err();
    assert!(e.to_string().contains("native_tls.key_file"), "{e}");
    assert!(Entry::init(tls_config("tls-2", dir.path(), &cert, &key)).is_ok());
}
