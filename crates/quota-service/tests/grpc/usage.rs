//! GetUsage: spend in cents per UTC day.

use crate::helpers::*;

/// 2027-01-15T08:00:00Z: the debits' time, fixed so that no run straddles
/// a UTC midnight.
const AT: i64 = 1_800_000_000;
/// 2027-01-15T00:00:00Z.
const DAY0: i64 = 1_799_971_200;

on_every_database!(
    usage_reports_a_days_spend_in_cents,
    usage_reports_a_days_spend_in_cents
);
async fn usage_reports_a_days_spend_in_cents(db: TestDb) {
    let store = db.store().await;
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

    // Debits at a fixed time, through the store, which takes the time as an argument.
    let digest = quota_service::domain::TokenKey::parse(&key)
        .unwrap()
        .digest();
    for (units, id) in [(300_000, "a"), (200_000, "b"), (200_000, "b")] {
        let units = quota_service::domain::QuotaUnits::positive(units).unwrap();
        store.consume(&digest, units, Some(id), AT).await.unwrap(); // "b" again: a repeat, not spend
    }

    let usage = api.usage(&key, "", "").await.unwrap();
    assert_eq!(usage.object, "list");
    assert_eq!(usage.total_units, 500_000);
    assert_eq!(usage.total_usage, 100.0);
    assert_eq!(usage.daily_costs.len(), 1);
    let today = &usage.daily_costs[0];
    assert_eq!(today.timestamp, DAY0);
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
    let today_date = day(DAY0);
    assert_eq!(today_date, "2027-01-15");
    let tomorrow = day(DAY0 + 86_400);
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
