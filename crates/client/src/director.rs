//! Talking to the director: assignments, stream status, the ranked entry-server list, probe
//! targets, playback tokens.
//!
//! **What.** The requests and answers are the contract's types (`proto::api`), shared with the
//! director: a renamed field is a compile error, not a silent default. Answers ignore fields this
//! client does not know (a newer director may add some). Errors carry the director's own message
//! (its [`ErrorBody`]: `error`, `code`, `accepted`).
//!
//! **What not.** No retries or caching: the pusher decides when to ask again.

use std::path::Path;
use std::time::Duration;

use proto::api::Pick;
pub use proto::api::{
    Assignment, AssignmentRequest, BroadcastList, ErrorBody, IngestInfo, LocationInput,
    PlaybackToken, PlaybackTokenRequest, Point, ProbeTargets, RankedList, RankedServer, StreamInfo,
};
use proto::{Protocol, StreamId, StreamKey};

use crate::error::{ClientError, chain};

/// The request of `POST /v1/assignments` (the contract's name is [`AssignmentRequest`]).
pub type AssignRequest = AssignmentRequest;

/// How long one director request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL of `pick` for `protocol`: its URL for that protocol, else the pick's `url`.
pub fn url_for(pick: &Pick, protocol: Protocol) -> Option<&str> {
    pick.urls
        .get(protocol)
        .or_else(|| (!pick.url.is_empty()).then_some(pick.url.as_str()))
}

/// A director's base URL and an HTTP client.
#[derive(Debug, Clone)]
pub struct Director {
    base: String,
    pub(crate) http: reqwest::Client,
}

