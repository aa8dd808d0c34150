//! The one place where a [`QuotaError`] becomes a gRPC [`Status`], and where
//! the detail of an internal failure is logged: once per request, in its
//! span, and never sent.

use crate::domain::QuotaError;
use std::borrow::Cow;
use std::future::Future;
use tonic::metadata::MetadataValue;
use tonic::{Code, Response, Status};

/// The status code of each error: one table.
fn code(err: &QuotaError) -> Code {
    use QuotaError::*;
    match err {
        MissingCredential
        | MissingAdminCredential
        | MalformedAuthorization
        | RepeatedAuthorization
        | MalformedKey
        | CallerKeyUnknown
        | CallerKeyDisabled
        | CallerKeyExpired
        | InvalidAdminCredential => Code::Unauthenticated,
        NotAdmin | AdminDisabled => Code::PermissionDenied,
        InvalidArgument(_) | InvalidDate { .. } => Code::InvalidArgument,
        TokenNotFound | HoldNotFound => Code::NotFound,
        TokenDisabled | TokenExpired | HoldExpired | HoldReleased | HoldSettled => {
            Code::FailedPrecondition
        }
        RequestIdInUse(_) => Code::AlreadyExists,
        QuotaExhausted { .. } => Code::ResourceExhausted,
        Unavailable(_) | Busy(_) => Code::Unavailable,
        Internal(_) => Code::Internal,
    }
}

/// The status answering `method` with `err`. Internal detail (an unreachable
/// or busy database, an internal failure) is logged here and only here; the
/// caller gets the variant's message, with any key in it cut to its display
/// prefix. A database away or busy is `warn` (the
/// service is not at fault, and comes back with it); an internal failure
/// is `error`.
pub(crate) fn to_status(err: QuotaError, method: &'static str) -> Status {
    match &err {
        QuotaError::Unavailable(detail) => {
            tracing::warn!(method, %detail, "database unreachable");
        }
        QuotaError::Busy(detail) => tracing::warn!(method, %detail, "busy"),
        QuotaError::Internal(detail) => tracing::error!(method, %detail, "internal error"),
        _ => {}
    }
    // A message may repeat what the caller sent (a date): never a key in it.
    let message = err.to_string();
    let message = match quota_telemetry::redact::keys(&message) {
        Cow::Borrowed(_) => message,
        Cow::Owned(redacted) => redacted,
    };
    let mut status = Status::new(code(&err), message);
    if let QuotaError::InvalidDate { field, .. } = err {
        status
            .metadata_mut()
            .insert(quota::PARAM_METADATA, MetadataValue::from_static(field));
    }
    status
}

/// Runs a handler's work and answers `method` with its result: the boundary
/// every gRPC method passes through.
pub(crate) async fn answer<T>(
    method: &'static str,
    work: impl Future<Output = Result<T, QuotaError>>,
) -> Result<Response<T>, Status> {
    work.await
        .map(Response::new)
        .map_err(|err| to_status(err, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_and_token_refusals_have_their_own_codes() {
        let code_of = |err| to_status(err, "Test").code();
        assert_eq!(code_of(QuotaError::CallerKeyUnknown), Code::Unauthenticated);
        assert_eq!(
            code_of(QuotaError::MissingAdminCredential),
            Code::Unauthenticated
        );
        assert_eq!(
            code_of(QuotaError::CallerKeyDisabled),
            Code::Unauthenticated
        );
        assert_eq!(code_of(QuotaError::TokenNotFound), Code::NotFound);
        assert_eq!(code_of(QuotaError::TokenDisabled), Code::FailedPrecondition);
        assert_eq!(code_of(QuotaError::Busy("x".into())), Code::Unavailable);
        let internal = to_status(QuotaError::Internal("secret detail".into()), "Test");
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("secret"));
    }

    /// The contract's Holds section: the table of each call on each state of
    /// its request id, and a hold's refusals, the same statuses as `Consume`.
    #[test]
    fn hold_refusals_have_the_codes_of_the_holds_table() {
        let code_of = |err| to_status(err, "Test").code();
        // An id unknown for the token: Settle and Release.
        assert_eq!(code_of(QuotaError::HoldNotFound), Code::NotFound);
        // An expired hold: Reserve.
        assert_eq!(code_of(QuotaError::HoldExpired), Code::FailedPrecondition);
        // A settled hold: Release.
        assert_eq!(code_of(QuotaError::HoldSettled), Code::FailedPrecondition);
        // A released hold: Reserve and Settle.
        assert_eq!(code_of(QuotaError::HoldReleased), Code::FailedPrecondition);
        // A `Consume` debit's id for a hold call, and a hold's id for `Consume`.
        for named in ["a debit", "a debit of Consume", "a hold"] {
            assert_eq!(
                code_of(QuotaError::RequestIdInUse(named)),
                Code::AlreadyExists,
                "{named}"
            );
        }
        // The token's refusals, as for `Consume`.
        let spent = QuotaError::QuotaExhausted {
            spendable: 0,
            requested: 1,
        };
        assert_eq!(code_of(spent), Code::ResourceExhausted);
        assert_eq!(code_of(QuotaError::TokenExpired), Code::FailedPrecondition);
        assert_eq!(code_of(QuotaError::TokenDisabled), Code::FailedPrecondition);
        assert_eq!(code_of(QuotaError::TokenNotFound), Code::NotFound);
    }
}
