//! The debit under concurrency, on one store and on two replicas.

use crate::helpers::*;

const REQUESTS: usize = 1_000;
const TASKS: usize = 32;

/// What [`hammer`] saw.
#[derive(Debug, Default)]
struct Outcome {
    /// The balance each successful, non-repeat debit left.
    debited: Vec<Balance>,
    /// The balance each successful repeat saw.
    repeats: Vec<Balance>,
    /// The remaining units each refusal for quota saw.
    exhausted: Vec<i64>,
}

impl Outcome {
    fn count(&self) -> (i64, i64, i64) {
        let n = |v: usize| v as i64;
        (
            n(self.debited.len()),
            n(self.repeats.len()),
            n(self.exhausted.len()),
        )
    }
}

/// Sends `REQUESTS` debits of `size` units from `TASKS` concurrent tasks,
/// spread over `stores` in turn. `request_id(i)` names request `i`. Panics on
/// any error other than `QuotaExhausted`.
async fn hammer(
    stores: &[Store],
    key: &TokenKey,
    size: i64,
    request_id: impl Fn(usize) -> Option<String>,
) -> Outcome {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = stores[t % stores.len()].clone();
        let digest = key.digest();
        let ids: Vec<Option<String>> = (t..REQUESTS).step_by(TASKS).map(&request_id).collect();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            for id in ids {
                match store
                    .consume(&digest, units(size), id.as_deref(), NOW)
                    .await
                {
                    Ok(debit) if debit.repeat => outcome.repeats.push(debit.balance),
                    Ok(debit) => outcome.debited.push(debit.balance),
                    Err(QuotaError::QuotaExhausted {
                        spendable: remaining,
                        requested,
                    }) => {
                        assert_eq!(requested, size);
                        outcome.exhausted.push(remaining);
                    }
                    Err(other) => panic!("a debit failed with {other:?}"),
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        let outcome = task.await.expect("debit task");
        total.debited.extend(outcome.debited);
        total.repeats.extend(outcome.repeats);
        total.exhausted.extend(outcome.exhausted);
    }
    let (debited, repeats, exhausted) = total.count();
    assert_eq!(debited + repeats + exhausted, REQUESTS as i64);
    total
}

/// A token that affords `affordable` debits of `size` and has `spare` units
/// over is hammered with distinct requests on `stores`: exactly the
/// affordable debits succeed, each leaving its own balance (the k-th leaves
/// `quota - k * size`), every refusal sees the `spare` units, and counters
/// and ledger agree.
async fn overspend_is_impossible(stores: &[Store], size: i64, affordable: i64, spare: i64) {
    assert!(spare < size && affordable < REQUESTS as i64);
    let quota = size * affordable + spare;
    let (tok, key) = new_token(&stores[0], quota).await;

    let mut outcome = hammer(stores, &key, size, |i| Some(format!("req-{i}"))).await;
    let refused = REQUESTS as i64 - affordable;
    assert_eq!(outcome.count(), (affordable, 0, refused), "{outcome:?}");
    outcome.debited.sort_by_key(|b| b.used);
    let each: Vec<Balance> = (1..=affordable)
        .map(|k| limited(quota - k * size, k * size))
        .collect();
    assert_eq!(outcome.debited, each);
    assert_eq!(outcome.exhausted, vec![spare; refused as usize]);

    let after = balance(&stores[0], tok.id).await;
    assert_eq!(after, limited(spare, affordable * size));
    let debits = debits_of(&stores[0], tok.id).await;
    assert_eq!(debits.len() as i64, affordable);
    assert_eq!(debits.iter().map(|r| r.units).sum::<i64>(), after.used);
}

on_every_database!(
    concurrent_debits_on_one_store_never_overspend,
    concurrent_debits_on_one_store_never_overspend
);
async fn concurrent_debits_on_one_store_never_overspend(db: TestDb) {
    let store = db.store().await;
    // Evenly divisible: the token ends at exactly zero.
    overspend_is_impossible(std::slice::from_ref(&store), 7, 300, 0).await;
    // Uneven: the odd units stay.
    overspend_is_impossible(&[store], 7, 300, 5).await;
}

on_every_database!(
    concurrent_debits_on_two_replicas_never_overspend,
    concurrent_debits_on_two_replicas_never_overspend
);
async fn concurrent_debits_on_two_replicas_never_overspend(db: TestDb) {
    let replicas = [db.store().await, db.store().await];
    overspend_is_impossible(&replicas, 7, 300, 0).await;
    overspend_is_impossible(&replicas, 7, 300, 5).await;
}

on_every_database!(
    concurrent_duplicates_on_two_replicas_debit_once,
    concurrent_duplicates_on_two_replicas_debit_once
);
async fn concurrent_duplicates_on_two_replicas_debit_once(db: TestDb) {
    let replicas = [db.store().await, db.store().await];
    let (tok, key) = new_token(&replicas[0], 1_000).await;

    let outcome = hammer(&replicas, &key, 10, |_| Some("dup".to_owned())).await;
    assert_eq!(outcome.count(), (1, REQUESTS as i64 - 1, 0), "{outcome:?}");
    assert_eq!(outcome.debited, [limited(990, 10)]);
    assert!(
        outcome.repeats.iter().all(|b| *b == limited(990, 10)),
        "a repeat sees the one debit: {outcome:?}"
    );

    assert_eq!(balance(&replicas[1], tok.id).await, limited(990, 10));
    let debits = debits_of(&replicas[1], tok.id).await;
    assert_eq!(debits.len(), 1);
    assert_eq!(
        (debits[0].units, debits[0].request_id.as_deref()),
        (10, Some("dup"))
    );
}

on_every_database!(
    grants_and_debits_on_two_replicas_all_land,
    grants_and_debits_on_two_replicas_all_land
);
async fn grants_and_debits_on_two_replicas_all_land(db: TestDb) {
    // Grants read the token before they write it: on SQLite, a replica's
    // write in between must not fail them with "database is locked".
    const PER_TASK: i64 = 40;
    const DEBITERS: i64 = (TASKS / 2) as i64;
    // The first grant pays for every debit, so each one must succeed
    // whatever the order of grants and debits.
    let debited = 2 * PER_TASK * DEBITERS;
    let replicas = [db.store().await, db.store().await];
    let (tok, key) = new_token(&replicas[0], debited).await;
    let mut granters = Vec::new();
    let mut debiters = Vec::new();
    for t in 0..DEBITERS {
        let store = replicas[0].clone();
        granters.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                store
                    .grant(&TokenLocator::Id(tok.id), units(3), NOW)
                    .await
                    .expect("grant");
            }
        }));
        let store = replicas[1].clone();
        let digest = key.digest();
        debiters.push(tokio::spawn(async move {
            let mut used = Vec::new();
            for i in 0..PER_TASK {
                let id = format!("{t}-{i}");
                let debit = store
                    .consume(&digest, units(2), Some(&id), NOW)
                    .await
                    .unwrap_or_else(|e| panic!("debit {id} failed with {e:?}"));
                assert!(!debit.repeat, "{debit:?}");
                used.push(debit.balance.used);
            }
            used
        }));
    }
    for task in granters {
        task.await.expect("grant task");
    }
    let mut used = Vec::new();
    for task in debiters {
        used.extend(task.await.expect("debit task"));
    }
    // Each debit saw its own `used`: 2, 4, ... up to every debit.
    used.sort_unstable();
    assert_eq!(used, (1..=debited / 2).map(|k| 2 * k).collect::<Vec<_>>());

    let granted = debited + 3 * PER_TASK * DEBITERS;
    let after = balance(&replicas[1], tok.id).await;
    assert_eq!(after, limited(granted - debited, debited));
    let rows = ledger_of(&replicas[1], tok.id).await;
    let sum = |kind| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.units)
            .sum::<i64>()
    };
    assert_eq!(sum(KIND_GRANT), granted);
    assert_eq!(sum(KIND_DEBIT), debited);
}

