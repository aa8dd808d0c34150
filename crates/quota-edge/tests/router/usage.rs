//! The usage route through the whole chain: cents that are fractions, one
//! entry per UTC day with spend, the date window, a malformed date, and a
//! rate other than the default. Debits carry fixed timestamps, so nothing depends on
//! today's date.

use crate::chain::{chain, chain_with};
use crate::helpers::*;

use axum::http::StatusCode;
use quota_service::domain::{HoldTtl, QuotaPerUsd, QuotaUnits};
use quota_service::store::NewToken;
use quota_service::testing::{TestDb, test_config};

/// 2026-03-01, 2026-03-02 and 2026-03-03, 00:00:00 UTC.
const MARCH_1: i64 = 1_772_323_200;
const MARCH_2: i64 = 1_772_409_600;
const MARCH_3: i64 = 1_772_496_000;

/// A token of `quota` units with the debits `(units, at)`; its bearer header.
async fn spent(store: &quota_service::Store, quota: i64, debits: &[(i64, i64)]) -> String {
    let new = NewToken {
        name: "usage".into(),
        quota,
        ..Default::default()
    };
    let (_, key) = store.create_token(new, MARCH_1).await.unwrap();
    for &(units, at) in debits {
        let units = QuotaUnits::positive(units).unwrap();
        store.consume(&key.digest(), units, None, at).await.unwrap();
    }
    format!("Bearer {}", key.expose())
}

async fn get(router: &axum::Router, uri: &str, bearer: &str) -> (StatusCode, String) {
    let response = send(router, "GET", uri, &[("authorization", bearer)]).await;
    (response.status(), body_text(response).await)
}

