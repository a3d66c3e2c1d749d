//! Consul's ACL system as its docs and acl/ package define it: policy rules (HCL or JSON) for
//! key/session/node/agent/… resources, tokens bound to policies, and the authorizer that
//! answers "may this token do X on Y" with Consul's precedence and error texts.
//!
//! Matching (acl/policy_authorizer.go): for a name, an exact rule (`key "a"`) wins; else the
//! longest matching prefix rule (`key_prefix "a/"`); else the default policy, deny. Several
//! policies on one token merge per rule with deny over write over list over read. `write`
//! grants read and list, `read` grants list, `list` only list. Messages follow acl/errors.go.

use super::http::ApiError;
use super::ids;
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The builtin management policy and the anonymous token, with Consul's fixed IDs.
pub(crate) const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";
pub(crate) const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
const GLOBAL_MANAGEMENT_RULES: &str = "acl = \"write\"\nagent_prefix \"\" {\n  policy = \"write\"\n}\nevent_prefix \"\" {\n  policy = \"write\"\n}\nkey_prefix \"\" {\n  policy = \"write\"\n}\nkeyring = \"write\"\nnode_prefix \"\" {\n  policy = \"write\"\n}\noperator = \"write\"\nmesh = \"write\"\npeering = \"write\"\nquery_prefix \"\" {\n  policy = \"write\"\n}\nservice_prefix \"\" {\n  policy = \"write\"\n  intentions = \"write\"\n}\nsession_prefix \"\" {\n  policy = \"write\"\n}";

/// Resources with named rules (`key "x"` / `key_prefix "x"`).
const NAMED: [&str; 7] = [
    "key", "session", "node", "agent", "service", "event", "query",
];
/// Resources with one level for everything (`acl = "write"`).
const GLOBAL: [&str; 5] = ["acl", "operator", "keyring", "mesh", "peering"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    List,
    Read,
    Write,
    Deny,
}

impl Access {
    fn parse(text: &str) -> Option<Access> {
        match text {
            "list" => Some(Access::List),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::List => "list",
            Access::Read => "read",
            Access::Write => "write",
            Access::Deny => "deny",
        }
    }

    /// Consul's `takesPrecedenceOver`: deny, then write, then list, then read.
    fn merge(self, other: Access) -> Access {
        let rank = |a: Access| match a {
            Access::Deny => 3,
            Access::Write => 2,
            Access::List => 1,
            Access::Read => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// Whether a rule of this level grants `need` (Consul's `enforce`).
    fn grants(self, need: Access) -> bool {
        match self {
            Access::Write => true,
            Access::Read => matches!(need, Access::Read | Access::List),
            Access::List => need == Access::List,
            Access::Deny => false,
        }
    }
}

/// The rules of one or more policies, merged.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rules {
    /// resource -> name -> level, for exact rules and for prefix rules.
    exact: BTreeMap<&'static str, BTreeMap<String, Access>>,
    prefix: BTreeMap<&'static str, BTreeMap<String, Access>>,
    global: BTreeMap<&'static str, Access>,
}

impl Rules {
    /// Parses a policy's `Rules` as Consul does: JSON when it starts with `{`, else HCL.
    /// The error is Consul's "Failed to parse ACL rules: …".
    pub fn parse(text: &str) -> Result<Rules, String> {
        let fail = |why: String| format!("Failed to parse ACL rules: {why}");
        let value = if text.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(text).map_err(|e| fail(e.to_string()))?
        } else {
            hcl_to_json(&hcl::parse(text).map_err(|e| fail(e.to_string()))?)?
        };
        let mut rules = Rules::default();
        let Value::Object(top) = value else {
            return Err(fail("expected an object".into()));
        };
        for (name, value) in top {
            rules.add(&name, value).map_err(fail)?;
        }
        Ok(rules)
    }

    fn add(&mut self, name: &str, value: Value) -> Result<(), String> {
        if let Some(resource) = GLOBAL.iter().find(|r| **r == name) {
            let level = value
                .as_str()
                .and_then(Access::parse)
                .ok_or_else(|| format!("Invalid {name} policy: {value}"))?;
            merge_into(self.global.entry(resource).or_insert(level), level);
            return Ok(());
        }
        let (resource, is_prefix) = match name.strip_suffix("_prefix") {
            Some(r) => (r, true),
            None => (name, false),
        };
        let Some(resource) = NAMED.iter().find(|r| **r == resource) else {
            return Err(format!("unexpected rule type {name:?}"));
        };
        // HCL-in-JSON may wrap every level in a list: `{"key": [{"a": [{"policy": ..}]}]}`.
        for (segment, body) in objects(value)? {
            let mut level = None;
            for (attr, setting) in objects(body)? {
                if attr == "policy" {
                    level = setting.as_str().and_then(Access::parse);
                    if level.is_none() {
                        return Err(format!("Invalid {name} policy: {setting}"));
                    }
                }
            }
            let Some(level) = level else {
                continue;
            };
            let table = if is_prefix {
                &mut self.prefix
            } else {
                &mut self.exact
            };
            let slot = table.entry(resource).or_default();
            merge_into(slot.entry(segment).or_insert(level), level);
        }
        Ok(())
    }

