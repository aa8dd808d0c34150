//! The whole chain, edge -> gRPC -> database, on every database.

use crate::helpers::*;

use axum::http::StatusCode;
use quota_edge::{Upstream, app};
use quota_service::store::NewToken;
use quota_service::testing::{TestDb, TestServer, test_config};

/// The edge in front of a real gRPC server on a real database.
pub struct Chain {
    pub router: axum::Router,
    pub store: quota_service::Store,
    _server: TestServer,
    _db: TestDb,
}

pub async fn chain(db: TestDb) -> Chain {
    chain_with(db, test_config()).await
}

/// The chain with a service configured by `config`.
pub async fn chain_with(db: TestDb, config: quota_service::ServiceConfig) -> Chain {
    let store = db.store().await;
    let server = TestServer::spawn(store.clone(), config).await;
    let router = app(Upstream::lazy(&server.url()).unwrap());
    Chain {
        router,
        store,
        _server: server,
        _db: db,
    }
}

async fn subscription_and_errors(db: TestDb) {
    let c = chain(db).await;
    let now = quota_service::domain::unix_now();
    let new = |quota, unlimited, expires_at| NewToken {
        name: "t".into(),
        quota,
        unlimited,
        expires_at,
    };
    let (_, five) = c
        .store
        .create_token(new(2_500_000, false, None), now)
        .await
        .unwrap();
    let bearer = format!("Bearer {}", five.expose());

    for path in [SUBSCRIPTION, "/dashboard/billing/subscription"] {
        let response = send(
            &c.router,
            "GET",
            path,
            &[("authorization", &bearer), ("origin", "https://x")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert_eq!(body_text(response).await, SPEC_EXAMPLE);
    }
    let lower = format!("bearer {}", five.expose());
    let response = send(&c.router, "GET", SUBSCRIPTION, &[("authorization", &lower)]).await;
    assert_eq!(body_text(response).await, SPEC_EXAMPLE);

    let (_, unlimited) = c
        .store
        .create_token(new(0, true, Some(1_900_000_000)), now)
        .await
        .unwrap();
    let response = send(
        &c.router,
        "GET",
        SUBSCRIPTION,
        &[("authorization", &format!("Bearer {}", unlimited.expose()))],
    )
    .await;
    assert_eq!(
        body_text(response).await,
        r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":100000000,"hard_limit_usd":100000000,"system_hard_limit_usd":100000000,"access_until":1900000000}"#
    );

    let (disabled, disabled_key) = c
        .store
        .create_token(new(1, false, None), now)
        .await
        .unwrap();
    let changes = quota_service::store::TokenChanges {
        enabled: Some(false),
        ..Default::default()
    };
    c.store
        .update_token(
            &quota_service::domain::TokenLocator::Id(disabled.id),
            changes,
            now,
        )
        .await
        .unwrap();
    let (_, expired_key) = c
        .store
        .create_token(new(1, false, Some(now - 1)), now)
        .await
        .unwrap();
    let unknown = quota_service::domain::TokenKey::generate().unwrap();

    let cases: [(Vec<(&str, String)>, &str); 6] = [
        (vec![], "missing"),
        (vec![("authorization", "Basic abc".into())], "malformed"),
        (
            vec![("authorization", "Bearer sk-short".into())],
            "malformed",
        ),
        (
            vec![("authorization", format!("Bearer {}", unknown.expose()))],
            "no such key",
        ),
        (
            vec![("authorization", format!("Bearer {}", disabled_key.expose()))],
            "disabled",
        ),
        (
            vec![("authorization", format!("Bearer {}", expired_key.expose()))],
            "expired",
        ),
    ];
    for (headers, says) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = send(&c.router, "GET", SUBSCRIPTION, &headers).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let message = assert_error(
            response,
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        )
        .await;
        assert!(message.contains(says), "{says}: {message}");
    }
}

quota_service::on_every_database!(whole_chain_subscription, subscription_and_errors);

async fn usage_through_the_chain(db: TestDb) {
    let c = chain(db).await;
    let now = quota_service::domain::unix_now();
    let new = NewToken {
        name: "u".into(),
        quota: 1_000_000,
        ..Default::default()
    };
    let (_, key) = c.store.create_token(new, now).await.unwrap();
    let bearer = format!("Bearer {}", key.expose());
    let units = quota_service::domain::QuotaUnits::positive(250_000).unwrap();
    for id in ["a", "b", "a"] {
        c.store
            .consume(&key.digest(), units, Some(id), now)
            .await
            .unwrap();
    }
    let today = quota_service::domain::day_start(now);
    let expected = format!(
        r#"{{"object":"list","total_usage":100.0,"daily_costs":[{{"timestamp":{today},"line_items":[{{"name":"usage","cost":100.0}}]}}]}}"#
    );
    for path in ["/v1/dashboard/billing/usage", "/dashboard/billing/usage"] {
        let response = send(&c.router, "GET", path, &[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, expected);
    }
    let future = "/v1/dashboard/billing/usage?start_date=2999-01-01&end_date=2999-02-01";
    let response = send(&c.router, "GET", future, &[("authorization", &bearer)]).await;
    assert_eq!(
        body_text(response).await,
        r#"{"object":"list","total_usage":0.0,"daily_costs":[]}"#
    );

    // Spent to the last unit, the token still reads its balance and usage.
    let rest = quota_service::domain::QuotaUnits::positive(500_000).unwrap();
    c.store
        .consume(&key.digest(), rest, None, now)
        .await
        .unwrap();
    for path in [SUBSCRIPTION, "/v1/dashboard/billing/usage"] {
        let response = send(&c.router, "GET", path, &[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let response = send(&c.router, "GET", "/dashboard/billing/usage", &[]).await;
    assert_error(
        response,
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
    )
    .await;
}

quota_service::on_every_database!(whole_chain_usage, usage_through_the_chain);
