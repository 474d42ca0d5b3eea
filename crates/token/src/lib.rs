//! Assignment tokens: what the director signs and entry servers check.
//!
//! **What.** Each pick of an assignment (primary, backup) carries an *ingest* token that binds
//! the stream id, the broadcast, the entry server id, the role and an expiry ([`Claims`]). The
//! director signs it with its Ed25519 [`SigningKey`]; entry servers hold only the
//! [`VerifyingKey`] and call [`VerifyingKey::verify`] before they accept an upload. A *playback*
//! token ([`PlayClaims`]) lets a viewer watch one private stream until it expires; entry servers
//! check it with [`VerifyingKey::verify_play`]. The `scp` claim (`ingest` / `play`) is required
//! and checked, so neither kind is ever accepted as the other.
//!
//! **Format: a compact JWS / JWT with `alg` = `EdDSA` (RFC 7515, RFC 7519, RFC 8037).**
//!
//! ```text
//! base64url(header) "." base64url(claims) "." base64url(ed25519(header "." claims))
//! header = {"alg":"EdDSA","typ":"JWT"}
//! ingest = {"scp":"ingest","stream":"abc","broadcast":"b018c2f3a4b5c-0000002a","server":"fra-1",
//!           "role":"primary","private":false,"iat":1700000000,"exp":1700003600}
//! play   = {"scp":"play","stream":"abc","iat":1700000000,"exp":1700003600}
//! ```
//!
//! base64url is unpadded (RFC 7515 §2). `iat` and `exp` are Unix seconds (JWT NumericDate).
//! Any JWT library that speaks EdDSA can verify these tokens with the director's public key;
//! this crate is the reference verifier. Why JWT rather than PASETO v4.public: both are Ed25519
//! signatures over the payload; JWT's `exp` is a Unix number (PASETO's is an ISO 8601 string), and
//! more tooling reads JWTs. The usual JWT pitfall — trusting the header's `alg` — does not apply:
//! the verifier accepts `EdDSA` only and never consults the header for key material.
//!
//! Keys are PEM: PKCS#8 `PRIVATE KEY` for the signing key, SPKI `PUBLIC KEY` for the verifying
//! key (the same files `openssl genpkey -algorithm ed25519` writes). `firstmile keygen` makes a
//! pair.
//!
//! **What not.** No clock (`now` is an argument), no key files (callers read them), no
//! revocation, no encryption: the claims are readable by anyone who holds the token.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};

pub use proto::Role;
use proto::{BroadcastId, ServerId, StreamId};

/// The JOSE header of every token, as encoded by [`SigningKey::sign`].
pub const HEADER_JSON: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// The longest token [`VerifyingKey::verify`] looks at, in bytes. Real tokens are ~300 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token is for (the `scp` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publishing one broadcast at one entry server as one role.
    Ingest,
    /// Watching one stream.
    Play,
    /// An entry server of the fleet, to another.
    Peer,
}

/// What an ingest token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`Scope::Ingest`].
    pub scp: Scope,
    /// The stream the upload is for.
    pub stream: StreamId,
    /// The broadcast (one go-live of the stream) the upload belongs to.
    pub broadcast: BroadcastId,
    /// The entry server the token is valid at.
    pub server: ServerId,
    /// Which of the stream's two paths this is.
    pub role: Role,
    /// Viewers of this broadcast need a playback token.
    #[serde(default)]
    pub private: bool,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds: the token is refused from this second on.
    pub exp: u64,
}

/// What a playback token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayClaims {
    /// Always [`Scope::Play`].
    pub scp: Scope,
    /// The stream the viewer may watch (any of its broadcasts).
    pub stream: StreamId,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

trait Expiring {
    fn exp(&self) -> u64;
    fn scope(&self) -> Scope;
}

impl Expiring for Claims {
    fn exp(&self) -> u64 {
        self.exp
    }
    fn scope(&self) -> Scope {
        self.scp
    }
}

impl Expiring for PlayClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
    fn scope(&self) -> Scope {
        self.scp
    }
}

