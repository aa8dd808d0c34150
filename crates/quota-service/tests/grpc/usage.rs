//! GetUsage: spend in cents per UTC day.

use crate::helpers::*;

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