    /// Adds another policy's rules.
    pub fn merge(&mut self, other: &Rules) {
        for (resource, level) in &other.global {
            merge_into(self.global.entry(resource).or_insert(*level), *level);
        }
        for (mine, theirs) in [
            (&mut self.exact, &other.exact),
            (&mut self.prefix, &other.prefix),
        ] {
            for (resource, names) in theirs {
                let slot = mine.entry(resource).or_default();
                for (name, level) in names {
                    merge_into(slot.entry(name.clone()).or_insert(*level), *level);
                }
            }
        }
    }

    /// The rule that decides `name`: exact, else the longest matching prefix.
    fn level(&self, resource: &str, name: &str) -> Option<Access> {
        if let Some(level) = self.exact.get(resource).and_then(|m| m.get(name)) {
            return Some(*level);
        }
        self.prefix
            .get(resource)?
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, level)| *level)
    }

    /// Consul's `KeyWritePrefix`: write on the prefix itself and no rule under it that
    /// grants less.
    fn write_prefix(&self, prefix: &str) -> bool {
        let under = |m: Option<&BTreeMap<String, Access>>| {
            m.into_iter()
                .flatten()
                .all(|(name, level)| !name.starts_with(prefix) || *level == Access::Write)
        };
        self.level("key", prefix) == Some(Access::Write)
            && under(self.prefix.get("key"))
            && under(self.exact.get("key"))
    }
}

fn merge_into(slot: &mut Access, level: Access) {
    *slot = slot.merge(level);
}

/// The members of an object, or of every object in a list of objects.
fn objects(value: Value) -> Result<Vec<(String, Value)>, String> {
    match value {
        Value::Object(map) => Ok(map.into_iter().collect()),
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(objects(item)?);
            }
            Ok(out)
        }
        other => Err(format!("expected a block, got {other}")),
    }
}

/// The HCL subset policies use, as the JSON form: attributes with string values, blocks
/// with one label whose body holds attributes.
fn hcl_to_json(body: &hcl::Body) -> Result<Value, String> {
    let mut top = Map::new();
    for structure in body.iter() {
        match structure {
            hcl::Structure::Attribute(attr) => {
                top.insert(attr.key().to_string(), expression(attr.expr())?);
            }
            hcl::Structure::Block(block) => {
                let [label] = block.labels() else {
                    return Err(format!(
                        "{} block needs exactly one label",
                        block.identifier()
                    ));
                };
                let inner = hcl_to_json(block.body())?;
                let entry = top
                    .entry(block.identifier().to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = entry {
                    items.push(json!({ label.as_str(): inner }));
                }
            }
        }
    }
    Ok(Value::Object(top))
}

fn expression(expr: &hcl::Expression) -> Result<Value, String> {
    match expr {
        hcl::Expression::String(s) => Ok(Value::String(s.clone())),
        hcl::Expression::Bool(b) => Ok(Value::Bool(*b)),
        other => Err(format!("unsupported value {other:?}")),
    }
}

/// What a request's token may do.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub accessor: String,
    /// `None`: the token holds global-management.
    rules: Option<Rules>,
}

impl Identity {
    pub fn management(accessor: &str) -> Identity {
        Identity {
            accessor: accessor.to_string(),
            rules: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.accessor == ANONYMOUS_ACCESSOR
    }

    pub fn allows(&self, resource: &str, name: &str, need: Access) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        let level = if GLOBAL.contains(&resource) {
            rules.global.get(resource).copied()
        } else {
            rules.level(resource, name)
        };
        level.is_some_and(|l| l.grants(need))
    }

    /// `Ok` or Consul's permission-denied text (acl/errors.go).
    pub fn check(&self, resource: &str, name: &str, need: Access) -> Result<(), String> {
        if self.allows(resource, name, need) {
            return Ok(());
        }
        Err(self.denied(resource, name, need))
    }

