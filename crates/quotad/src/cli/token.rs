//! The `token` subcommands and their quota arguments.

use clap::{Args, Subcommand};

/// The `token` subcommands. KEY|ID is a key (sk-...) or a numeric id.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a key. The key alone is printed on stdout, once; details go to stderr.
    Create {
        /// A name to recognise the key by: at most 255 bytes, no control characters.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        quota: CreateQuota,
        /// Expiry: unix seconds or RFC 3339 (2027-01-01T00:00:00Z), up to the end of 9999.
        #[arg(long, value_name = "UNIX|RFC3339")]
        expires_at: Option<String>,
    },
    /// Add quota to a key; its limit grows by exactly the grant.
    Grant {
        /// The key (sk-...) or its id.
        #[arg(value_name = "KEY|ID")]
        token: String,
        #[command(flatten)]
        quota: GrantQuota,
    },
    /// List every key.
    List,
    /// Show one key.
    Show {
        /// The key (sk-...) or its id.
        #[arg(value_name = "KEY|ID")]
        token: String,
    },
    /// Disable a key: it is refused everywhere until enabled.
    Disable {
        /// The key (sk-...) or its id.
        #[arg(value_name = "KEY|ID")]
        token: String,
    },
    /// Enable a disabled key.
    Enable {
        /// The key (sk-...) or its id.
        #[arg(value_name = "KEY|ID")]
        token: String,
    },
    /// Delete a key and its ledger.
    Delete {
        /// The key (sk-...) or its id.
        #[arg(value_name = "KEY|ID")]
        token: String,
    },
}

/// The quota of a new key: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CreateQuota {
    /// Quota in US dollars, e.g. 5 or 0.25.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub quota_usd: Option<String>,
    /// Quota in units (QUOTA_PER_USD units make one dollar).
    #[arg(long, value_name = "UNITS", allow_negative_numbers = true)]
    pub quota: Option<i64>,
    /// Never refused for quota; spend is still recorded.
    #[arg(long)]
    pub unlimited: bool,
}

/// The amount of a grant: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct GrantQuota {
    /// Dollars to add, e.g. 5 or 0.25.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub quota_usd: Option<String>,
    /// Units to add.
    #[arg(long, value_name = "UNITS", allow_negative_numbers = true)]
    pub quota: Option<i64>,
}
