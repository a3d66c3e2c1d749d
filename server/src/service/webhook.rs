//! Who may make `serve` fetch now (SPEC "HTTP (serve)", `POST /sync`): an operator with the
//! bearer token, or a Git host's webhook as the host sends it — GitHub's
//! `X-Hub-Signature-256: sha256=<hex>` and Gitea's `X-Gitea-Signature: <hex>` (HMAC-SHA256
//! of the raw body keyed with `server.webhook_secret`), GitLab's `X-Gitlab-Token: <secret>`.
//!
//! The request is judged in the order that costs the least: a declared body over
//! [`MAX_BODY`] is refused before any byte of it is read; a credential that can be checked
//! from the headers alone (token, malformed or unexpected signature) is checked before the
//! body is read; only a well-formed signature makes us read the body, through a limit, so a
//! body that lies about its length or has none declared (chunked) still stops at
//! [`MAX_BODY`]. Every comparison with a secret runs in constant time (`subtle`, and hmac's
//! own `verify_slice`).

use super::metrics::WebhookSource;
use crate::secret::Secret;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The largest body accepted. Push events of GitHub, Gitea and GitLab carry the commits'
/// metadata, a few KiB to a few hundred; we never need the content, only its signature.
pub const MAX_BODY: usize = 1 << 20;

const GITHUB_SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
const GITEA_SIGNATURE: HeaderName = HeaderName::from_static("x-gitea-signature");
const GITLAB_TOKEN: HeaderName = HeaderName::from_static("x-gitlab-token");

/// The secrets `POST /sync` accepts; with neither set the endpoint is open (a listener on
/// loopback, the default, needs none).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `Authorization: Bearer <token>`.
    pub sync_token: Option<Secret>,
    /// Key of the GitHub/Gitea signatures, and GitLab's token.
    pub webhook_secret: Option<Secret>,
}

impl Credentials {
    fn open(&self) -> bool {
        self.sync_token.is_none() && self.webhook_secret.is_none()
    }
}

/// What becomes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated (or the endpoint is open): request a sync.
    Accepted,
    /// No valid credential.
    Unauthorized,
    /// The body is, or says it is, over [`MAX_BODY`].
    TooLarge,
    /// The body could not be read (the client went away or stalled).
    BadBody,
}

/// The sender, told by the credential header it carries. When a request carries several, the
/// first of `Authorization`, `X-Gitlab-Token`, `X-Gitea-Signature`, `X-Hub-Signature-256`
/// is the one checked (Gitea sends both signature headers, with the same value).
pub fn source(headers: &HeaderMap) -> WebhookSource {
    if headers.contains_key(header::AUTHORIZATION) {
        WebhookSource::Bearer
    } else if headers.contains_key(GITLAB_TOKEN) {
        WebhookSource::Gitlab
    } else if headers.contains_key(GITEA_SIGNATURE) {
        WebhookSource::Gitea
    } else if headers.contains_key(GITHUB_SIGNATURE) {
        WebhookSource::Github
    } else {
        WebhookSource::Unknown
    }
}

/// Judges one request from `source` (see [`source`]); reads `body` only when a signature
/// must be checked against it, and never more than [`MAX_BODY`] of it.
pub async fn judge(
    creds: &Credentials,
    source: WebhookSource,
    headers: &HeaderMap,
    body: Body,
) -> Verdict {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Verdict::TooLarge;
    }
    if creds.open() {
        return match read_limited(body).await {
            Ok(_) => Verdict::Accepted,
            Err(verdict) => verdict,
        };
    }
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let key = match source {
        WebhookSource::Bearer | WebhookSource::Gitlab => {
            let (given, secret) = if source == WebhookSource::Bearer {
                let given = text(header::AUTHORIZATION).and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                });
                (given, creds.sync_token.as_ref())
            } else {
                (text(GITLAB_TOKEN), creds.webhook_secret.as_ref())
            };
            if !token_matches(given, secret) {
                return Verdict::Unauthorized;
            }
            // Not needed, but read through the limit all the same: every accepted body is
            // at most MAX_BODY, whoever sent it.
            return match read_limited(body).await {
                Ok(_) => Verdict::Accepted,
                Err(verdict) => verdict,
            };
        }
        WebhookSource::Unknown => return Verdict::Unauthorized,
        WebhookSource::Gitea | WebhookSource::Github => match &creds.webhook_secret {
            Some(key) => key,
            None => return Verdict::Unauthorized,
        },
    };
    let signature = match source {
        WebhookSource::Github => text(GITHUB_SIGNATURE).and_then(|v| v.strip_prefix("sha256=")),
        _ => text(GITEA_SIGNATURE),
    };
    // A SHA-256 MAC is 32 bytes; anything else cannot match, so the body is not read.
    let Some(mac) = signature
        .and_then(|s| hex::decode(s.trim()).ok())
        .filter(|mac| mac.len() == 32)
    else {
        return Verdict::Unauthorized;
    };
    let body = match read_limited(body).await {
        Ok(body) => body,
        Err(verdict) => return verdict,
    };
    let mut expected =
        Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key length");
    expected.update(&body);
    match expected.verify_slice(&mac) {
        Ok(()) => Verdict::Accepted,
        Err(_) => Verdict::Unauthorized,
    }
}

/// `given` against `secret`, in constant time; no secret configured means no entry this way.
fn token_matches(given: Option<&str>, secret: Option<&Secret>) -> bool {
    match (given, secret) {
        (Some(given), Some(secret)) => {
            constant_time_eq(given.as_bytes(), secret.expose().as_bytes())
        }
        _ => false,
    }
}

/// Compares without stopping at the first difference, so response times do not reveal how
/// much of a guess was right. The length may leak; it says little about the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The whole body, or [`Verdict::TooLarge`] as soon as more than [`MAX_BODY`] bytes came,
/// whatever the request declared.
async fn read_limited(body: Body) -> Result<axum::body::Bytes, Verdict> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Verdict::TooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "POST /sync: cannot read the body");
            Err(Verdict::BadBody)
        }
    }
}
