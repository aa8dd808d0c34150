//! What `token` commands print: text for people, or JSON for programs
//! (`--output json`).

use quota::pb;
use quota_service::domain::Balance;
use serde::Serialize;
use std::fmt::Display;
use std::io::{self, Write};

/// Writes `line` and a newline on stdout. Its error is returned, not a
/// panic as `println!` makes of it: a reader that stopped early
/// (`quotad token list | head -1`) closes the pipe, and the command then
/// ends quietly ([`stopped_reading`]).
pub fn print_line(line: impl Display) -> Result<(), StdoutFailed> {
    writeln!(io::stdout().lock(), "{line}").map_err(StdoutFailed)
}

/// A write to stdout that failed: told apart from every other I/O error,
/// so that only stdout's reader gone ends a command quietly.
#[derive(Debug)]
pub struct StdoutFailed(pub io::Error);

impl std::fmt::Display for StdoutFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `println!` through [`print_line`], its error returned with `?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print_line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;

/// True when `e` is stdout's reader gone: nothing to report, to no one.
pub fn stopped_reading(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutFailed>()
        .is_some_and(|failed| failed.0.kind() == io::ErrorKind::BrokenPipe)
}

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
