//! Authentication: user keys on user methods, the admin credential on admin methods.

use crate::helpers::*;

on_every_database!(
    user_methods_refuse_bad_credentials,
    user_methods_refuse_bad_credentials
);
async fn user_methods_refuse_bad_credentials(db: TestDb) {
    let api = Api::start(db).await;
    let (disabled, disabled_key) = api.create_units(1_000).await;
    api.disable(disabled.id).await;
    let (_, expired_key) = api
        .create(pb::CreateTokenRequest {
            quota: 1_000,
            expires_at: 1,
            ..Default::default()
        })
        .await;

    let unknown = unknown_key();
    let cases = [
        ("no metadata", None),
        ("Basic scheme", Some("Basic x".to_owned())),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("malformed key", Some("Bearer sk-short".to_owned())),
        ("admin secret", Some(format!("Bearer {TEST_ADMIN_TOKEN}"))),
        ("unknown key", Some(format!("Bearer {unknown}"))),
        ("disabled key", Some(format!("Bearer {disabled_key}"))),
        ("expired key", Some(format!("Bearer {expired_key}"))),
    ];
    for (case, value) in cases {
        let sub = api
            .quota()
            .get_subscription(with_authorization(
                pb::GetSubscriptionRequest {},
                value.as_deref(),
            ))
            .await;
        let usage = api
            .quota()
            .get_usage(with_authorization(
                pb::GetUsageRequest::default(),
                value.as_deref(),
            ))
            .await;
        for (method, result) in [
            ("GetSubscription", sub.map(|_| ())),
            ("GetUsage", usage.map(|_| ())),
        ] {
            let status = result.expect_err(case);
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method}, {case}: {status:?}"
            );
            // The key never comes back in an error.
            assert!(!status.message().contains(&unknown[7..]), "{status:?}");
            assert!(!status.message().contains(&disabled_key[7..]), "{status:?}");
        }
    }

    // Two `authorization` values, even a good key twice: which one is the
    // caller's is not the service's to guess.
    let (_, good_key) = api.create_units(1_000).await;
    let good = format!("Bearer {good_key}");
    for other in [format!("Bearer {unknown}"), good.clone()] {
        let mut request = with_authorization(pb::GetSubscriptionRequest {}, Some(&good));
        request
            .metadata_mut()
            .append("authorization", other.parse().unwrap());
        let status = api.quota().get_subscription(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("more than one"), "{status:?}");
        let mut request = as_admin(pb::ListTokensRequest::default());
        request
            .metadata_mut()
            .append("authorization", other.parse().unwrap());
        let status = api.admin().list_tokens(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let one = with_authorization(pb::GetSubscriptionRequest {}, Some(&good));
    api.quota().get_subscription(one).await.unwrap();
}

/// The code of a call: `Ok` when it succeeded.
fn code_or_ok<T>(result: Result<tonic::Response<T>, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// The codes of every admin method, Consume and the hold methods, called
/// with the `authorization` metadata `value` and otherwise valid requests
/// for `key`.
async fn codes_of_admin_methods(
    api: &Api,
    value: Option<&str>,
    key: &str,
) -> Vec<(&'static str, Code)> {
    let create = pb::CreateTokenRequest {
        quota: 1,
        ..Default::default()
    };
    let get = pb::GetTokenRequest { token: by_key(key) };
    let list = pb::ListTokensRequest::default();
    let grant = pb::GrantQuotaRequest {
        token: by_key(key),
        quota: 1,
        ..Default::default()
    };
    let update = pb::UpdateTokenRequest {
        token: by_key(key),
        name: Some("changed".into()),
        ..Default::default()
    };
    let delete = pb::DeleteTokenRequest { token: by_key(key) };
    let consume = pb::ConsumeRequest {
        token: key.into(),
        quota: 1,
        request_id: String::new(),
    };
    let reserve = pb::ReserveRequest {
        token: key.into(),
        quota: 1,
        request_id: "hold".into(),
        ttl_seconds: 0,
    };
    let settle = pb::SettleRequest {
        token: key.into(),
        request_id: "hold".into(),
        quota: 1,
    };
    let release = pb::ReleaseRequest {
        token: key.into(),
        request_id: "hold".into(),
    };
    let mut admin = api.admin();
    let mut quota = api.quota();
    vec![
        (
            "CreateToken",
            code_or_ok(admin.create_token(with_authorization(create, value)).await),
        ),
        (
            "GetToken",
            code_or_ok(admin.get_token(with_authorization(get, value)).await),
        ),
        (
            "ListTokens",
            code_or_ok(admin.list_tokens(with_authorization(list, value)).await),
        ),
        (
            "GrantQuota",
            code_or_ok(admin.grant_quota(with_authorization(grant, value)).await),
        ),
        (
            "UpdateToken",
            code_or_ok(admin.update_token(with_authorization(update, value)).await),
        ),
        (
            "DeleteToken",
            code_or_ok(admin.delete_token(with_authorization(delete, value)).await),
        ),
        (
            "Consume",
            code_or_ok(quota.consume(with_authorization(consume, value)).await),
        ),
        (
            "Reserve",
            code_or_ok(quota.reserve(with_authorization(reserve, value)).await),
        ),
        (
            "Settle",
            code_or_ok(quota.settle(with_authorization(settle, value)).await),
        ),
        (
            "Release",
            code_or_ok(quota.release(with_authorization(release, value)).await),
        ),
    ]
}

fn assert_all(codes: &[(&str, Code)], expected: Code, case: &str) {
    assert!(
        codes.iter().all(|(_, code)| *code == expected),
        "{case}: expected {expected:?} from every method, got {codes:?}"
    );
}

on_every_database!(
    admin_methods_need_the_admin_credential,
    admin_methods_need_the_admin_credential
);
async fn admin_methods_need_the_admin_credential(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api.create_units(1_000).await;

    let none = codes_of_admin_methods(&api, None, &key).await;
    assert_all(&none, Code::Unauthenticated, "no credential");
    let basic = codes_of_admin_methods(&api, Some("Basic x"), &key).await;
    assert_all(&basic, Code::Unauthenticated, "Basic scheme");
    let wrong = codes_of_admin_methods(&api, Some("Bearer wrong-secret"), &key).await;
    assert_all(&wrong, Code::Unauthenticated, "wrong secret");
    let user = codes_of_admin_methods(&api, Some(&format!("Bearer {key}")), &key).await;
    assert_all(&user, Code::PermissionDenied, "user key");

    // Nothing of it reached the token.
    let after = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!(
        (after.remaining, after.used, after.held, after.name.as_str()),
        (1_000, 0, 0, "")
    );
    assert_eq!(api.list(0, "").await.unwrap().tokens.len(), 1);

    // The scheme is case-insensitive.
    let lower = api
        .admin()
        .get_token(with_authorization(
            pb::GetTokenRequest {
                token: by_id(tok.id),
            },
            Some(&format!("bearer {TEST_ADMIN_TOKEN}")),
        ))
        .await
        .unwrap();
    assert_eq!(lower.into_inner().id, tok.id);
}

on_every_database!(
    without_admin_token_admin_methods_are_closed,
    without_admin_token_admin_methods_are_closed
);
async fn without_admin_token_admin_methods_are_closed(db: TestDb) {
    let (_, key) = db
        .store()
        .await
        .create_token(
            NewToken {
                quota: 2_500_000,
                ..NewToken::default()
            },
            unix_now(),
        )
        .await
        .unwrap();
    let key = key.expose().to_owned();
    let api = Api::start_with(db, ServiceConfig::default()).await;

    for credential in ["anything", TEST_ADMIN_TOKEN, "", key.as_str()] {
        let value = format!("Bearer {credential}");
        let codes = codes_of_admin_methods(&api, Some(&value), &key).await;
        let expected = if credential.is_empty() {
            Code::Unauthenticated
        } else {
            Code::PermissionDenied
        };
        assert_all(&codes, expected, &value);
    }
    let none = codes_of_admin_methods(&api, None, &key).await;
    assert_all(&none, Code::Unauthenticated, "no credential");

    // The key's holder is still served, and nothing was debited or held.
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (sub.hard_limit_usd, sub.used_units, sub.held_units),
        (5, 0, 0)
    );
}