async fn fractional_cents_on_several_days(db: TestDb) {
    let c = chain(db).await;
    // 500000 units make a dollar, so 5000 make a cent: 2500 units are half a
    // cent, 7501 units 1.5002 cents, one unit 0.0002 cents.
    let bearer = spent(
        &c.store,
        1_000_000,
        &[
            (2_000, MARCH_1 + 10),
            (500, MARCH_1 + 86_399),
            (7_501, MARCH_2),
            (1, MARCH_3 + 43_200),
        ],
    )
    .await;
    let all = format!(
        concat!(
            r#"{{"object":"list","total_usage":2.0004,"daily_costs":["#,
            r#"{{"timestamp":{},"line_items":[{{"name":"usage","cost":0.5}}]}},"#,
            r#"{{"timestamp":{},"line_items":[{{"name":"usage","cost":1.5002}}]}},"#,
            r#"{{"timestamp":{},"line_items":[{{"name":"usage","cost":0.0002}}]}}]}}"#
        ),
        MARCH_1, MARCH_2, MARCH_3
    );
    for path in ["/v1/dashboard/billing/usage", "/dashboard/billing/usage"] {
        assert_eq!(
            get(&c.router, path, &bearer).await,
            (StatusCode::OK, all.clone())
        );
    }

    // start_date is inclusive, end_date exclusive.
    let second_day = format!(
        r#"{{"object":"list","total_usage":1.5002,"daily_costs":[{{"timestamp":{MARCH_2},"line_items":[{{"name":"usage","cost":1.5002}}]}}]}}"#
    );
    let uri = "/v1/dashboard/billing/usage?start_date=2026-03-02&end_date=2026-03-03";
    assert_eq!(
        get(&c.router, uri, &bearer).await,
        (StatusCode::OK, second_day)
    );
    let from_second = "/v1/dashboard/billing/usage?start_date=2026-03-02";
    let (status, body) = get(&c.router, from_second, &bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with(r#"{"object":"list","total_usage":1.5004,"#),
        "{body}"
    );
    let until_second = "/v1/dashboard/billing/usage?end_date=2026-03-02";
    let first_day = format!(
        r#"{{"object":"list","total_usage":0.5,"daily_costs":[{{"timestamp":{MARCH_1},"line_items":[{{"name":"usage","cost":0.5}}]}}]}}"#
    );
    assert_eq!(
        get(&c.router, until_second, &bearer).await,
        (StatusCode::OK, first_day)
    );
}

quota_service::on_every_database!(
    usage_in_fractional_cents_per_utc_day,
    fractional_cents_on_several_days
);

async fn a_day_whose_debits_are_0_units_has_no_entry(db: TestDb) {
    let c = chain(db).await;
    let new = NewToken {
        name: "usage".into(),
        quota: 1_000_000,
        ..Default::default()
    };
    let (_, key) = c.store.create_token(new, MARCH_1).await.unwrap();
    let digest = key.digest();
    let ttl = HoldTtl::parse(600).unwrap();
    // March 1: half a cent, and a settle of 0 beside it; March 2: a settle
    // of 0 alone.
    let units = |n| QuotaUnits::positive(n).unwrap();
    c.store
        .consume(&digest, units(2_500), None, MARCH_1 + 10)
        .await
        .unwrap();
    for (id, at) in [("beside", MARCH_1 + 20), ("alone", MARCH_2 + 20)] {
        c.store
            .reserve(&digest, units(100), id, ttl, at)
            .await
            .unwrap();
        c.store.settle(&digest, id, 0, at + 1).await.unwrap();
    }
    let bearer = format!("Bearer {}", key.expose());
    let march_1 = format!(
        r#"{{"object":"list","total_usage":0.5,"daily_costs":[{{"timestamp":{MARCH_1},"line_items":[{{"name":"usage","cost":0.5}}]}}]}}"#
    );
    assert_eq!(
        get(&c.router, "/v1/dashboard/billing/usage", &bearer).await,
        (StatusCode::OK, march_1)
    );
    let from_march_2 = "/v1/dashboard/billing/usage?start_date=2026-03-02";
    assert_eq!(
        get(&c.router, from_march_2, &bearer).await,
        (
            StatusCode::OK,
            r#"{"object":"list","total_usage":0.0,"daily_costs":[]}"#.to_owned()
        )
    );
}

quota_service::on_every_database!(
    a_day_without_spend_is_not_listed,
    a_day_whose_debits_are_0_units_has_no_entry
);

async fn malformed_dates_are_400_invalid_date(db: TestDb) {
    let c = chain(db).await;
    let bearer = spent(&c.store, 1_000, &[]).await;
    let cases = [
        ("start_date=2026-3-1", "start_date", "2026-3-1"),
        ("start_date=yesterday", "start_date", "yesterday"),
        ("end_date=2026-02-30", "end_date", "2026-02-30"),
        (
            "start_date=2026-03-01&end_date=2026-03-01T00:00",
            "end_date",
            "2026-03-01T00:00",
        ),
        // A date given twice is not one date.
        (
            "start_date=2026-03-01&start_date=2026-03-02",
            "start_date",
            "2026-03-01,2026-03-02",
        ),
        ("end_date=&end_date=2026-03-02", "end_date", ",2026-03-02"),
        // A key where a date belongs is not repeated.
        (
            "start_date=sk-AbCdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
            "start_date",
            "sk-AbCd…",
        ),
    ];
    for (query, field, value) in cases {
        let uri = format!("/v1/dashboard/billing/usage?{query}");
        let response = send(&c.router, "GET", &uri, &[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            body_text(response).await,
            format!(
                r#"{{"error":{{"message":"{field} must be a date as YYYY-MM-DD, got \"{value}\"","type":"invalid_request_error","param":"{field}","code":"invalid_date"}}}}"#
            ),
            "{query}"
        );
    }
    // The key is checked first: a malformed query without a key is 401.
    let uri = "/v1/dashboard/billing/usage?start_date=2026-03-01&start_date=x";
    let response = send(&c.router, "GET", uri, &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Dates far in the future, or a window that is empty, are no error.
    let uri = "/dashboard/billing/usage?start_date=2999-12-31&end_date=2000-01-01";
    assert_eq!(
        get(&c.router, uri, &bearer).await,
        (
            StatusCode::OK,
            r#"{"object":"list","total_usage":0.0,"daily_costs":[]}"#.to_owned()
        )
    );
}

quota_service::on_every_database!(malformed_usage_dates, malformed_dates_are_400_invalid_date);

async fn a_rate_other_than_the_default_is_used(db: TestDb) {
    // 1000 units a dollar: 10 units a cent.
    let config = quota_service::ServiceConfig {
        per_usd: QuotaPerUsd::new(1_000).unwrap(),
        ..test_config()
    };
    let c = chain_with(db, config).await;
    let bearer = spent(&c.store, 7_999, &[(1_234, MARCH_1)]).await;
    // Limit 7999 units: $7 (rounded down); the default rate would say $0.
    let (status, body) = get(&c.router, SUBSCRIPTION, &bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        r#"{"object":"billing_subscription","has_payment_method":true,"soft_limit_usd":7,"hard_limit_usd":7,"system_hard_limit_usd":7,"access_until":0}"#
    );
    let usage = format!(
        r#"{{"object":"list","total_usage":123.4,"daily_costs":[{{"timestamp":{MARCH_1},"line_items":[{{"name":"usage","cost":123.4}}]}}]}}"#
    );
    assert_eq!(
        get(&c.router, "/v1/dashboard/billing/usage", &bearer).await,
        (StatusCode::OK, usage)
    );
}

quota_service::on_every_database!(
    quota_per_usd_sets_dollars_and_cents,
    a_rate_other_than_the_default_is_used
);
