//! One HTTP/1.1 client for every Consul request (shared with rs-consul, so one connection
//! pool): TLS from the config's files, the token and datacenter on each request, a deadline
//! on each, bodies read whole.

use crate::config::{ConnectError, ConsulConfig};
use crate::errors::{chain, Ctx};
use crate::keys;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;
use sync_core::BackendError;

/// The client type rs-consul is built on; ours is handed to it.
pub(crate) type HttpsClient = rs_consul::HttpsClient;

/// Idle keep-alive connections kept per agent: enough for the writer's 32 transactions in
/// flight plus the watches.
const POOL_IDLE_PER_HOST: usize = 48;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a request came back with.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    /// `X-Consul-Index`, on reads that support blocking queries.
    pub index: Option<u64>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: Consul left out entries the token may
    /// not read, so the answer is not the whole listing.
    pub filtered_by_acls: bool,
    pub body: Bytes,
}

/// Query parameters, escaped as they are added.
#[derive(Debug, Default)]
pub(crate) struct Query(String);

impl Query {
    pub fn new() -> Query {
        Query::default()
    }

    /// A parameter without a value (`?recurse`).
    pub fn flag(mut self, name: &str) -> Query {
        self.sep();
        self.0.push_str(name);
        self
    }

    pub fn param(mut self, name: &str, value: impl Display) -> Query {
        self.sep();
        self.0.push_str(name);
        self.0.push('=');
        self.0.push_str(&keys::query(&value.to_string()));
        self
    }

    fn sep(&mut self) {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
    }
}

/// The shared client plus what every request carries.
pub(crate) struct Http {
    pub client: HttpsClient,
    /// `http(s)://host:port`, no trailing slash.
    pub base: String,
    pub token: Option<String>,
    pub datacenter: Option<String>,
    pub request_timeout: Duration,
    pub ctx: Ctx,
}

impl Http {
    pub fn new(cfg: &ConsulConfig, base: String) -> Result<Arc<Http>, ConnectError> {
        let token = crate::tls::token(cfg)?;
        let client = build_client(cfg, &base)?;
        Ok(Arc::new(Http {
            client,
            ctx: Ctx {
                endpoint: base.clone(),
                credential: cfg.credential(),
                ca_setting: cfg
                    .ca_file
                    .as_ref()
                    .map(|f| format!("{} ({})", cfg.setting("ca_file"), f.display())),
                cert_setting: cfg
                    .cert_file
                    .as_ref()
                    .map(|f| format!("{} ({})", cfg.setting("cert_file"), f.display())),
                server_name_setting: cfg
                    .tls_server_name
                    .as_ref()
                    .map(|n| format!("{} ({n:?})", cfg.setting("tls_server_name"))),
            },
            base,
            token,
            datacenter: cfg.datacenter.clone(),
            request_timeout: cfg.request_timeout,
        }))
    }

    /// `base` + `path` (already escaped, from `/v1/`) + the query, with `dc` when set.
    pub fn uri(&self, path: &str, mut query: Query) -> String {
        if let Some(dc) = &self.datacenter {
            query = query.param("dc", dc);
        }
        format!("{}{path}{}", self.base, query.0)
    }

    pub async fn get(&self, what: &str, uri: String) -> Result<Response, BackendError> {
        self.send(what, Method::GET, uri, None, self.request_timeout)
            .await
    }

    pub async fn put(
        &self,
        what: &str,
        uri: String,
        body: Option<Bytes>,
    ) -> Result<Response, BackendError> {
        self.send(what, Method::PUT, uri, body, self.request_timeout)
            .await
    }

    /// One exchange, request and whole body, bounded by `timeout`. Transport failures and
    /// timeouts are `Unavailable`; statuses are left to the caller (404 means different
    /// things on different endpoints).
    pub async fn send(
        &self,
        what: &str,
        method: Method,
        uri: String,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Response, BackendError> {
        let retryable = method == Method::GET;
        let request = || {
            let mut req = Request::builder().method(method.clone()).uri(&uri);
            if let Some(token) = &self.token {
                // Checked at connect: a token is always a valid header value.
                if let Ok(v) = HeaderValue::from_str(token) {
                    req = req.header("X-Consul-Token", v);
                }
            }
            let body: BoxBody<Bytes, std::convert::Infallible> = match &body {
                Some(b) => {
                    req = req.header(CONTENT_TYPE, "application/json");
                    BoxBody::new(Full::new(b.clone()))
                }
                None => BoxBody::new(Empty::new()),
            };
            req.body(body)
                .map_err(|e| crate::errors::refused(format!("{what}: invalid request {uri}: {e}")))
        };
        let first = request()?;
        let exchange = async {
            let resp = match self.client.request(first).await {
                // The connection closed before the request went out ("connection was not
                // ready"): an agent that requires a client certificate ends a TLS 1.3
                // handshake only after it completed on our side. Sent once more, a GET
                // (nothing to lose) gets what the agent has to say: its alert, or its answer.
                Err(e) if retryable && closed_before_use(&e) => {
                    self.client.request(request()?).await
                }
                other => other,
            }
            .map_err(|e| self.ctx.transport(what, &chain(&e)))?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let filtered_by_acls = resp
                .headers()
                .get("X-Consul-Results-Filtered-By-ACLs")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    self.ctx
                        .unavailable(format!("{what}: reading the answer: {}", chain(&e)))
                })?
                .to_bytes();
            Ok(Response {
                status,
                index,
                filtered_by_acls,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self
                .ctx
                .unavailable(format!("{what}: no answer within {timeout:?}"))),
        }
    }
}

/// The pooled HTTP/1.1 client, TCP connect bounded by `connect_timeout`; https with the
/// config's CA (else the webpki roots), client certificate and server name (ring,
/// explicitly, so the process-wide rustls provider does not matter).
fn build_client(cfg: &ConsulConfig, base: &str) -> Result<HttpsClient, ConnectError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let tls = crate::tls::client_config(cfg, base)?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let https = match crate::tls::server_name(cfg) {
        Some(name) => builder
            .https_or_http()
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(http),
        None => builder.https_or_http().enable_http1().wrap_connector(http),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .build(https))
}

/// Whether a request failed because its connection closed before the request was sent.
fn closed_before_use(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_escape_values_and_add_the_datacenter() {
        let cfg = ConsulConfig {
            datacenter: Some("eu west".into()),
            ..ConsulConfig::default()
        };
        let http = Http::new(&cfg, "http://127.0.0.1:8500".into()).expect("client");
        let q = Query::new()
            .flag("recurse")
            .param("index", 42)
            .param("wait", "2s");
        assert_eq!(
            http.uri("/v1/kv/a%20b/", q),
            "http://127.0.0.1:8500/v1/kv/a%20b/?recurse&index=42&wait=2s&dc=eu%20west"
        );
        let plain = Http::new(&ConsulConfig::default(), "http://h:1".into()).expect("client");
        assert_eq!(plain.uri("/v1/txn", Query::new()), "http://h:1/v1/txn");
    }
}