/// A burst of debits on one token: `copies` debits of each of `ids` request
/// ids, all in flight at once. Returns (first debits, repeats, refusals).
async fn burst(
    store: &Store,
    key: &TokenKey,
    n: i64,
    ids: usize,
    copies: usize,
) -> (usize, usize, Vec<QuotaError>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..copies {
        for id in 0..ids {
            let (store, digest) = (store.clone(), key.digest());
            tasks.spawn(async move {
                store
                    .consume(&digest, units(n), Some(&format!("burst-{id}")), NOW)
                    .await
            });
        }
    }
    let (mut first, mut repeats, mut refused) = (0, 0, Vec::new());
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Ok(debit) if debit.repeat => repeats += 1,
            Ok(_) => first += 1,
            Err(e) => refused.push(e),
        }
    }
    (first, repeats, refused)
}

on_every_database!(
    a_burst_on_one_token_settles_each_debit_exactly,
    a_burst_settles_each_debit_exactly
);
async fn a_burst_settles_each_debit_exactly(db: TestDb) {
    let store = db.store().await;
    // Affords 20 debits of 5; 32 request ids, each sent twice at once.
    let (token, key) = new_token(&store, 100).await;
    let (first, repeats, refused) = burst(&store, &key, 5, 32, 2).await;
    assert_eq!(first, 20);
    assert_eq!(repeats, 20, "each debited id's second copy is a repeat");
    assert_eq!(refused.len(), 24);
    assert!(
        refused
            .iter()
            .all(|e| matches!(e, QuotaError::QuotaExhausted { .. })),
        "{refused:?}"
    );
    assert_eq!(balance(&store, token.id).await, limited(0, 100));
    let rows = debits_of(&store, token.id).await;
    assert_eq!(rows.len(), 20);
    let mut ids: Vec<_> = rows.iter().map(|r| r.request_id.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one ledger row per debited id");
}

on_every_database!(
    a_burst_on_a_refused_token_is_refused_whole,
    a_burst_on_a_refused_token_is_refused_whole
);
async fn a_burst_on_a_refused_token_is_refused_whole(db: TestDb) {
    let store = db.store().await;
    let (disabled, disabled_key) = new_token(&store, 1_000).await;
    disable(&store, disabled.id, NOW).await;
    let (expired, expired_key) = create(
        &store,
        NewToken {
            quota: 1_000,
            expires_at: Some(NOW),
            ..NewToken::default()
        },
    )
    .await;
    let unknown = TokenKey::generate().unwrap();

    for (key, id, refusal) in [
        (&disabled_key, Some(disabled.id), "disabled"),
        (&expired_key, Some(expired.id), "expired"),
        (&unknown, None, "unknown"),
    ] {
        let (first, repeats, refused) = burst(&store, key, 1, 16, 1).await;
        assert_eq!((first, repeats, refused.len()), (0, 0, 16), "{refusal}");
        for e in &refused {
            let expected = match refusal {
                "disabled" => matches!(e, QuotaError::TokenDisabled),
                "expired" => matches!(e, QuotaError::TokenExpired),
                _ => matches!(e, QuotaError::TokenNotFound),
            };
            assert!(expected, "{refusal}: {e:?}");
        }
        if let Some(id) = id {
            assert!(debits_of(&store, id).await.is_empty());
            assert_eq!(balance(&store, id).await, limited(1_000, 0));
        }
    }
}
