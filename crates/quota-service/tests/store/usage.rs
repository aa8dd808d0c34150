//! Daily usage per UTC day.

use crate::helpers::*;

on_every_database!(
    daily_usage_sums_debits_per_utc_day,
    daily_usage_sums_debits_per_utc_day
);
async fn daily_usage_sums_debits_per_utc_day(db: TestDb) {
    assert_eq!(day_start(NOW), DAY0);
    let store = db.store().await;
    let (tok, key) = new_token(&store, 0).await;
    store
        .grant(&TokenLocator::Id(tok.id), units(1_000_000), DAY0 + 1)
        .await
        .unwrap();
    // Day 0: its first and its last second; a grant that must not count.
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 100, DAY0).await;
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 200, DAY0 + DAY - 1).await;
    insert_ledger_row(&store, tok.id, KIND_GRANT, 5_000, DAY0 + 100).await;
    // Day 1: its first second.
    insert_ledger_row(&store, tok.id, KIND_DEBIT, 300, DAY0 + DAY).await;
    // Day 3, through the debit itself.
    store
        .consume(&key.digest(), units(400), Some("d3"), DAY0 + 3 * DAY + 7)
        .await
        .unwrap();
    // Another token's spend on day 0 must not count.
    let (other, _) = new_token(&store, 0).await;
    insert_ledger_row(&store, other.id, KIND_DEBIT, 9_999, DAY0 + 5).await;

    let spend = |day: i64, units: i64| DaySpend { day, units };
    let usage = |start: Option<i64>, end: Option<i64>| {
        let store = store.clone();
        async move {
            store
                .daily_usage(tok.id, UsageWindow { start, end })
                .await
                .unwrap()
        }
    };

    assert_eq!(
        usage(None, None).await,
        [
            spend(DAY0, 300),
            spend(DAY0 + DAY, 300),
            spend(DAY0 + 3 * DAY, 400)
        ]
    );
    // Start inclusive, end exclusive.
    assert_eq!(
        usage(Some(DAY0 + DAY), Some(DAY0 + 3 * DAY)).await,
        [spend(DAY0 + DAY, 300)]
    );
    assert_eq!(usage(None, Some(DAY0 + DAY)).await, [spend(DAY0, 300)]);
    assert_eq!(
        usage(Some(DAY0 + DAY), None).await,
        [spend(DAY0 + DAY, 300), spend(DAY0 + 3 * DAY, 400)]
    );
    assert_eq!(usage(Some(DAY0), Some(DAY0)).await, []);
    // The window as the API parses it: 2027-01-15 is DAY0.
    let parsed = UsageWindow::parse("2027-01-15", "2027-01-16").unwrap();
    assert_eq!(
        store.daily_usage(tok.id, parsed).await.unwrap(),
        [spend(DAY0, 300)]
    );
    // The future: nothing, not an error.
    assert_eq!(usage(Some(DAY0 + 100 * DAY), None).await, []);
    let future = UsageWindow::parse("2999-01-01", "").unwrap();
    assert_eq!(store.daily_usage(tok.id, future).await.unwrap(), []);
    // A token without debits.
    let (idle, _) = new_token(&store, 10).await;
    assert_eq!(
        store
            .daily_usage(idle.id, UsageWindow::parse("", "").unwrap())
            .await
            .unwrap(),
        []
    );
}
