//! Who is calling: the bearer credential in the `authorization` metadata.
//!
//! Admin authentication is [`AdminCredential::check`], and only it: the
//! whole `TokenAdmin` service passes through it as an interceptor
//! ([`AdminCredential`] implements [`Interceptor`]), and the admin methods of
//! `QuotaService` (`Consume`) call it through `QuotaApi::require_admin`.

use crate::domain::{KeyDigest, QuotaError, TokenKey};
use crate::grpc::to_status;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The credential of `authorization: Bearer <credential>`; the scheme is
/// case-insensitive, as HTTP has it. More than one value is refused.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, QuotaError> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or(QuotaError::MissingCredential)?;
    if values.next().is_some() {
        return Err(QuotaError::RepeatedAuthorization);
    }
    let value = value
        .to_str()
        .map_err(|_| QuotaError::MalformedAuthorization)?;
    let (scheme, credential) = value
        .trim()
        .split_once(' ')
        .ok_or(QuotaError::MalformedAuthorization)?;
    let credential = credential.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(QuotaError::MalformedAuthorization);
    }
    Ok(credential)
}

/// The caller's own API key, as user methods take it.
pub fn caller_key(metadata: &MetadataMap) -> Result<TokenKey, QuotaError> {
    TokenKey::parse(bearer(metadata)?)
}

/// The admin credential (`QUOTA_ADMIN_TOKEN`), kept only as its digest.
#[derive(Clone, Debug, Default)]
pub struct AdminCredential(Option<KeyDigest>);

impl AdminCredential {
    /// From the configured secret; `None` or an empty one closes the admin methods.
    pub fn new(secret: Option<&str>) -> AdminCredential {
        AdminCredential(secret.filter(|s| !s.is_empty()).map(KeyDigest::of))
    }

    /// True when no secret is configured: the admin methods refuse everyone.
    pub fn is_closed(&self) -> bool {
        self.0.is_none()
    }

    /// Admits the caller only with the admin credential. Digests are compared
    /// in constant time, so timing says nothing about the secret.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), QuotaError> {
        let credential = bearer(metadata).map_err(|e| match e {
            QuotaError::MissingCredential => QuotaError::MissingAdminCredential,
            other => other,
        })?;
        let expected = self.0.as_ref().ok_or(QuotaError::AdminDisabled)?;
        let given = KeyDigest::of(credential);
        if bool::from(
            given
                .as_str()
                .as_bytes()
                .ct_eq(expected.as_str().as_bytes()),
        ) {
            Ok(())
        } else if TokenKey::parse(credential).is_ok() {
            Err(QuotaError::NotAdmin)
        } else {
            Err(QuotaError::InvalidAdminCredential)
        }
    }
}

/// Admits to a whole service (`TokenAdmin`) only callers with the admin
/// credential; refusals are the statuses of [`AdminCredential::check`].
impl Interceptor for AdminCredential {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(request.metadata()) {
            Ok(()) => Ok(request),
            Err(err) => Err(to_status(err, "quota.v1.TokenAdmin")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc", " Bearer abc "] {
            assert_eq!(bearer(&with_auth(v)).unwrap(), "abc", "{v:?}");
        }
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        assert!(matches!(
            bearer(&MetadataMap::new()),
            Err(QuotaError::MissingCredential)
        ));
        for v in ["abc", "Basic abc", "Bearer", "Bearer ", "Token abc"] {
            assert!(
                matches!(
                    bearer(&with_auth(v)),
                    Err(QuotaError::MalformedAuthorization)
                ),
                "{v:?}"
            );
        }
    }

    #[test]
    fn admin_credential_admits_only_the_secret() {
        let admin = AdminCredential::new(Some("s3cret"));
        assert!(admin.check(&with_auth("Bearer s3cret")).is_ok());
        assert!(matches!(
            admin.check(&with_auth("Bearer wrong")),
            Err(QuotaError::InvalidAdminCredential)
        ));
        let user = TokenKey::generate().unwrap();
        let as_user = with_auth(&format!("Bearer {}", user.expose()));
        assert!(matches!(admin.check(&as_user), Err(QuotaError::NotAdmin)));
        assert!(matches!(
            admin.check(&MetadataMap::new()),
            Err(QuotaError::MissingAdminCredential)
        ));
        // Not told to send a user's key.
        let missing = admin.check(&MetadataMap::new()).unwrap_err().to_string();
        assert!(missing.contains("QUOTA_ADMIN_TOKEN"), "{missing}");
    }

    #[test]
    fn unset_admin_credential_refuses_everything() {
        for admin in [AdminCredential::new(None), AdminCredential::new(Some(""))] {
            assert!(matches!(
                admin.check(&with_auth("Bearer ")),
                Err(QuotaError::MalformedAuthorization)
            ));
            assert!(matches!(
                admin.check(&with_auth("Bearer anything")),
                Err(QuotaError::AdminDisabled)
            ));
        }
    }
}
