//! GetSubscription and the limit in dollars.

use crate::helpers::*;

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
            held_units: 0,
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

on_every_database!(
    a_callers_request_id_comes_back_and_a_missing_one_is_made,
    a_callers_request_id_comes_back_and_a_missing_one_is_made
);
async fn a_callers_request_id_comes_back_and_a_missing_one_is_made(db: TestDb) {
    let api = Api::start(db).await;
    let (_, key) = api
        .create(pb::CreateTokenRequest {
            name: "ids".into(),
            quota_usd: "1".into(),
            ..Default::default()
        })
        .await;
    let with_id = |credential: &str, id: &str| {
        let mut request = bearer(pb::GetSubscriptionRequest {}, credential);
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        request
    };

    // A valid id is kept and returned with the answer.
    let answered = api
        .quota()
        .get_subscription(with_id(&key, "order-42"))
        .await
        .unwrap();
    assert_eq!(answered.metadata().get("x-request-id").unwrap(), "order-42");

    // An invalid one is replaced by a UUID v4, returned with a refusal too.
    let refused = api
        .quota()
        .get_subscription(with_id("sk-not-a-key", "has space"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let made = refused
        .metadata()
        .get("x-request-id")
        .expect("a refusal carries an id")
        .to_str()
        .unwrap();
    let groups: Vec<usize> = made.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{made}");
    assert!(
        made.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "{made}"
    );
    assert_eq!(made.as_bytes()[14], b'4', "version 4: {made}");

    // Without one, each call gets its own.
    let mut made = Vec::new();
    for _ in 0..2 {
        let request = bearer(pb::GetSubscriptionRequest {}, &key);
        let answered = api.quota().get_subscription(request).await.unwrap();
        let id = answered.metadata().get("x-request-id").expect("an id");
        made.push(id.to_str().unwrap().to_owned());
    }
    assert_eq!(made[0].len(), 36, "{made:?}");
    assert_ne!(made[0], made[1]);
}
