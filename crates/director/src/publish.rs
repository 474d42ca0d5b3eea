//! Who may publish a stream: the `keys`, `open` and `webhook` modes.
//!
//! **Rules** ([`check`], pure, applied inside the stream store's atomic update so that two
//! requests racing for a new id in `open` mode cannot both own it):
//!
//! | mode | stream unknown | stream known |
//! |---|---|---|
//! | `keys` | refused (403 `wrong_stream_key`: not provisioned) | its key, else 401 (none) / 403 (wrong) |
//! | `open` | created: the key given, or a generated one returned once | its key, as `keys` |
//! | `webhook` | created (no key kept) once the hook said yes | the hook said yes |
//!
//! In `webhook` mode [`ask_hook`] POSTs a [`WebhookRequest`] to the platform before anything
//! else: a 2xx allows (its optional [`WebhookAnswer`] may make the stream private), any other
//! status denies (403 `publish_denied`); a hook that cannot be asked within
//! `publish.webhook.timeout_ms` denies (503 `publish_hook_unavailable`, Retry-After) or allows,
//! as `publish.webhook.on_error` says. The SRS / MediaMTX / OvenMediaEngine on_publish model.
//!
//! **Secrets.** Keys are compared through their SHA-256 in constant time, never logged, never
//! listed; a refusal says which stream and why, never anything of the key.
//!
//! **What not.** No broadcast logic ([`crate::streams`]), no HTTP routing ([`crate::api`]).

use std::time::Duration;

use proto::StreamId;
use proto::StreamKey;
use proto::api::{WebhookAnswer, WebhookRequest};

use crate::config::{OnHookError, PublishMode, WebhookConfig};
use crate::streams::{ContinueError, JoinError, Origin, StoreError, StreamDoc};

/// Why a publish (an assignment, a key publish at an entry server) is refused. Nothing was
/// changed when one of these is returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error(
        "a stream id is required in {0} mode: streams are provisioned by the operator or the platform"
    )]
    StreamRequired(&'static str),
    #[error("stream {0} has a key: send it as `key` (firstmile: --key or FIRSTMILE_STREAM_KEY)")]
    KeyRequired(StreamId),
    #[error("wrong stream key for stream {0}, or the stream is not provisioned")]
    WrongKey(StreamId),
    #[error("the platform's publish hook refused stream {stream} (HTTP {status})")]
    Denied { stream: StreamId, status: u16 },
    #[error("the platform's publish hook cannot be asked: {0}")]
    HookUnavailable(String),
    #[error(transparent)]
    Continue(#[from] ContinueError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`check`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Ownership {
    /// The stream exists and the caller may publish it.
    Existing,
    /// The stream is new and becomes the caller's.
    Create {
        origin: Origin,
        /// The key to store (none in webhook mode).
        key: Option<StreamKey>,
        /// The key was generated here: hand it to the caller once.
        generated: bool,
    },
}

/// The mode's rule for `stream` with the document `doc` and the presented `key` (see the
/// module docs). `fresh_key` is used when `open` mode creates a stream without a key.
pub fn check(
    mode: PublishMode,
    stream: &StreamId,
    doc: Option<&StreamDoc>,
    key: Option<&StreamKey>,
    fresh_key: impl FnOnce() -> StreamKey,
) -> Result<Ownership, PublishError> {
    match (mode, doc) {
        (PublishMode::Webhook, None) => Ok(Ownership::Create {
            origin: Origin::Webhook,
            key: None,
            generated: false,
        }),
        (PublishMode::Webhook, Some(_)) => Ok(Ownership::Existing),
        (PublishMode::Keys, None) => Err(PublishError::WrongKey(stream.clone())),
        (PublishMode::Open, None) => Ok(match key {
            Some(k) => Ownership::Create {
                origin: Origin::Claimed,
                key: Some(k.clone()),
                generated: false,
            },
            None => Ownership::Create {
                origin: Origin::Claimed,
                key: Some(fresh_key()),
                generated: true,
            },
        }),
        (PublishMode::Keys | PublishMode::Open, Some(d)) => match key {
            None => Err(PublishError::KeyRequired(stream.clone())),
            Some(k) if d.key_matches(k) => Ok(Ownership::Existing),
            Some(_) => Err(PublishError::WrongKey(stream.clone())),
        },
    }
}

/// The mode's name, for messages.
pub fn mode_name(m: PublishMode) -> &'static str {
    match m {
        PublishMode::Keys => "keys",
        PublishMode::Open => "open",
        PublishMode::Webhook => "webhook",
    }
}

