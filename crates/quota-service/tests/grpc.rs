//! Integration tests of the gRPC API, through real tonic clients against a
//! server on a fresh port, on SQLite and PostgreSQL: `quota.v1.QuotaService`,
//! `quota.v1.TokenAdmin`, their authentication, server reflection (v1 and
//! v1alpha) and health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota::pb::token_admin_client::TokenAdminClient;
use quota::pb::token_ref::Ref;
use quota_service::ServiceConfig;
use quota_service::domain::{day_start, unix_now};
use quota_service::on_every_database;
use quota_service::store::NewToken;
use quota_service::testing::{TEST_ADMIN_TOKEN, TestDb, TestServer, test_config};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

// ---------------------------------------------------------------------------
// Helpers

/// A server on its own database, and a channel to it.
struct Api {
    _server: TestServer,
    channel: Channel,
    // Dropped last, after the server has been told to stop.
    _db: TestDb,
}

impl Api {
    /// A server with the test admin credential.
    async fn start(db: TestDb) -> Api {
        Api::start_with(db, test_config()).await
    }

    async fn start_with(db: TestDb, config: ServiceConfig) -> Api {
        let server = TestServer::spawn(db.store().await, config).await;
        let channel = Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server");
        Api {
            _server: server,
            channel,
            _db: db,
        }
    }

    fn quota(&self) -> QuotaServiceClient<Channel> {
        QuotaServiceClient::new(self.channel.clone())
    }

    fn admin(&self) -> TokenAdminClient<Channel> {
        TokenAdminClient::new(self.channel.clone())
    }

    /// Creates a token through the admin API: the token and its key.
    async fn create(&self, req: pb::CreateTokenRequest) -> (pb::Token, String) {
        let created = self
            .admin()
            .create_token(as_admin(req))
            .await
            .expect("CreateToken")
            .into_inner();
        (
            created.token.expect("CreateToken returns the token"),
            created.key,
        )
    }

    /// A limited token of `quota` units.
    async fn create_units(&self, quota: i64) -> (pb::Token, String) {
        self.create(pb::CreateTokenRequest {
            quota,
            ..Default::default()
        })
        .await
    }

    async fn subscription(&self, key: &str) -> Result<pb::Subscription, Status> {
        let req = bearer(pb::GetSubscriptionRequest {}, key);
        Ok(self.quota().get_subscription(req).await?.into_inner())
    }

    async fn usage(&self, key: &str, start: &str, end: &str) -> Result<pb::Usage, Status> {
        let req = bearer(
            pb::GetUsageRequest {
                start_date: start.into(),
                end_date: end.into(),
            },
            key,
        );
        Ok(self.quota().get_usage(req).await?.into_inner())
    }

    async fn consume(
        &self,
        key: &str,
        quota: i64,
        request_id: &str,
    ) -> Result<pb::ConsumeResponse, Status> {
        let req = as_admin(pb::ConsumeRequest {
            token: key.into(),
            quota,
            request_id: request_id.into(),
        });
        Ok(self.quota().consume(req).await?.into_inner())
    }

    async fn get(&self, token: Option<pb::TokenRef>) -> Result<pb::Token, Status> {
        let req = as_admin(pb::GetTokenRequest { token });
        Ok(self.admin().get_token(req).await?.into_inner())
    }

    async fn grant(&self, req: pb::GrantQuotaRequest) -> Result<pb::Token, Status> {
        Ok(self.admin().grant_quota(as_admin(req)).await?.into_inner())
    }

    async fn update(&self, req: pb::UpdateTokenRequest) -> Result<pb::Token, Status> {
        Ok(self.admin().update_token(as_admin(req)).await?.into_inner())
    }

