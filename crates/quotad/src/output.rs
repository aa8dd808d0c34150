//! What `token` commands print: text for people, or JSON for programs
//! (`--output json`).

use quota::pb;
use quota_service::domain::Balance;
use serde::Serialize;

/// One token as `--output json` prints it.
#[derive(Debug, Serialize)]
pub struct TokenJson<'a> {
    /// Numeric id.
    id: i64,
    /// Display prefix (`sk-AbCd…`).
    prefix: &'a str,
    /// Free-form name.
    name: &'a str,
    /// `enabled` or `disabled`.
    status: &'static str,
    /// Never refused for quota.
    unlimited: bool,
    /// Units it may still spend.
    remaining: i64,
    /// Units spent.
    used: i64,
    /// Units of its unexpired holds (`Reserve`), not yet settled or released.
    held: i64,
    /// remaining + used: the sum of its grants.
    limit: i64,
    /// Unix seconds, or null when it never expires.
    expires_at: Option<i64>,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds.
    updated_at: i64,
}

impl<'a> From<&'a pb::Token> for TokenJson<'a> {
    fn from(t: &'a pb::Token) -> Self {
        let balance = Balance {
            remaining: t.remaining,
            used: t.used,
            unlimited: t.unlimited,
        };
        TokenJson {
            id: t.id,
            prefix: &t.display_prefix,
            name: &t.name,
            status: if t.enabled { "enabled" } else { "disabled" },
            unlimited: t.unlimited,
            remaining: t.remaining,
            used: t.used,
            held: t.held,
            limit: balance.limit_units(),
            expires_at: (t.expires_at != 0).then_some(t.expires_at),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// What `token create --output json` prints: the key (shown this once) and the token.
#[derive(Debug, Serialize)]
pub struct CreatedJson<'a> {
    /// The plaintext key.
    pub key: &'a str,
    /// The new token.
    pub token: Option<TokenJson<'a>>,
}

/// One line of JSON (serializing these plain structs cannot fail).
pub fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}
