//! Consul's ACL admin API for `kvgit acl` (`/v1/acl/policies`, `/v1/acl/policy`,
//! `/v1/acl/token`): reads the `kvgit-*` policies and a node's token, creates and updates them.

use crate::config::{ConnectError, ConsulConfig, Secret};
use crate::errors::quote;
use crate::http::{Http, Query};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use sync_core::BackendError;

/// Only policies whose name starts with this are read or ever changed.
pub const OWNED_PREFIX: &str = "kvgit-";

/// An ACL policy as kvgit compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub description: String,
    /// HCL rules, compared as text.
    pub rules: String,
}

/// A token as read back with its own secret (`/v1/acl/token/self`); the secret is not kept.
#[derive(Debug, Clone)]
pub struct Token {
    pub accessor_id: String,
    pub description: String,
    /// Names of the policies it is linked to.
    pub policies: Vec<String>,
}

/// Why an admin call failed; each names the request or object it was about.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("Consul at {endpoint} refused the admin token ({credential}): {detail}")]
    AdminRefused {
        endpoint: String,
        credential: String,
        detail: String,
    },
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: BackendError,
    },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unreadable answer ({detail})")]
    Unreadable { what: String, detail: String },
}

/// A connection to Consul with a token that has `acl = "write"`.
pub struct ConsulAdmin {
    http: Arc<Http>,
    /// The admin's settings, for a request made with another token (`token_self`).
    cfg: ConsulConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyListEntry {
    #[serde(rename = "ID")]
    id: String,
    name: String,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyBody {
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rules: String,
}

#[derive(Deserialize, Serialize)]
struct PolicyLink {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TokenBody {
    #[serde(
        rename = "AccessorID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    accessor_id: String,
    #[serde(rename = "SecretID", default, skip_serializing)]
    secret_id: String,
    #[serde(default)]
    description: String,
    /// Consul answers `null` for a token without policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policies: Option<Vec<PolicyLink>>,
}

impl ConsulAdmin {
    /// Connects with `cfg` (endpoint and TLS as configured; its token is the admin's,
    /// `credential` names where it came from) and checks with one policy listing that the
    /// token may read ACLs.
    pub async fn connect(cfg: &ConsulConfig, credential: &str) -> Result<ConsulAdmin, AclError> {
        let base = cfg.base_url()?;
        let admin = ConsulAdmin {
            http: Http::new(cfg, base)?,
            cfg: cfg.clone(),
        };
        let uri = admin.http.uri("/v1/acl/policies", Query::new());
        let resp = admin
            .http
            .get("acl policies", uri)
            .await
            .map_err(|source| match source {
                BackendError::Unavailable {
                    endpoint, detail, ..
                } => AclError::Connect(ConnectError::Unreachable { endpoint, detail }),
                source => AclError::Request {
                    what: "list ACL policies".into(),
                    source,
                },
            })?;
        match resp.status.as_u16() {
            200 => Ok(admin),
            401 | 403 => Err(AclError::AdminRefused {
                endpoint: admin.http.base.clone(),
                credential: credential.to_owned(),
                detail: quote(&resp.body),
            }),
            status => Err(AclError::Status {
                what: "list ACL policies".into(),
                status,
                body: quote(&resp.body),
            }),
        }
    }

    /// The `kvgit-*` policies with their rules.
    pub async fn policies(&self) -> Result<Vec<Policy>, AclError> {
        let list: Vec<PolicyListEntry> = self
            .json(
                "list ACL policies",
                self.http.uri("/v1/acl/policies", Query::new()),
            )
            .await?;
        let mut out = Vec::new();
        for entry in list.iter().filter(|p| p.name.starts_with(OWNED_PREFIX)) {
            let what = format!("policy {}: read", entry.name);
            let path = format!("/v1/acl/policy/{}", entry.id);
            let body: PolicyBody = self.json(&what, self.http.uri(&path, Query::new())).await?;
            out.push(Policy {
                id: body.id,
                name: body.name,
                description: body.description,
                rules: body.rules,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates the policy, or updates it when `id` is set.
    pub async fn put_policy(
        &self,
        id: Option<&str>,
        name: &str,
        description: &str,
        rules: &str,
    ) -> Result<(), AclError> {
        let body = PolicyBody {
            id: id.unwrap_or_default().to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            rules: rules.to_owned(),
        };
        let (what, path) = match id {
            Some(id) => (
                format!("policy {name}: update"),
                format!("/v1/acl/policy/{id}"),
            ),
            None => (
                format!("policy {name}: create"),
                "/v1/acl/policy".to_owned(),
            ),
        };
        let _: PolicyBody = self.put_json(&what, &path, &body).await?;
        Ok(())
    }

    /// The token whose secret is `secret`, or `None` when Consul does not know it.
    pub async fn token_self(&self, secret: &Secret) -> Result<Option<Token>, AclError> {
        // Asked with the token itself: a token may always read itself.
        let mut own = self.cfg.clone();
        own.token = Some(secret.clone());
        own.token_file = None;
        let http = Http::new(&own, self.http.base.clone())?;
        let uri = http.uri("/v1/acl/token/self", Query::new());
        let resp = http
            .get("read the node's token", uri)
            .await
            .map_err(|source| AclError::Request {
                what: "read the node's token".into(),
                source,
            })?;
        match resp.status.as_u16() {
            200 => {
                let body: TokenBody = parse("read the node's token", &resp.body)?;
                Ok(Some(Token {
                    accessor_id: body.accessor_id,
                    description: body.description,
                    policies: body
                        .policies
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| p.name)
                        .collect(),
                }))
            }
            // "ACL not found": deleted, expired or never there.
            401 | 403 | 404 => Ok(None),
            status => Err(AclError::Status {
                what: "read the node's token".into(),
                status,
                body: quote(&resp.body),
            }),
        }
    }

    /// Creates a token linked to `policies`; returns its secret.
    pub async fn create_token(
        &self,
        description: &str,
        policies: &[String],
    ) -> Result<Secret, AclError> {
        let body = token_body("", description, policies);
        let what = format!("token for {}: create", policies.join(", "));
        let created: TokenBody = self.put_json(&what, "/v1/acl/token", &body).await?;
        if created.secret_id.is_empty() {
            return Err(AclError::Unreadable {
                what,
                detail: "no SecretID in the answer".into(),
            });
        }
        Ok(Secret::from(created.secret_id))
    }

    /// Links the token `accessor_id` to exactly `policies`.
    pub async fn update_token(
        &self,
        accessor_id: &str,
        description: &str,
        policies: &[String],
    ) -> Result<(), AclError> {
        let body = token_body(accessor_id, description, policies);
        let what = format!("token {accessor_id}: update");
        let path = format!("/v1/acl/token/{accessor_id}");
        let _: TokenBody = self.put_json(&what, &path, &body).await?;
        Ok(())
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        uri: String,
    ) -> Result<T, AclError> {
        let resp = self
            .http
            .get(what, uri)
            .await
            .map_err(|source| AclError::Request {
                what: what.to_owned(),
                source,
            })?;
        if resp.status.as_u16() != 200 {
            return Err(AclError::Status {
                what: what.to_owned(),
                status: resp.status.as_u16(),
                body: quote(&resp.body),
            });
        }
        parse(what, &resp.body)
    }

    async fn put_json<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        path: &str,
        body: &B,
    ) -> Result<T, AclError> {
        let bytes = serde_json::to_vec(body).map_err(|e| AclError::Unreadable {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
        let uri = self.http.uri(path, Query::new());
        let resp = self
            .http
            .put(what, uri, Some(Bytes::from(bytes)))
            .await
            .map_err(|source| AclError::Request {
                what: what.to_owned(),
                source,
            })?;
        if resp.status.as_u16() != 200 {
            return Err(AclError::Status {
                what: what.to_owned(),
                status: resp.status.as_u16(),
                body: quote(&resp.body),
            });
        }
        parse(what, &resp.body)
    }
}

fn token_body(accessor_id: &str, description: &str, policies: &[String]) -> TokenBody {
    TokenBody {
        accessor_id: accessor_id.to_owned(),
        secret_id: String::new(),
        description: description.to_owned(),
        policies: Some(
            policies
                .iter()
                .map(|name| PolicyLink { name: name.clone() })
                .collect(),
        ),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, AclError> {
    serde_json::from_slice(body).map_err(|e| AclError::Unreadable {
        what: what.to_owned(),
        detail: format!("{e}: {}", quote(body)),
    })
}