/// Why a token was refused. Every variant is the presenter's fault; retrying with the same token
/// fails the same way (ask the director for a new assignment instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS, bad base64url, bad JSON or missing claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("unsupported token algorithm {0:?}: only EdDSA (Ed25519) is accepted")]
    Algorithm(String),
    /// The signature does not verify under this key (tampered, or signed by another key).
    #[error("bad token signature: not signed by this director's key, or altered")]
    BadSignature,
    /// The token was valid until `exp`.
    #[error("token expired at {exp} (Unix seconds), now is {now}")]
    Expired { exp: u64, now: u64 },
    /// A valid token of the other kind (a playback token presented to publish, or the reverse).
    #[error("this is {got:?} token; {want:?} is needed here")]
    Scope { got: Scope, want: Scope },
}

/// A key file or key bytes that cannot be used. The operator is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "not an Ed25519 private key in PKCS#8 PEM (\"-----BEGIN PRIVATE KEY-----\"): {0}; \
         make one with `firstmile keygen`"
    )]
    Private(String),
    #[error(
        "not an Ed25519 public key in SPKI PEM (\"-----BEGIN PUBLIC KEY-----\"): {0}; \
         make one with `firstmile keygen`"
    )]
    Public(String),
}

/// The director's secret key. `Debug` does not print it.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_bytes(&seed)
    }

    /// From the 32-byte Ed25519 seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// From PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map(Self)
            .map_err(|e| KeyError::Private(e.to_string()))
    }

    /// As PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        // Encoding a valid key into PEM cannot fail; fall back to an empty string defensively.
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .unwrap_or_default()
    }

    /// The matching public key, for entry servers.
    pub fn public_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Sign ingest `claims` into a compact token.
    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_any(claims)
    }

    /// Sign playback `claims` into a compact token.
    pub fn sign_play(&self, claims: &PlayClaims) -> String {
        self.sign_any(claims)
    }

    fn sign_any<T: Serialize>(&self, claims: &T) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        // Serializing a struct of strings and integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut token = String::with_capacity(header.len() + payload.len() + 90);
        token.push_str(&header);
        token.push('.');
        token.push_str(&payload);
        let sig = self.0.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        token
    }
}