/// Ask the platform's publish hook (webhook mode). `Ok` = allowed.
pub async fn ask_hook(
    http: &reqwest::Client,
    cfg: &WebhookConfig,
    req: &WebhookRequest,
) -> Result<WebhookAnswer, PublishError> {
    let Some(url) = &cfg.url else {
        return Err(PublishError::HookUnavailable(
            "publish.webhook.url is not set".into(),
        ));
    };
    let mut r = http
        .post(url)
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .json(req);
    if let Some(s) = &cfg.secret {
        r = r.bearer_auth(s);
    }
    let unavailable = |why: String| match cfg.on_error {
        OnHookError::Deny => Err(PublishError::HookUnavailable(why)),
        OnHookError::Allow => {
            tracing::warn!(stream = %req.stream, error = %why, "publish hook unavailable: allowed (publish.webhook.on_error = allow)");
            Ok(WebhookAnswer::default())
        }
    };
    let resp = match r.send().await {
        Ok(resp) => resp,
        Err(e) if e.is_timeout() => {
            return unavailable(format!("no answer within {} ms", cfg.timeout_ms));
        }
        Err(e) => return unavailable(format!("{e}")),
    };
    let status = resp.status();
    if status.is_server_error() {
        return unavailable(format!("HTTP {status}"));
    }
    if !status.is_success() {
        return Err(PublishError::Denied {
            stream: req.stream.clone(),
            status: status.as_u16(),
        });
    }
    // A 2xx allows; a body, if any, may carry options. A body we cannot read is ignored (the
    // answer is still yes), but it is bounded: a hook cannot make the director buffer much.
    let bytes =
        match tokio::time::timeout(Duration::from_millis(cfg.timeout_ms), resp.bytes()).await {
            Ok(Ok(b)) if b.len() <= 16 * 1024 => b,
            _ => return Ok(WebhookAnswer::default()),
        };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(WebhookAnswer::default());
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::parse(s).unwrap()
    }

    #[test]
    fn the_modes_decide_as_documented() {
        let s: StreamId = "live1".parse().unwrap();
        let k = key("abcdefghijklmnop");
        let doc = StreamDoc::new(s.clone(), Some(k.hash()), false, Origin::Provisioned, 1);
        let fresh = || key("generatedgenerated");
        // keys
        assert!(matches!(
            check(PublishMode::Keys, &s, None, Some(&k), fresh),
            Err(PublishError::WrongKey(_))
        ));
        assert_eq!(
            check(PublishMode::Keys, &s, Some(&doc), Some(&k), fresh).unwrap(),
            Ownership::Existing
        );
        assert!(matches!(
            check(PublishMode::Keys, &s, Some(&doc), None, fresh),
            Err(PublishError::KeyRequired(_))
        ));
        assert!(matches!(
            check(
                PublishMode::Keys,
                &s,
                Some(&doc),
                Some(&key("abcdefghijklmnoX")),
                fresh
            ),
            Err(PublishError::WrongKey(_))
        ));
        // open
        assert_eq!(
            check(PublishMode::Open, &s, None, None, fresh).unwrap(),
            Ownership::Create {
                origin: Origin::Claimed,
                key: Some(key("generatedgenerated")),
                generated: true
            }
        );
        assert_eq!(
            check(PublishMode::Open, &s, None, Some(&k), fresh).unwrap(),
            Ownership::Create {
                origin: Origin::Claimed,
                key: Some(k.clone()),
                generated: false
            }
        );
        assert!(matches!(
            check(PublishMode::Open, &s, Some(&doc), None, fresh),
            Err(PublishError::KeyRequired(_))
        ));
        // webhook: the hook decided already.
        assert_eq!(
            check(PublishMode::Webhook, &s, Some(&doc), None, fresh).unwrap(),
            Ownership::Existing
        );
        // Messages never carry the key.
        let e = check(
            PublishMode::Keys,
            &s,
            Some(&doc),
            Some(&key("zzzzzzzzzzzzzzzz")),
            fresh,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("zzzz") && e.contains("live1"), "{e}");
    }
}