    pub fn check_key_write_prefix(&self, prefix: &str) -> Result<(), String> {
        match &self.rules {
            Some(rules) if !rules.write_prefix(prefix) => {
                Err(self.denied("key", prefix, Access::Write))
            }
            _ => Ok(()),
        }
    }

    fn denied(&self, resource: &str, name: &str, need: Access) -> String {
        let on = if GLOBAL.contains(&resource) {
            String::new()
        } else {
            format!(" on {name:?}")
        };
        let need = need.as_str();
        if self.is_anonymous() {
            return format!(
                "Permission denied: anonymous token lacks permission '{resource}:{need}'{on}. \
                 The anonymous token is used implicitly when a request does not specify a token."
            );
        }
        format!(
            "Permission denied: token with AccessorID '{}' lacks permission '{resource}:{need}'{on}",
            self.accessor
        )
    }
}

/// The request's identity as the guard resolved it; `None` while ACLs are disabled, when
/// everything is allowed. Handlers get it as an axum `Extension`.
#[derive(Clone, Debug)]
pub(crate) struct Authz(pub Option<Arc<Identity>>);

impl Authz {
    pub fn allows(&self, resource: &str, name: &str, need: Access) -> bool {
        self.0
            .as_ref()
            .is_none_or(|id| id.allows(resource, name, need))
    }

    /// `Ok`, or Consul's 403 with its permission-denied text.
    pub fn check(&self, resource: &str, name: &str, need: Access) -> Result<(), ApiError> {
        match &self.0 {
            Some(id) => id.check(resource, name, need).map_err(forbidden),
            None => Ok(()),
        }
    }

    pub fn check_key_write_prefix(&self, prefix: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(id) => id.check_key_write_prefix(prefix).map_err(forbidden),
            None => Ok(()),
        }
    }

    /// The text a transaction op is refused with, if it is.
    pub fn denied(&self, resource: &str, name: &str, need: Access) -> Option<String> {
        self.0.as_ref()?.check(resource, name, need).err()
    }

    pub fn denied_key_write_prefix(&self, prefix: &str) -> Option<String> {
        self.0.as_ref()?.check_key_write_prefix(prefix).err()
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.0.as_deref()
    }

    /// Whether a filtered answer says so: Consul sets `X-Consul-Results-Filtered-By-ACLs`
    /// only for a request with a token, so the anonymous one learns nothing of what exists.
    pub fn reports_filtering(&self) -> bool {
        self.0.as_ref().is_some_and(|id| !id.is_anonymous())
    }
}

pub(crate) fn forbidden(text: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, text)
}