/// The public key entry servers verify tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl VerifyingKey {
    /// From the 32-byte public key. Rejects bytes that are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|e| KeyError::Public(e.to_string()))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// From SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self)
            .map_err(|e| KeyError::Public(e.to_string()))
    }

    /// As SPKI PEM.
    pub fn to_pem(&self) -> String {
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Check an ingest token's signature, scope and expiry at `now` (Unix seconds), and return
    /// its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        self.verify_with_leeway(token, now, 0)
    }

    /// As [`VerifyingKey::verify`], accepting tokens up to `leeway_s` seconds past `exp`
    /// (clock skew between the director and the entry server).
    pub fn verify_with_leeway(
        &self,
        token: &str,
        now: u64,
        leeway_s: u64,
    ) -> Result<Claims, TokenError> {
        self.verify_any(token, now, leeway_s, Scope::Ingest)
    }

    /// Check a playback token's signature, scope and expiry at `now`.
    pub fn verify_play(&self, token: &str, now: u64) -> Result<PlayClaims, TokenError> {
        self.verify_any(token, now, 0, Scope::Play)
    }

    fn verify_any<T: serde::de::DeserializeOwned + Expiring>(
        &self,
        token: &str,
        now: u64,
        leeway_s: u64,
        want: Scope,
    ) -> Result<T, TokenError> {
        let malformed = |m: &str| TokenError::Malformed(m.to_string());
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "token is {} bytes long, the limit is {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "expected three base64url parts separated by '.' (header.claims.signature)",
            ));
        };
        let header_bytes = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| malformed("header is not unpadded base64url"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| malformed("header is not a JSON object with \"alg\""))?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg.chars().take(20).collect()));
        }
        if header.crit.is_some() {
            return Err(malformed("critical header extensions are not supported"));
        }
        let sig_bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| malformed("signature is not unpadded base64url"))?;
        let sig_bytes: [u8; 64] = sig_bytes
            .try_into()
            .map_err(|_| malformed("signature is not 64 bytes"))?;
        let signed = &token[..h.len() + 1 + p.len()];
        self.0
            .verify_strict(signed.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| malformed("claims are not unpadded base64url"))?;
        #[derive(Deserialize)]
        struct ScopeOnly {
            scp: Scope,
        }
        let got = serde_json::from_slice::<ScopeOnly>(&payload)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?
            .scp;
        if got != want {
            return Err(TokenError::Scope { got, want });
        }
        let claims: T = serde_json::from_slice(&payload)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if claims.scope() != want {
            return Err(TokenError::Scope {
                got: claims.scope(),
                want,
            });
        }
        if now >= claims.exp().saturating_add(leeway_s) {
            return Err(TokenError::Expired {
                exp: claims.exp(),
                now,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.4: the Ed25519 JWS example, signed and verified byte for byte.
    #[test]
    fn rfc8037_example_signature() {
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let sk = SigningKey::from_bytes(&d.try_into().unwrap());
        assert_eq!(sk.public_key().to_bytes().to_vec(), x);
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = URL_SAFE_NO_PAD.encode(sk.0.sign(input.as_bytes()).to_bytes());
        assert_eq!(
            sig,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Entry servers' own credentials, and peer tokens

/// Each entry server proves which server it is with a credential of its own,
/// `"<server id>:<64 hex digits>"`: HMAC-SHA256 under the director's entry key of the server's
/// id. The director holds only the entry key and recomputes the credential of the id a request
/// names; an entry server holds only its own. So a leaked credential lets its holder act as that
/// one server (which the operator then re-keys), never register, heartbeat for, drain or
/// deregister another. `firstmile keygen --entry ID` prints one.
pub fn entry_credential(entry_key: &str, server: &ServerId) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(entry_key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"firstmile/entry-server/v1/");
    mac.update(server.as_str().as_bytes());
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{server}:{hex}")
}

/// The server a presented credential belongs to, if it is that server's credential under
/// `entry_key` (compared in constant time). An empty key verifies nothing.
pub fn check_entry_credential(entry_key: &str, presented: &str) -> Option<ServerId> {
    if entry_key.is_empty() || presented.len() > 200 {
        return None;
    }
    let (id, _) = presented.rsplit_once(':')?;
    let server: ServerId = id.parse().ok()?;
    let want = entry_credential(entry_key, &server);
    let same = want.len() == presented.len()
        && want
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(server)
}

/// What a peer token says: the director vouches that `server` is an entry server of its fleet
/// (until `exp`). Entry servers present it to each other (relay feeds of private broadcasts,
/// `GET /v1/streams`), and check it with the director's public key they already hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerClaims {
    /// Always [`Scope::Peer`].
    pub scp: Scope,
    /// The entry server.
    pub server: ServerId,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

impl Expiring for PeerClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
    fn scope(&self) -> Scope {
        self.scp
    }
}

impl SigningKey {
    /// Sign a peer token.
    pub fn sign_peer(&self, claims: &PeerClaims) -> String {
        self.sign_any(claims)
    }
}

impl VerifyingKey {
    /// Check a peer token's signature, scope and expiry at `now`.
    pub fn verify_peer(&self, token: &str, now: u64) -> Result<PeerClaims, TokenError> {
        self.verify_any(token, now, 0, Scope::Peer)
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn an_entry_credential_proves_one_server_and_no_other() {
        let a: ServerId = "fra-1".parse().unwrap();
        let b: ServerId = "lon-1".parse().unwrap();
        let ca = entry_credential("master-key-0123456789", &a);
        assert!(ca.starts_with("fra-1:") && ca.len() == "fra-1:".len() + 64);
        assert_eq!(
            check_entry_credential("master-key-0123456789", &ca),
            Some(a.clone())
        );
        // Relabelling it as another server's does not verify.
        let forged = ca.replacen("fra-1", "lon-1", 1);
        assert_eq!(
            check_entry_credential("master-key-0123456789", &forged),
            None
        );
        assert_ne!(entry_credential("master-key-0123456789", &b), forged);
        // Another director's key, an empty key, garbage: nothing.
        assert_eq!(check_entry_credential("another-key-0123456789", &ca), None);
        assert_eq!(check_entry_credential("", &ca), None);
        for g in ["", ":", "fra-1", "fra-1:zz", "../x:00"] {
            assert_eq!(
                check_entry_credential("master-key-0123456789", g),
                None,
                "{g}"
            );
        }
    }
}