    async fn list(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListTokensResponse, Status> {
        let req = as_admin(pb::ListTokensRequest {
            page_size,
            page_token: page_token.into(),
        });
        Ok(self.admin().list_tokens(req).await?.into_inner())
    }
}

/// `message` with the metadata `authorization: <value>`, or none.
fn with_authorization<T>(message: T, value: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(value) = value {
        req.metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    req
}

/// `message` with `authorization: Bearer <credential>`.
fn bearer<T>(message: T, credential: &str) -> Request<T> {
    with_authorization(message, Some(&format!("Bearer {credential}")))
}

/// `message` with the admin credential.
fn as_admin<T>(message: T) -> Request<T> {
    bearer(message, TEST_ADMIN_TOKEN)
}

fn by_id(id: i64) -> Option<pb::TokenRef> {
    Some(pb::TokenRef {
        r#ref: Some(Ref::Id(id)),
    })
}

fn by_key(key: &str) -> Option<pb::TokenRef> {
    Some(pb::TokenRef {
        r#ref: Some(Ref::Key(key.into())),
    })
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(ok) => panic!("expected an error status, got {ok:?}"),
        Err(status) => status.code(),
    }
}

/// A well-formed key that no token has.
fn unknown_key() -> String {
    format!("sk-{}", "Z".repeat(48))
}

// ---------------------------------------------------------------------------
// GetSubscription and the limit

on_every_database!(
    subscription_reports_the_limit_in_dollars,
    subscription_reports_the_limit_in_dollars
);
async fn subscription_reports_the_limit_in_dollars(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api
        .create(pb::CreateTokenRequest {
            name: "five".into(),
            quota_usd: "5".into(),
            ..Default::default()
        })
        .await;
    assert_eq!((tok.remaining, tok.used), (2_500_000, 0));

    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        sub,
        pb::Subscription {
            object: "billing_subscription".into(),
            has_payment_method: true,
            soft_limit_usd: 5,
            hard_limit_usd: 5,
            system_hard_limit_usd: 5,
            access_until: 0,
            limit_units: 2_500_000,
            remaining_units: 2_500_000,
            used_units: 0,
            unlimited: false,
        }
    );

    // A grant accumulates on the limit: 5 + 2 = 7.
    let granted = api
        .grant(pb::GrantQuotaRequest {
            token: by_key(&key),
            quota_usd: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(granted.remaining, 3_500_000);
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (
            sub.soft_limit_usd,
            sub.hard_limit_usd,
            sub.system_hard_limit_usd
        ),
        (7, 7, 7)
    );

    // Spending does not change the limit.
    api.consume(&key, 1_000_000, "").await.unwrap();
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (
            sub.soft_limit_usd,
            sub.hard_limit_usd,
            sub.system_hard_limit_usd
        ),
        (7, 7, 7)
    );
    assert_eq!(
        (sub.limit_units, sub.remaining_units, sub.used_units),
        (3_500_000, 2_500_000, 1_000_000)
    );

