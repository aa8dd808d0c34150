//! What the domain, the store and the services refuse or fail with, in the
//! domain's terms: no transport and no database here. The store turns its
//! database errors into these (`store::error`); the gRPC layer alone turns
//! them into statuses (`grpc::status`).

/// Everything the domain, the store and the gRPC services can refuse or fail with.
///
/// The message of each variant is safe to show to the caller; internal detail
/// travels in `Unavailable`, `Busy` and `Internal`, is logged once where the
/// request is answered, and never leaves.
///
/// `CallerKey*` refuse the caller's own credential (UNAUTHENTICATED);
/// `Token*` refuse the token a request addresses (NOT_FOUND,
/// FAILED_PRECONDITION).
#[derive(Clone, Debug, thiserror::Error)]
pub enum QuotaError {
    /// No `authorization` metadata.
    #[error("missing API key: send the header `Authorization: Bearer sk-...`")]
    MissingCredential,
    /// No `authorization` metadata on a call that takes the admin credential.
    #[error(
        "missing admin credential: send the metadata `authorization: Bearer <QUOTA_ADMIN_TOKEN>`"
    )]
    MissingAdminCredential,
    /// `authorization` present but not `Bearer <credential>`.
    #[error("malformed Authorization header: expected `Bearer <key>`")]
    MalformedAuthorization,
    /// More than one `authorization` value: which is the caller's is not
    /// for the service to guess.
    #[error("more than one authorization value: send one, `Bearer <key>`")]
    RepeatedAuthorization,
    /// The key is not `sk-` and 48 base62 characters.
    #[error("malformed API key: expected `sk-` followed by 48 letters and digits")]
    MalformedKey,
    /// No token has the key the caller authenticates with.
    #[error("invalid API key: no such key")]
    CallerKeyUnknown,
    /// The key the caller authenticates with is disabled.
    #[error("API key is disabled")]
    CallerKeyDisabled,
    /// The key the caller authenticates with has expired.
    #[error("API key has expired")]
    CallerKeyExpired,
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
    /// The token a request addresses (not the caller's own key) does not exist.
    #[error("token not found")]
    TokenNotFound,
    /// The token a debit addresses is disabled.
    #[error("token is disabled")]
    TokenDisabled,
    /// The token a debit addresses has expired.
    #[error("token has expired")]
    TokenExpired,
    /// The debit would overspend the token.
    #[error(
        "insufficient quota: {spendable} units spendable (remaining less held), {requested} requested"
    )]
    QuotaExhausted {
        /// Units the token may still spend: `remaining` less its unexpired holds.
        spendable: i64,
        /// Units asked for.
        requested: i64,
    },
    /// The request id already names something else of this token: a Consume
    /// debit (for a hold call) or a hold (for Consume).
    #[error("request_id already names {0} of this token")]
    RequestIdInUse(&'static str),
    /// No hold of this token has the request id.
    #[error("no hold of this token has this request_id")]
    HoldNotFound,
    /// The hold expired before this call.
    #[error("the hold has expired")]
    HoldExpired,
    /// The hold was released.
    #[error("the hold was released")]
    HoldReleased,
    /// The hold was settled.
    #[error("the hold was settled")]
    HoldSettled,
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