#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules_text: String,
    pub rules: Rules,
    pub datacenters: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Policy {
    pub fn to_json(&self, with_rules: bool) -> Value {
        let mut v = json!({
            "ID": self.id,
            "Name": self.name,
            "Description": self.description,
            "Datacenters": if self.datacenters.is_empty() { Value::Null } else { json!(self.datacenters) },
            "Hash": hash(&[&self.name, &self.description, &self.rules_text]),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        });
        if with_rules {
            v["Rules"] = json!(self.rules_text);
        }
        v
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub accessor: String,
    pub secret: String,
    pub description: String,
    /// Policy IDs, in the order given.
    pub policies: Vec<String>,
    pub local: bool,
    pub create_time: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The ACL tables, present when ACLs are enabled.
#[derive(Debug)]
pub(crate) struct Acl {
    pub policies: BTreeMap<String, Policy>,
    /// By accessor ID.
    pub tokens: BTreeMap<String, Token>,
}

impl Acl {
    /// The builtin policy, the anonymous token (no policies: default deny) and the initial
    /// management token with the configured secret.
    pub fn new(management_secret: &str, index: u64) -> Acl {
        let mut acl = Acl {
            policies: BTreeMap::new(),
            tokens: BTreeMap::new(),
        };
        acl.policies.insert(
            GLOBAL_MANAGEMENT_ID.to_string(),
            Policy {
                id: GLOBAL_MANAGEMENT_ID.to_string(),
                name: "global-management".to_string(),
                description: "Builtin Policy that grants unlimited access".to_string(),
                rules_text: GLOBAL_MANAGEMENT_RULES.to_string(),
                rules: Rules::default(),
                datacenters: Vec::new(),
                create_index: index,
                modify_index: index,
            },
        );
        for (accessor, secret, description, policies) in [
            (
                ANONYMOUS_ACCESSOR.to_string(),
                "anonymous",
                "Anonymous Token",
                vec![],
            ),
            (
                ids::uuid(),
                management_secret,
                "Initial Management Token",
                vec![GLOBAL_MANAGEMENT_ID.to_string()],
            ),
        ] {
            acl.tokens.insert(
                accessor.clone(),
                Token {
                    accessor,
                    secret: secret.to_string(),
                    description: description.to_string(),
                    policies,
                    local: false,
                    create_time: now_rfc3339(),
                    create_index: index,
                    modify_index: index,
                },
            );
        }
        acl
    }

    /// The identity of a presented secret: none or "" is the anonymous token; an unknown
    /// secret is `Err("ACL not found")`.
    pub fn resolve(&self, secret: Option<&str>) -> Result<Identity, String> {
        let token = match secret.filter(|s| !s.is_empty()) {
            None => self.tokens.get(ANONYMOUS_ACCESSOR),
            Some(secret) => self.tokens.values().find(|t| t.secret == secret),
        }
        .ok_or_else(|| "ACL not found".to_string())?;
        Ok(self.identity(token))
    }

    pub fn identity(&self, token: &Token) -> Identity {
        if token.policies.iter().any(|p| p == GLOBAL_MANAGEMENT_ID) {
            return Identity::management(&token.accessor);
        }
        let mut rules = Rules::default();
        for id in &token.policies {
            // A deleted policy's link is ignored, as Consul does.
            if let Some(policy) = self.policies.get(id) {
                rules.merge(&policy.rules);
            }
        }
        Identity {
            accessor: token.accessor.clone(),
            rules: Some(rules),
        }
    }

    pub fn policy_by_name(&self, name: &str) -> Option<&Policy> {
        self.policies.values().find(|p| p.name == name)
    }

    pub fn token_json(&self, token: &Token) -> Value {
        let policies: Vec<Value> = token
            .policies
            .iter()
            .filter_map(|id| self.policies.get(id))
            .map(|p| json!({ "ID": p.id, "Name": p.name }))
            .collect();
        json!({
            "AccessorID": token.accessor,
            "SecretID": token.secret,
            "Description": token.description,
            "Policies": if policies.is_empty() { Value::Null } else { Value::Array(policies) },
            "Local": token.local,
            "CreateTime": token.create_time,
            "Hash": hash(&[&token.description, &token.policies.join(",")]),
            "CreateIndex": token.create_index,
            "ModifyIndex": token.modify_index,
        })
    }
}

/// A content hash as Consul returns one (base64 of a digest); only equality matters.
fn hash(parts: &[&str]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    base64::engine::general_purpose::STANDARD.encode(&h.finalize()[..16])
}

/// Seconds since the epoch as RFC 3339 UTC (no date crate needed for a label).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(rules: &str) -> Identity {
        Identity {
            accessor: "acc".into(),
            rules: Some(Rules::parse(rules).expect("rules parse")),
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_exact_rules_beat_prefixes() {
        let id = identity(
            r#"
key_prefix "" { policy = "read" }
key_prefix "app/" { policy = "write" }
key_prefix "app/secret/" { policy = "deny" }
key "app/secret/ok" { policy = "read" }
session_prefix "" { policy = "write" }
"#,
        );
        assert!(id.allows("key", "other", Access::Read));
        assert!(!id.allows("key", "other", Access::Write));
        assert!(id.allows("key", "app/x", Access::Write));
        assert!(!id.allows("key", "app/secret/x", Access::Read));
        assert!(id.allows("key", "app/secret/ok", Access::Read));
        assert!(!id.allows("key", "app/secret/ok", Access::Write));
        assert!(id.allows("session", "node-1", Access::Write));
        assert!(!id.allows("node", "node-1", Access::Read));
        assert!(!id.allows("acl", "", Access::Read));
        assert_eq!(
            id.check("key", "b", Access::Write).unwrap_err(),
            "Permission denied: token with AccessorID 'acc' lacks permission 'key:write' on \"b\""
        );
        assert!(id.check_key_write_prefix("app/").is_err());
    }

    #[test]
    fn json_rules_and_merged_policies() {
        let mut rules =
            Rules::parse(r#"{"key_prefix": {"a/": {"policy": "write"}}, "acl": "read"}"#)
                .expect("json rules");
        rules.merge(&Rules::parse(r#"key_prefix "a/" { policy = "deny" }"#).expect("hcl"));
        let id = Identity {
            accessor: "x".into(),
            rules: Some(rules),
        };
        assert!(!id.allows("key", "a/b", Access::Read), "deny wins a merge");
        assert!(id.allows("acl", "", Access::Read));
        assert!(Rules::parse("key_prefix \"a\" { policy = \"maybe\" }").is_err());
        assert!(Rules::parse("colour = \"write\"").is_err());
    }
}