impl Director {
    /// A client for the director at `base` (`http://host:port` or `https://host:port`, verified
    /// against the public web roots).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_ca_file(base, None)
    }

    /// As [`Director::new`], also trusting the CA certificates in `ca_file` (PEM) for an
    /// `https://` director: a private CA or a self-signed certificate.
    pub fn with_ca_file(base: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        check_http_url(&base)?;
        let http = http_client(Some(REQUEST_TIMEOUT), ca_file)?;
        Ok(Director { base, http })
    }

    /// As [`Director::new`], with requests sent from `local` (a device on a host with several
    /// addresses; the load tools play many devices from 127.0.0.0/8 this way).
    pub fn from_address(base: &str, local: std::net::IpAddr) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        check_http_url(&base)?;
        let http = http_client_from(Some(REQUEST_TIMEOUT), None, Some(local))?;
        Ok(Director { base, http })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/assignments`.
    pub async fn assign(&self, req: &AssignRequest) -> Result<Assignment, ClientError> {
        let url = format!("{}/v1/assignments", self.base);
        json_answer(&url, self.http.post(&url).json(req).send().await).await
    }

    /// `GET /v1/streams/{id}`; `None` when the director does not know the stream.
    pub async fn stream(&self, id: &StreamId) -> Result<Option<StreamInfo>, ClientError> {
        let url = format!("{}/v1/streams/{id}", self.base);
        match json_answer(&url, self.http.get(&url).send().await).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/streams/{id}/broadcasts`, newest first; `None` for an unknown stream.
    pub async fn broadcasts(&self, id: &StreamId) -> Result<Option<BroadcastList>, ClientError> {
        let url = format!("{}/v1/streams/{id}/broadcasts", self.base);
        match json_answer(&url, self.http.get(&url).send().await).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/entry-servers?location=...`: entry servers ranked for the caller, best first.
    pub async fn entry_servers(
        &self,
        location: Option<&str>,
    ) -> Result<Vec<RankedServer>, ClientError> {
        let mut url = format!("{}/v1/entry-servers", self.base);
        if let Some(l) = location {
            url.push_str("?location=");
            url.push_str(&percent_encode(l));
        }
        let list: RankedList = json_answer(&url, self.http.get(&url).send().await).await?;
        Ok(list.entry_servers)
    }

    /// `GET /v1/probe-targets?location=&protocol=`: whom to probe before asking.
    pub async fn probe_targets(
        &self,
        location: Option<&str>,
        protocol: Protocol,
    ) -> Result<ProbeTargets, ClientError> {
        let mut url = format!("{}/v1/probe-targets?protocol={protocol}", self.base);
        if let Some(l) = location {
            url.push_str("&location=");
            url.push_str(&percent_encode(l));
        }
        json_answer(&url, self.http.get(&url).send().await).await
    }

    /// `POST /v1/streams/{id}/playback-tokens` with the stream's key (the publisher's) or the
    /// admin token as the bearer.
    pub async fn playback_token(
        &self,
        id: &StreamId,
        bearer: &str,
        ttl_s: Option<u64>,
    ) -> Result<PlaybackToken, ClientError> {
        let url = format!("{}/v1/streams/{id}/playback-tokens", self.base);
        let req = PlaybackTokenRequest { ttl_s };
        json_answer(
            &url,
            self.http
                .post(&url)
                .bearer_auth(bearer)
                .json(&req)
                .send()
                .await,
        )
        .await
    }
}

/// Asks the director at `director_url` for an assignment.
pub async fn assign(director_url: &str, req: &AssignRequest) -> Result<Assignment, ClientError> {
    Director::new(director_url)?.assign(req).await
}

/// The stream key from the `FIRSTMILE_STREAM_KEY` value or a flag, checked.
pub fn parse_key(s: &str) -> Result<StreamKey, ClientError> {
    StreamKey::parse(s).map_err(|e| ClientError::BadUrl {
        url: "--key".into(),
        reason: e.to_string(),
    })
}

/// An HTTP(S) client: rustls with the ring provider, trusting the public web roots and
/// `ca_file`'s certificates.
pub(crate) fn http_client(
    timeout: Option<Duration>,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ClientError> {
    http_client_from(timeout, ca_file, None)
}

/// [`http_client`] whose connections come from `local` when given.
fn http_client_from(
    timeout: Option<Duration>,
    ca_file: Option<&Path>,
    local: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: String::new(),
        reason,
    };
    let tls = plumbing::tls::client_config(ca_file).map_err(|e| bad(e.to_string()))?;
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tls_backend_preconfigured((*tls).clone())
        .local_address(local);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| bad(format!("cannot build an HTTP client: {e}")))
}

pub(crate) fn check_http_url(url: &str) -> Result<(), ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("expected http://host:port or https://host:port"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(())
}

/// Reads a JSON answer into `T`; a non-2xx status becomes [`ClientError::Status`] with the
/// body's `error` message (and `accepted`, when given).
pub(crate) async fn json_answer<T: serde::de::DeserializeOwned>(
    url: &str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, ClientError> {
    let resp = resp.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        detail: chain(&e),
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        detail: chain(&e),
    })?;
    if !status.is_success() {
        return Err(ClientError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            message: error_message(&body),
            code: serde_json::from_slice::<ErrorBody>(&body)
                .ok()
                .map(|b| b.code),
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
        url: url.to_owned(),
        reason: format!("the answer does not match the API: {e}"),
    })
}

/// The human message of an error body: `error` (+ `accepted`), or the start of the text.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        return match b.accepted {
            Some(a) => format!("{} (accepted: {a})", b.error),
            None => b.error,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(no body)".to_owned()
    } else {
        text.chars().take(300).collect()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_serialize_like_the_director_expects() {
        let r = AssignRequest {
            stream: Some(StreamId::parse("s1").unwrap()),
            location: Some(LocationInput::Place("Paris, FR".into())),
            protocol: Some(Protocol::Native),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"stream": "s1", "location": "Paris, FR", "protocol": "native"})
        );
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            error_message(br#"{"error":"bitrate_kbps: 0 is out of range","code":"invalid_field","accepted":"1..=100000"}"#),
            "bitrate_kbps: 0 is out of range (accepted: 1..=100000)"
        );
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(error_message(b""), "(no body)");
    }

    #[test]
    fn urls_are_checked_and_queries_encoded() {
        assert!(check_http_url("http://127.0.0.1:1").is_ok());
        assert!(check_http_url("https://x").is_ok());
        assert!(check_http_url("tcp://x").is_err());
        assert!(check_http_url("http://").is_err());
        assert_eq!(percent_encode("Paris, FR"), "Paris%2C%20FR");
        assert_eq!(percent_encode("São"), "S%C3%A3o");
    }
}
