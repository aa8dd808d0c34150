//! `quotad verify`: the counters of every token against its ledger.

use crate::cli::{DatabaseArgs, LogFormat};
use quota_service::store::redact_url;
use quota_service::store::verify::verify_url;
use std::process::ExitCode;

/// Some token's counters disagree with its ledger.
const DISAGREE: u8 = 1;
/// The database could not be read.
const UNREADABLE: u8 = 2;

/// Prints one line per disagreement on stdout, then a summary; exits 0 when
/// everything agrees, 1 when something disagrees, 2 (with one line on
/// stderr) when the database cannot be read. Nothing is created or migrated.
pub async fn run(db: &DatabaseArgs, log_format: LogFormat) -> ExitCode {
    let found = match verify_url(&db.database_url).await {
        Ok(found) => found,
        Err(e) => {
            let url = redact_url(&db.database_url);
            let message = format!("quotad verify: cannot read the database {url}: {e}");
            crate::telemetry::fatal(log_format, &message);
            return ExitCode::from(UNREADABLE);
        }
    };
    let bad = found.disagreeing.len();
    let summary = format!(
        "{} tokens checked: {} agree with their ledger, {bad} disagree",
        found.tokens,
        found.tokens - bad as u64
    );
    // A reader that stops early (`| head`) changes nothing of the verdict.
    let _ = found
        .disagreeing
        .iter()
        .flat_map(|check| check.disagreements())
        .chain([summary])
        .try_for_each(crate::output::print_line);
    if found.agrees() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DISAGREE)
    }
}
