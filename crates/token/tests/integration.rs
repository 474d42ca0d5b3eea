//! Token round-trips, expiry, tampering, wrong keys and garbage.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use token::{Claims, PlayClaims, Role, Scope, SigningKey, TokenError, VerifyingKey};

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut ChaCha8Rng::seed_from_u64(seed))
}

fn claims() -> Claims {
    Claims {
        scp: Scope::Ingest,
        stream: "abc".parse().unwrap(),
        broadcast: "b1".parse().unwrap(),
        server: "fra-1".parse().unwrap(),
        role: Role::Backup,
        private: false,
        iat: 1_700_000_000,
        exp: 1_700_000_600,
    }
}

#[test]
fn a_playback_token_is_not_an_ingest_token_and_the_reverse() {
    let sk = key(9);
    let play = sk.sign_play(&PlayClaims {
        scp: Scope::Play,
        stream: "abc".parse().unwrap(),
        iat: 1_700_000_000,
        exp: 1_700_000_600,
    });
    let vk = sk.public_key();
    assert_eq!(
        vk.verify_play(&play, 1_700_000_001)
            .unwrap()
            .stream
            .as_str(),
        "abc"
    );
    assert_eq!(
        vk.verify(&play, 1_700_000_001),
        Err(TokenError::Scope {
            got: Scope::Play,
            want: Scope::Ingest
        })
    );
    let ingest = sk.sign(&claims());
    assert!(matches!(
        vk.verify_play(&ingest, 1_700_000_001),
        Err(TokenError::Scope { .. })
    ));
    // A signed claim set that lies about its scope still fails on the missing fields.
    let mut fake = serde_json::to_value(claims()).unwrap();
    fake["scp"] = "play".into();
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&fake).unwrap());
    assert!(vk.verify(&format!("{h}.{p}.x"), 1_700_000_001).is_err());
}

#[test]
fn round_trip() {
    let sk = key(1);
    let t = sk.sign(&claims());
    assert_eq!(t.split('.').count(), 3);
    assert_eq!(sk.public_key().verify(&t, 1_700_000_001), Ok(claims()));
    // The header is the documented constant.
    let h = URL_SAFE_NO_PAD
        .decode(t.split('.').next().unwrap())
        .unwrap();
    assert_eq!(h, br#"{"alg":"EdDSA","typ":"JWT"}"#);
}

#[test]
fn expiry_is_exclusive_and_leeway_extends_it() {
    let sk = key(2);
    let t = sk.sign(&claims());
    let vk = sk.public_key();
    assert!(vk.verify(&t, 1_700_000_599).is_ok());
    let e = vk.verify(&t, 1_700_000_600).unwrap_err();
    assert_eq!(
        e,
        TokenError::Expired {
            exp: 1_700_000_600,
            now: 1_700_000_600
        }
    );
    assert!(e.to_string().contains("expired"));
    assert!(vk.verify_with_leeway(&t, 1_700_000_629, 30).is_ok());
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let sk = key(3);
    let t = sk.sign(&claims());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims();
    c.server = "evil-1".parse().unwrap();
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    let e = sk
        .public_key()
        .verify(&tampered, 1_700_000_001)
        .unwrap_err();
    assert_eq!(e, TokenError::BadSignature);
    assert!(e.to_string().contains("signature"));
}

#[test]
fn wrong_key_is_a_bad_signature() {
    let t = key(4).sign(&claims());
    assert_eq!(
        key(5).public_key().verify(&t, 1_700_000_001),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn other_algorithms_are_refused() {
    let sk = key(6);
    let t = sk.sign(&claims());
    let rest = t.split_once('.').unwrap().1;
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
    let e = sk
        .public_key()
        .verify(&format!("{none}.{rest}"), 1)
        .unwrap_err();
    assert!(
        matches!(e, TokenError::Algorithm(ref a) if a == "none"),
        "{e}"
    );
}

#[test]
fn garbage_is_malformed() {
    let vk = key(7).public_key();
    for g in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "eyJhbGciOiJFZERTQSJ9..",
    ] {
        let e = vk.verify(g, 0).unwrap_err();
        assert!(matches!(e, TokenError::Malformed(_)), "{g:?}: {e}");
    }
    assert!(matches!(
        vk.verify(&"a".repeat(10_000), 0),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn pem_round_trip() {
    let sk = key(8);
    let pem = sk.to_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = SigningKey::from_pem(&pem).unwrap();
    assert_eq!(back.to_bytes(), sk.to_bytes());
    let pub_pem = sk.public_key().to_pem();
    assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(VerifyingKey::from_pem(&pub_pem).unwrap(), sk.public_key());
    assert!(SigningKey::from_pem(&pub_pem).is_err());
    assert!(VerifyingKey::from_pem("nonsense").is_err());
    // Debug never shows the secret.
    let dbg = format!("{sk:?}");
    assert!(!dbg.contains(&format!("{:?}", sk.to_bytes())));
}

proptest! {
    #[test]
    fn verify_never_panics(s in ".{0,400}") {
        let _ = key(9).public_key().verify(&s, 0);
    }

    #[test]
    fn any_single_byte_change_is_refused(idx in 0usize..200, b in any::<u8>()) {
        let sk = key(10);
        let t = sk.sign(&claims());
        let mut bytes = t.clone().into_bytes();
        let i = idx % bytes.len();
        prop_assume!(bytes[i] != b);
        bytes[i] = b;
        if let Ok(s) = String::from_utf8(bytes) {
            // Base64url's last character can carry unused bits; a change there may decode to
            // the same bytes, in which case the token is unchanged in substance.
            if let Ok(c) = sk.public_key().verify(&s, 0) {
                prop_assert_eq!(c, claims());
            }
        }
    }
}