    // Half a dollar more: 7.5 is reported as 7 whole dollars.
    api.grant(pb::GrantQuotaRequest {
        token: by_id(tok.id),
        quota: 250_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!((sub.hard_limit_usd, sub.limit_units), (7, 3_750_000));
}

on_every_database!(
    subscription_of_unlimited_and_expiring_tokens,
    subscription_of_unlimited_and_expiring_tokens
);
async fn subscription_of_unlimited_and_expiring_tokens(db: TestDb) {
    let api = Api::start(db).await;
    let (_, unlimited) = api
        .create(pb::CreateTokenRequest {
            unlimited: true,
            ..Default::default()
        })
        .await;
    let sub = api.subscription(&unlimited).await.unwrap();
    assert_eq!(
        (
            sub.soft_limit_usd,
            sub.hard_limit_usd,
            sub.system_hard_limit_usd
        ),
        (100_000_000, 100_000_000, 100_000_000)
    );
    assert!(sub.unlimited);
    assert_eq!(sub.access_until, 0);

    let expires_at = unix_now() + 3_600;
    let (tok, expiring) = api
        .create(pb::CreateTokenRequest {
            quota_usd: "1".into(),
            expires_at,
            ..Default::default()
        })
        .await;
    assert_eq!(tok.expires_at, expires_at);
    let sub = api.subscription(&expiring).await.unwrap();
    assert_eq!((sub.access_until, sub.hard_limit_usd), (expires_at, 1));
}

// ---------------------------------------------------------------------------
// Authentication

on_every_database!(
    user_methods_refuse_bad_credentials,
    user_methods_refuse_bad_credentials
);
async fn user_methods_refuse_bad_credentials(db: TestDb) {
    let api = Api::start(db).await;
    let (disabled, disabled_key) = api.create_units(1_000).await;
    api.update(pb::UpdateTokenRequest {
        token: by_id(disabled.id),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
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
}

/// The code of a call: `Ok` when it succeeded.
fn code_or_ok<T>(result: Result<tonic::Response<T>, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// The codes of every admin method and of Consume, called with the
/// `authorization` metadata `value` and otherwise valid requests for `key`.
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
    let mut admin = api.admin();
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
            code_or_ok(
                api.quota()
                    .consume(with_authorization(consume, value))
                    .await,
            ),
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
        (after.remaining, after.used, after.name.as_str()),
        (1_000, 0, "")
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

    // The key's holder is still served, and nothing was debited.
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!((sub.hard_limit_usd, sub.used_units), (5, 0));
}

// ---------------------------------------------------------------------------
// TokenAdmin

on_every_database!(
    admin_creates_gets_updates_and_deletes,
    admin_creates_gets_updates_and_deletes
);
async fn admin_creates_gets_updates_and_deletes(db: TestDb) {
    let api = Api::start(db).await;
    let before = unix_now();
    let (tok, key) = api
        .create(pb::CreateTokenRequest {
            name: "alice".into(),
            quota: 1_000,
            ..Default::default()
        })
        .await;
    assert!(tok.id > 0);
    assert!(key.starts_with("sk-") && key.len() == 51, "{key:?}");
    assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(tok.display_prefix, format!("{}…", &key[..7]));
    assert_eq!(tok.name, "alice");
    assert_eq!((tok.remaining, tok.used, tok.unlimited), (1_000, 0, false));
    assert_eq!((tok.expires_at, tok.enabled), (0, true));
    assert!(tok.created_at >= before && tok.created_at <= unix_now());

    // By id and by key: the same token.
    assert_eq!(api.get(by_id(tok.id)).await.unwrap(), tok);
    assert_eq!(api.get(by_key(&key)).await.unwrap(), tok);

    // Disable: the holder is locked out; enable: back in.
    let disabled = api
        .update(pb::UpdateTokenRequest {
            token: by_key(&key),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!disabled.enabled);
    assert_eq!(code(api.subscription(&key).await), Code::Unauthenticated);
    let enabled = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(enabled.enabled);
    assert_eq!(api.subscription(&key).await.unwrap().hard_limit_usd, 0);

    // Name, expiry (0 removes it), unlimited; unset fields stay.
    let expires_at = unix_now() + 86_400;
    let changed = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            name: Some("bob".into()),
            expires_at: Some(expires_at),
            unlimited: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            changed.name.as_str(),
            changed.expires_at,
            changed.unlimited,
            changed.enabled
        ),
        ("bob", expires_at, true, true)
    );
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (sub.access_until, sub.hard_limit_usd),
        (expires_at, 100_000_000)
    );
    let cleared = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            expires_at: Some(0),
            unlimited: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (cleared.name.as_str(), cleared.expires_at, cleared.unlimited),
        ("bob", 0, false)
    );

    // Delete: gone for the admin and for the holder.
    api.admin()
        .delete_token(as_admin(pb::DeleteTokenRequest {
            token: by_key(&key),
        }))
        .await
        .unwrap();
    assert_eq!(code(api.get(by_id(tok.id)).await), Code::NotFound);
    assert_eq!(code(api.get(by_key(&key)).await), Code::NotFound);
    assert_eq!(code(api.subscription(&key).await), Code::Unauthenticated);
    let again = api
        .admin()
        .delete_token(as_admin(pb::DeleteTokenRequest {
            token: by_id(tok.id),
        }))
        .await;
    assert_eq!(code(again), Code::NotFound);
    let grant = api
        .grant(pb::GrantQuotaRequest {
            token: by_id(tok.id),
            quota: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(code(grant), Code::NotFound);
    let update = api
        .update(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            name: Some("x".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(code(update), Code::NotFound);
}

on_every_database!(
    admin_lists_tokens_a_page_at_a_time,
    admin_lists_tokens_a_page_at_a_time
);
async fn admin_lists_tokens_a_page_at_a_time(db: TestDb) {
    let api = Api::start(db).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(api.create_units(1).await.0.id);
    }

    let mut listed = Vec::new();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api.list(2, &page_token).await.unwrap();
        pages.push((page.tokens.len(), page.next_page_token.is_empty()));
        listed.extend(page.tokens.iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, [(2, false), (2, false), (1, true)]);
    assert_eq!(listed, created);

    // The default page holds them all.
    let all = api.list(0, "").await.unwrap();
    assert_eq!(all.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), created);
    assert!(all.next_page_token.is_empty());

    assert_eq!(code(api.list(2, "not-a-page").await), Code::InvalidArgument);
}

on_every_database!(
    admin_refuses_malformed_requests,
    admin_refuses_malformed_requests
);
async fn admin_refuses_malformed_requests(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, _) = api.create_units(1_000).await;

    let bad_refs = [
        None,
        Some(pb::TokenRef { r#ref: None }),
        by_key("sk-not-a-key"),
        by_key(""),
    ];
    for token in bad_refs {
        assert_eq!(
            code(api.get(token.clone()).await),
            Code::InvalidArgument,
            "{token:?}"
        );
        let grant = api
            .grant(pb::GrantQuotaRequest {
                token: token.clone(),
                quota: 1,
                ..Default::default()
            })
            .await;
        assert_eq!(code(grant), Code::InvalidArgument, "{token:?}");
        let update = api
            .update(pb::UpdateTokenRequest {
                token: token.clone(),
                enabled: Some(false),
                ..Default::default()
            })
            .await;
        assert_eq!(code(update), Code::InvalidArgument, "{token:?}");
        let delete = api
            .admin()
            .delete_token(as_admin(pb::DeleteTokenRequest {
                token: token.clone(),
            }))
            .await;
        assert_eq!(code(delete), Code::InvalidArgument, "{token:?}");
    }

    let creates = [
        ("both quota and quota_usd", 1_000, "5", 0),
        ("neither quota nor unlimited", 0, "", 0),
        ("negative quota", -1, "", 0),
        ("malformed dollars", 0, "five", 0),
        ("negative expiry", 1_000, "", -1),
    ];
    for (case, quota, quota_usd, expires_at) in creates {
        let created = api
            .admin()
            .create_token(as_admin(pb::CreateTokenRequest {
                quota,
                quota_usd: quota_usd.into(),
                expires_at,
                ..Default::default()
            }))
            .await;
        assert_eq!(code(created), Code::InvalidArgument, "{case}");
    }

    let grants = [
        ("both quota and quota_usd", 1_000, "5"),
        ("nothing", 0, ""),
        ("negative quota", -1, ""),
        ("zero dollars", 0, "0"),
    ];
    for (case, quota, quota_usd) in grants {
        let granted = api
            .grant(pb::GrantQuotaRequest {
                token: by_id(tok.id),
                quota,
                quota_usd: quota_usd.into(),
            })
            .await;
        assert_eq!(code(granted), Code::InvalidArgument, "{case}");
    }

    // A name longer than the store keeps is the caller's mistake, not a 500.
    let long = "n".repeat(256);
    let created = api
        .admin()
        .create_token(as_admin(pb::CreateTokenRequest {
            name: long.clone(),
            quota: 1,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(created), Code::InvalidArgument);
    let renamed = api
        .admin()
        .update_token(as_admin(pb::UpdateTokenRequest {
            token: by_id(tok.id),
            name: Some(long),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(renamed), Code::InvalidArgument);

    // Nothing of it changed anything.
    let after = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!(after, tok);
    assert_eq!(api.list(0, "").await.unwrap().tokens.len(), 1);
}

// ---------------------------------------------------------------------------
// Consume

on_every_database!(consume_debits_and_repeats, consume_debits_and_repeats);
async fn consume_debits_and_repeats(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api.create_units(1_000).await;

    let debit = api.consume(&key, 300, "req-1").await.unwrap();
    assert_eq!(
        debit,
        pb::ConsumeResponse {
            remaining: 700,
            used: 300,
            repeat: false,
            unlimited: false
        }
    );
    let repeat = api.consume(&key, 300, "req-1").await.unwrap();
    assert_eq!(
        repeat,
        pb::ConsumeResponse {
            remaining: 700,
            used: 300,
            repeat: true,
            unlimited: false
        }
    );

    // Over the remaining quota: refused, nothing taken.
    let over = api.consume(&key, 701, "req-2").await;
    assert_eq!(code(over), Code::ResourceExhausted);
    let token = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!((token.remaining, token.used), (700, 300));

    // Exactly the rest; then the token is spent.
    let rest = api.consume(&key, 700, "req-2").await.unwrap();
    assert_eq!((rest.remaining, rest.used, rest.repeat), (0, 1_000, false));
    assert_eq!(
        code(api.consume(&key, 1, "").await),
        Code::ResourceExhausted
    );
    assert!(api.consume(&key, 300, "req-1").await.unwrap().repeat);

    // A spent token may still read its balance.
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (
            sub.hard_limit_usd,
            sub.limit_units,
            sub.remaining_units,
            sub.used_units
        ),
        (0, 1_000, 0, 1_000)
    );
}

on_every_database!(
    consume_of_unlimited_token_records_use,
    consume_of_unlimited_token_records_use
);
async fn consume_of_unlimited_token_records_use(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api
        .create(pb::CreateTokenRequest {
            unlimited: true,
            ..Default::default()
        })
        .await;
    let first = api.consume(&key, 5_000_000_000, "").await.unwrap();
    let second = api.consume(&key, 5_000_000_000, "").await.unwrap();
    // Debits move units from remaining to used, unlimited or not: the limit
    // (remaining + used) stays what was granted.
    assert_eq!(
        (first.remaining, first.used, first.unlimited),
        (-5_000_000_000, 5_000_000_000, true)
    );
    assert_eq!(
        (second.remaining, second.used),
        (-10_000_000_000, 10_000_000_000)
    );
    let sub = api.subscription(&key).await.unwrap();
    assert_eq!(
        (sub.used_units, sub.limit_units, sub.hard_limit_usd),
        (10_000_000_000, 0, 100_000_000)
    );
}

on_every_database!(
    consume_refuses_bad_requests_and_tokens,
    consume_refuses_bad_requests_and_tokens
);
async fn consume_refuses_bad_requests_and_tokens(db: TestDb) {
    let api = Api::start(db).await;
    let (tok, key) = api.create_units(1_000).await;

    assert_eq!(code(api.consume(&key, 0, "").await), Code::InvalidArgument);
    assert_eq!(code(api.consume(&key, -5, "").await), Code::InvalidArgument);
    assert_eq!(code(api.consume("", 1, "").await), Code::InvalidArgument);
    assert_eq!(
        code(api.consume("sk-bad", 1, "").await),
        Code::InvalidArgument
    );
    let long_id = "x".repeat(256);
    assert_eq!(
        code(api.consume(&key, 1, &long_id).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(api.consume(&unknown_key(), 1, "").await),
        Code::NotFound
    );

    let (_, expired) = api
        .create(pb::CreateTokenRequest {
            quota: 1_000,
            expires_at: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(api.consume(&expired, 1, "").await),
        Code::FailedPrecondition
    );

    api.update(pb::UpdateTokenRequest {
        token: by_id(tok.id),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        code(api.consume(&key, 1, "r").await),
        Code::FailedPrecondition
    );

    // None of it debited anything.
    let token = api.get(by_id(tok.id)).await.unwrap();
    assert_eq!((token.remaining, token.used), (1_000, 0));
    let expired = api.get(by_key(&expired)).await.unwrap();
    assert_eq!((expired.remaining, expired.used), (1_000, 0));
}

// ---------------------------------------------------------------------------
// GetUsage

on_every_database!(
    usage_reports_todays_spend_in_cents,
    usage_reports_todays_spend_in_cents
);
async fn usage_reports_todays_spend_in_cents(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api
        .create(pb::CreateTokenRequest {
            quota_usd: "10".into(),
            ..Default::default()
        })
        .await;

    // Before any debit: nothing, although 10 dollars were granted.
    let empty = api.usage(&key, "", "").await.unwrap();
    assert_eq!((empty.total_units, empty.total_usage), (0, 0.0));
    assert!(empty.daily_costs.is_empty());

    let before = unix_now();
    api.consume(&key, 300_000, "a").await.unwrap();
    api.consume(&key, 200_000, "b").await.unwrap();
    api.consume(&key, 200_000, "b").await.unwrap(); // a repeat: not spend
    let after = unix_now();

    let usage = api.usage(&key, "", "").await.unwrap();
    assert_eq!(usage.object, "list");
    assert_eq!(usage.total_units, 500_000);
    assert_eq!(usage.total_usage, 100.0);
    assert_eq!(usage.daily_costs.len(), 1);
    let today = &usage.daily_costs[0];
    assert_eq!(today.timestamp, day_start(today.timestamp));
    assert!(today.timestamp >= day_start(before) && today.timestamp <= day_start(after));
    assert_eq!(
        today.line_items,
        [pb::LineItem {
            name: "usage".into(),
            cost: 100.0
        }]
    );

    // Windows: start inclusive, end exclusive, future empty.
    let day = |at: i64| {
        chrono::DateTime::from_timestamp(at, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };
    let today_date = day(today.timestamp);
    let tomorrow = day(today.timestamp + 86_400);
    let in_window = api.usage(&key, &today_date, &tomorrow).await.unwrap();
    assert_eq!(in_window.total_units, 500_000);
    assert_eq!(in_window.daily_costs, usage.daily_costs);
    let until_today = api.usage(&key, "", &today_date).await.unwrap();
    assert_eq!(until_today.total_units, 0);
    assert!(until_today.daily_costs.is_empty());
    let future = api.usage(&key, "2999-01-01", "").await.unwrap();
    assert_eq!((future.total_units, future.total_usage), (0, 0.0));
    assert!(future.daily_costs.is_empty());

    for (start, end) in [("2026-13-01", ""), ("", "yesterday"), ("20261101", "")] {
        let bad = api.usage(&key, start, end).await;
        assert_eq!(code(bad), Code::InvalidArgument, "{start:?} {end:?}");
    }
}

// ---------------------------------------------------------------------------
// Reflection and health

/// Asks a reflection endpoint, through the client of its own version (`v1`
/// or `v1alpha`), for the services it lists; then asks it to describe each.
/// Returns the listed names and those it could not describe.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut ask = async |requests: Vec<MessageRequest>| {
            let requests = requests.into_iter().map(|r| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(r),
            });
            let mut stream = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect("ServerReflectionInfo")
                .into_inner();
            let mut responses = Vec::new();
            while let Some(response) = stream.message().await.expect("a reflection response") {
                responses.push(response.message_response);
            }
            responses
        };
        let listed: Vec<String> = match &ask(vec![MessageRequest::ListServices(String::new())])
            .await[..]
        {
            [Some(MessageResponse::ListServicesResponse(list))] => {
                list.service.iter().map(|s| s.name.clone()).collect()
            }
            other => panic!("expected one list of services, got {other:?}"),
        };
        let describe = listed
            .iter()
            .map(|name| MessageRequest::FileContainingSymbol(name.clone()))
            .collect();
        let described = ask(describe).await;
        assert_eq!(described.len(), listed.len());
        let undescribed: Vec<String> = listed
            .iter()
            .zip(described)
            .filter(|(_, response)| {
                !matches!(response, Some(MessageResponse::FileDescriptorResponse(fd))
                    if !fd.file_descriptor_proto.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect();
        (listed, undescribed)
    }};
}

on_every_database!(
    reflection_lists_and_describes_every_service,
    reflection_lists_and_describes_every_service
);
async fn reflection_lists_and_describes_every_service(db: TestDb) {
    let api = Api::start(db).await;
    let by_version = [
        ("v1", reflect!(v1, api.channel.clone())),
        ("v1alpha", reflect!(v1alpha, api.channel.clone())),
    ];
    for (version, (listed, undescribed)) in by_version {
        for expected in [
            "quota.v1.QuotaService",
            "quota.v1.TokenAdmin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.iter().any(|s| s == expected),
                "{version} reflection does not list {expected}: {listed:?}"
            );
        }
        assert!(
            undescribed.is_empty(),
            "{version} reflection cannot describe {undescribed:?}"
        );
    }
}

on_every_database!(health_reports_serving, health_reports_serving);
async fn health_reports_serving(db: TestDb) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let api = Api::start(db).await;
    let mut health = HealthClient::new(api.channel.clone());
    for service in ["quota.v1.QuotaService", "quota.v1.TokenAdmin", ""] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("Check {service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "quota.v1.Nope".into(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
}
