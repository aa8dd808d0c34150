//! The service's one error type and its gRPC status.

use sea_orm::{DbErr, RuntimeErr};
use tonic::{Code, Status};

/// Everything the domain, the store and the gRPC services can refuse or fail with.
///
/// The message of each variant is safe to show to the caller; internal detail
/// travels in `Unavailable` and `Internal`, is logged, and never leaves.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QuotaError {
    /// No `authorization` metadata.
    #[error("missing API key: send the header `Authorization: Bearer sk-...`")]
    MissingCredential,
    /// `authorization` present but not `Bearer <credential>`.
    #[error("malformed Authorization header: expected `Bearer <key>`")]
    MalformedAuthorization,
    /// The key is not `sk-` and 48 base62 characters.
    #[error("malformed API key: expected `sk-` followed by 48 letters and digits")]
    MalformedKey,
    /// No token has this key.
    #[error("invalid API key: no such key")]
    UnknownKey,
    /// The caller's own key is disabled.
    #[error("API key is disabled")]
    DisabledKey,
    /// The caller's own key has expired.
    #[error("API key has expired")]
    ExpiredKey,
    /// The admin credential is wrong.
    #[error("invalid admin credential")]
    InvalidAdminCredential,
    /// A user key was sent to an admin method.
    #[error("this method needs the admin credential, not an API key")]
    NotAdmin,
    /// `QUOTA_ADMIN_TOKEN` is not configured: admin methods are closed.
    #[error("admin methods are disabled: QUOTA_ADMIN_TOKEN is not set on the server")]
    AdminDisabled,
    /// A malformed request field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A malformed usage date.
    #[error("{message}")]
    InvalidDate {
        /// `start_date` or `end_date`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The addressed token does not exist.
    #[error("token not found")]
    TokenNotFound,
    /// The addressed token is disabled (for a debit).
    #[error("token is disabled")]
    TokenDisabled,
    /// The addressed token has expired (for a debit).
    #[error("token has expired")]
    TokenExpired,
    /// The debit would overspend the token.
    #[error("insufficient quota: {remaining} units remaining, {requested} requested")]
    QuotaExhausted {
        /// Units left.
        remaining: i64,
        /// Units asked for.
        requested: i64,
    },
    /// The database cannot be reached.
    #[error("service unavailable: the database cannot be reached")]
    Unavailable(String),
    /// The database or the token is too busy right now (a lock wait timed
    /// out, a deadlock was broken, too many debits wait): try again.
    #[error("service busy: try again")]
    Busy(String),
    /// Anything else; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl From<DbErr> for QuotaError {
    fn from(err: DbErr) -> Self {
        if is_unreachable(&err) {
            QuotaError::Unavailable(err.to_string())
        } else if is_transient(&err) {
            QuotaError::Busy(err.to_string())
        } else {
            QuotaError::Internal(err.to_string())
        }
    }
}

/// Errors that say "not now" rather than "wrong": lock and statement
/// timeouts, broken deadlocks and serialization failures (PostgreSQL),
/// lock wait timeouts and deadlocks (MySQL), a busy or locked database (SQLite).
fn is_transient(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let sea_orm::sqlx::Error::Database(db) = e.as_ref() else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        Some("55P03" | "57014" | "40001" | "40P01" | "1205" | "1213" | "5" | "6" | "517" | "261")
    )
}

fn is_unreachable(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match err {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_) => true,
                // PostgreSQL shutting down or starting up, or a connection exception.
                Sqlx::Database(db) => db.code().is_some_and(|c| {
                    matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

impl From<QuotaError> for Status {
    fn from(err: QuotaError) -> Self {
        use QuotaError::*;
        let code = match &err {
            MissingCredential
            | MalformedAuthorization
            | MalformedKey
            | UnknownKey
            | DisabledKey
            | ExpiredKey
            | InvalidAdminCredential => Code::Unauthenticated,
            NotAdmin | AdminDisabled => Code::PermissionDenied,
            InvalidArgument(_) | InvalidDate { .. } => Code::InvalidArgument,
            TokenNotFound => Code::NotFound,
            TokenDisabled | TokenExpired => Code::FailedPrecondition,
            QuotaExhausted { .. } => Code::ResourceExhausted,
            Unavailable(detail) => {
                tracing::error!(%detail, "database unreachable");
                Code::Unavailable
            }
            Busy(detail) => {
                tracing::warn!(%detail, "busy");
                Code::Unavailable
            }
            Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Code::Internal
            }
        };
        let mut status = Status::new(code, err.to_string());
        if let InvalidDate { field, .. } = err {
            status.metadata_mut().insert(
                quota::PARAM_METADATA,
                tonic::metadata::MetadataValue::from_static(field),
            );
        }
        status
    }
}
