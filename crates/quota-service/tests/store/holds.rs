//! Hold calls in the store, one at a time and in batches: the rows each
//! writes (counters, holds, ledger, usage per day) and its answer, every
//! state of a request id, and a batch that makes holds while it settles and
//! releases others.

use crate::helpers::*;
use quota_service::domain::{HoldOutcome, HoldState, HoldTtl};
use quota_service::store::entity::hold;

const TTL: i64 = 600;

fn ttl() -> HoldTtl {
    HoldTtl::parse(TTL).unwrap()
}

async fn holds_of(store: &Store, token_id: i64) -> Vec<hold::Model> {
    hold::Entity::find()
        .filter(hold::Column::TokenId.eq(token_id))
        .order_by_asc(hold::Column::Id)
        .all(store.connection())
        .await
        .unwrap()
}

async fn row_of(store: &Store, id: i64) -> token::Model {
    token::Entity::find_by_id(id)
        .one(store.connection())
        .await
        .unwrap()
        .unwrap()
}

async fn usage_of(store: &Store, token_id: i64) -> Vec<(i64, i64)> {
    usage_day::Entity::find()
        .filter(usage_day::Column::TokenId.eq(token_id))
        .order_by_asc(usage_day::Column::Day)
        .all(store.connection())
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.day, d.units))
        .collect()
}

on_every_database!(
    a_reserve_and_its_settle_write_their_rows_and_answers,
    lone_reserve_and_settle
);
async fn lone_reserve_and_settle(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let digest = key.digest();

    let held = store
        .reserve(&digest, units(30), "r1", ttl(), NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        held,
        HoldOutcome {
            balance: limited(100, 0),
            held: 30,
            repeat: false,
            expires_at: NOW + 1 + TTL,
            overdraft: 0,
        }
    );
    let row = row_of(&store, tok.id).await;
    assert_eq!((row.remaining, row.used, row.held), (100, 0, 30));
    assert_eq!(row.updated_at, NOW + 1);
    let holds = holds_of(&store, tok.id).await;
    assert_eq!(holds.len(), 1);
    let h = &holds[0];
    assert_eq!(
        (h.request_id.as_str(), h.units, h.expires_at, h.state),
        ("r1", 30, NOW + 1 + TTL, 1)
    );
    assert_eq!((h.created_at, h.updated_at), (NOW + 1, NOW + 1));
    // A second hold counts the first.
    let second = store
        .reserve(&digest, units(50), "r2", ttl(), NOW + 2)
        .await
        .unwrap();
    assert_eq!((second.balance, second.held), (limited(100, 0), 80));
    // 20 spendable: 21 is refused, and nothing is written.
    assert_exhausted(
        store
            .reserve(&digest, units(21), "r3", ttl(), NOW + 2)
            .await,
        20,
        21,
    );
    assert_eq!(holds_of(&store, tok.id).await.len(), 2);

    // Settled below the hold: the rest is freed.
    let settled = store.settle(&digest, "r1", 12, NOW + 3).await.unwrap();
    assert_eq!(
        settled,
        HoldOutcome {
            balance: limited(88, 12),
            held: 50,
            repeat: false,
            expires_at: NOW + 1 + TTL,
            overdraft: 0,
        }
    );
    let row = row_of(&store, tok.id).await;
    assert_eq!((row.remaining, row.used, row.held), (88, 12, 50));
    assert_eq!(row.updated_at, NOW + 3);
    let h = &holds_of(&store, tok.id).await[0];
    assert_eq!((h.state, h.updated_at, h.created_at), (2, NOW + 3, NOW + 1));
    let debits = debits_of(&store, tok.id).await;
    assert_eq!(debits.len(), 1);
    assert_eq!(
        (
            debits[0].units,
            debits[0].request_id.as_deref(),
            debits[0].created_at
        ),
        (12, Some("r1"), NOW + 3)
    );
    assert_eq!(usage_of(&store, tok.id).await, vec![(DAY0, 12)]);
    // A settle of the whole hold, and one of 0: both debits, both days counted.
    let all = store.settle(&digest, "r2", 50, NOW + 4).await.unwrap();
    assert_eq!(
        (all.balance, all.held, all.overdraft),
        (limited(38, 62), 0, 0)
    );
    store
        .reserve(&digest, units(5), "r4", ttl(), NOW + DAY)
        .await
        .unwrap();
    let zero = store.settle(&digest, "r4", 0, NOW + DAY).await.unwrap();
    assert_eq!((zero.balance, zero.held), (limited(38, 62), 0));
    assert_eq!(
        usage_of(&store, tok.id).await,
        vec![(DAY0, 62), (DAY0 + DAY, 0)]
    );

    // Repeats: the settled hold answers a repeat to both calls, unchanged.
    let again = store.settle(&digest, "r1", 12, NOW + 5).await.unwrap();
    assert!(again.repeat);
    assert_eq!((again.balance, again.held), (limited(38, 62), 0));
    let again = store
        .reserve(&digest, units(30), "r1", ttl(), NOW + 5)
        .await
        .unwrap();
    assert!(again.repeat);
    assert_eq!(again.expires_at, NOW + 1 + TTL);
    assert_eq!(debits_of(&store, tok.id).await.len(), 3);
    assert_verified(&store).await;
}

on_every_database!(
    hold_calls_answer_every_state_of_a_request_id,
    lone_calls_that_fall_back
);
async fn lone_calls_that_fall_back(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let digest = key.digest();

    // A live hold repeated: a repeat, nothing more held.
    store
        .reserve(&digest, units(10), "live", ttl(), NOW)
        .await
        .unwrap();
    let again = store
        .reserve(&digest, units(10), "live", ttl(), NOW + 1)
        .await
        .unwrap();
    assert!(again.repeat);
    assert_eq!((again.held, again.expires_at), (10, NOW + TTL));

    // A `Consume` debit's id: ALREADY_EXISTS for every hold call, and the
    // other way round.
    consume(&store, &key, 1, Some("debit")).await.unwrap();
    for result in [
        store
            .reserve(&digest, units(1), "debit", ttl(), NOW)
            .await
            .map(|_| ()),
        store.settle(&digest, "debit", 1, NOW).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(QuotaError::RequestIdInUse(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        consume(&store, &key, 1, Some("live")).await,
        Err(QuotaError::RequestIdInUse(_))
    ));
    // Unknown ids: NOT_FOUND.
    assert!(matches!(
        store.settle(&digest, "nothing", 1, NOW).await,
        Err(QuotaError::HoldNotFound)
    ));

    // A settle above its hold takes the rest from the balance, past it as
    // overdraft: 99 remaining, 10 held by "live" (freed), 30 held by "other".
    store
        .reserve(&digest, units(30), "other", ttl(), NOW)
        .await
        .unwrap();
    let over = store.settle(&digest, "live", 85, NOW + 2).await.unwrap();
    assert_eq!(over.balance, limited(14, 86));
    assert_eq!((over.held, over.overdraft), (30, 16));

    // A hold expired but not swept: the next Reserve sweeps it, and its
    // answer counts only unexpired holds.
    let later = NOW + TTL + 1;
    store
        .grant(&TokenLocator::Id(tok.id), units(100), later)
        .await
        .unwrap();
    let fresh = store
        .reserve(&digest, units(5), "fresh", ttl(), later)
        .await
        .unwrap();
    assert_eq!((fresh.balance, fresh.held), (limited(114, 86), 5));
    let other = holds_of(&store, tok.id)
        .await
        .into_iter()
        .find(|h| h.request_id == "other")
        .unwrap();
    assert_eq!((other.state, other.updated_at), (4, later));
    // An expired hold: Reserve refuses it, Settle takes it from the balance.
    assert!(matches!(
        store
            .reserve(&digest, units(30), "other", ttl(), later)
            .await,
        Err(QuotaError::HoldExpired)
    ));
    let expired = store.settle(&digest, "other", 4, later).await.unwrap();
    assert_eq!((expired.balance, expired.held), (limited(110, 90), 5));
    // A released hold: both calls refuse it.
    store.release(&digest, "fresh", later).await.unwrap();
    assert!(matches!(
        store.settle(&digest, "fresh", 1, later).await,
        Err(QuotaError::HoldReleased)
    ));
    assert!(matches!(
        store
            .reserve(&digest, units(1), "fresh", ttl(), later)
            .await,
        Err(QuotaError::HoldReleased)
    ));
    // A disabled token holds nothing, but its hold still settles.
    store
        .reserve(&digest, units(7), "before", ttl(), later)
        .await
        .unwrap();
    disable(&store, tok.id, later).await;
    assert!(matches!(
        store
            .reserve(&digest, units(1), "after", ttl(), later)
            .await,
        Err(QuotaError::TokenDisabled)
    ));
    let settled = store.settle(&digest, "before", 7, later).await.unwrap();
    assert_eq!((settled.balance, settled.held), (limited(103, 97), 0));
    assert_verified(&store).await;
}

on_every_database!(
    a_batch_that_makes_holds_and_settles_others_answers_each_call,
    batch_of_new_and_changed_holds
);
async fn batch_of_new_and_changed_holds(db: TestDb) {
    const HOLDS: i64 = 40;
    let store = db.store().await;
    let (tok, key) = new_token(&store, 10_000).await;
    let digest = key.digest();
    for i in 0..HOLDS {
        store
            .reserve(&digest, units(10), &format!("old-{i}"), ttl(), NOW)
            .await
            .unwrap();
    }
    consume(&store, &key, 1, Some("debit")).await.unwrap();
    // At once: new holds, settles and releases of the old ones, repeats of
    // both, and ids of the debit; most of them wait behind the first and
    // are written together.
    let mut tasks = Vec::new();
    for i in 0..HOLDS {
        let (s, d) = (store.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let (new, old) = (format!("new-{i}"), format!("old-{i}"));
            let changed = async {
                match i % 3 {
                    0 => s.settle(&d, &old, 4, NOW + 1).await,
                    1 => s.release(&d, &old, NOW + 1).await,
                    _ => s.reserve(&d, units(10), &old, ttl(), NOW + 1).await,
                }
            };
            let (new, changed, debit) = tokio::join!(
                s.reserve(&d, units(3), &new, ttl(), NOW + 1),
                changed,
                s.reserve(&d, units(1), "debit", ttl(), NOW + 1),
            );
            (i, new, changed, debit)
        }));
    }
    for task in tasks {
        let (i, new, changed, debit) = task.await.unwrap();
        let new = new.unwrap();
        assert!(!new.repeat, "new-{i}");
        assert_eq!(new.expires_at, NOW + 1 + TTL);
        let changed = changed.unwrap();
        assert_eq!(changed.repeat, i % 3 == 2, "old-{i}");
        assert!(
            matches!(debit, Err(QuotaError::RequestIdInUse(_))),
            "{debit:?}"
        );
    }
    let holds = holds_of(&store, tok.id).await;
    assert_eq!(holds.len(), 2 * HOLDS as usize);
    for h in &holds {
        let i: i64 = h.request_id[4..].parse().unwrap();
        let (state, units, updated) = match (&h.request_id[..4], i % 3) {
            ("new-", _) => (1, 3, NOW + 1),
            (_, 0) => (2, 10, NOW + 1),
            (_, 1) => (3, 10, NOW + 1),
            _ => (1, 10, NOW),
        };
        assert_eq!(
            (h.state, h.units, h.updated_at),
            (state, units, updated),
            "{}",
            h.request_id
        );
        assert_eq!(h.expires_at, h.created_at + TTL, "{}", h.request_id);
    }
    let settles = (0..HOLDS).filter(|i| i % 3 == 0).count() as i64;
    let kept = HOLDS - settles - (0..HOLDS).filter(|i| i % 3 == 1).count() as i64;
    let row = row_of(&store, tok.id).await;
    assert_eq!(
        (row.remaining, row.used, row.held),
        (
            10_000 - 1 - 4 * settles,
            1 + 4 * settles,
            3 * HOLDS + 10 * kept
        )
    );
    assert_verified(&store).await;
}

on_every_database!(
    a_burst_of_reserves_finds_the_ids_that_name_debits,
    reserves_reusing_debit_ids
);
/// A burst of reserves over several tokens, from many callers at once, so
/// that groups mix them: some ids name a `Consume` debit of their token
/// (some of those within the balance, some beyond it: `ALREADY_EXISTS`
/// either way), the rest are new. Each answer is exact and nothing of a
/// refused reserve is written.
async fn reserves_reusing_debit_ids(db: TestDb) {
    const TOKENS: usize = 6;
    const IDS: usize = 24;
    let store = db.store().await;
    let mut tokens = Vec::new();
    for _ in 0..TOKENS {
        let (tok, key) = new_token(&store, 1_000).await;
        for i in (0..IDS).step_by(3) {
            consume(&store, &key, 1, Some(&format!("id-{i}")))
                .await
                .unwrap();
        }
        tokens.push((tok, key));
    }
    let mut tasks = Vec::new();
    for (t, (_, key)) in tokens.iter().enumerate() {
        for i in 0..IDS {
            let (store, digest) = (store.clone(), key.digest());
            // Every sixth id names a debit and asks more than the balance.
            let quota = if i % 6 == 0 { 5_000 } else { 10 };
            tasks.push(tokio::spawn(async move {
                let answer = store
                    .reserve(&digest, units(quota), &format!("id-{i}"), ttl(), NOW)
                    .await;
                (t, i, answer)
            }));
        }
    }
    for task in tasks {
        let (t, i, answer) = task.await.unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(answer, Err(QuotaError::RequestIdInUse(_))),
                "token {t}, id-{i}: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "token {t}, id-{i}: {answer:?}");
        }
    }
    let debits = (IDS / 3) as i64;
    let granted = (IDS - IDS / 3) as i64;
    for (tok, _) in &tokens {
        let row = row_of(&store, tok.id).await;
        assert_eq!(
            (row.remaining, row.used, row.held),
            (1_000 - debits, debits, 10 * granted)
        );
        let holds = holds_of(&store, tok.id).await;
        assert_eq!(holds.len() as i64, granted);
        for h in &holds {
            let i: usize = h.request_id["id-".len()..].parse().unwrap();
            assert_ne!(i % 3, 0, "a hold was written under a debit's id");
        }
    }
    assert_verified(&store).await;
}

on_every_database!(
    a_burst_of_settles_and_releases_finds_what_each_id_names,
    settles_and_releases_naming_holds_debits_and_nothing
);
/// A burst of settles and releases over several tokens, from many callers
/// at once, so that groups mix them: each id names a live hold of its
/// token, a `Consume` debit of it (`ALREADY_EXISTS`) or nothing
/// (`NOT_FOUND`). Neighbouring tokens swap which ids are holds and which
/// are debits, so an id is a hold of one token of a group and a debit of
/// another: only the (token, id) pair decides.
async fn settles_and_releases_naming_holds_debits_and_nothing(db: TestDb) {
    const TOKENS: usize = 6;
    const IDS: usize = 24;
    /// What an id names for its token.
    #[derive(Clone, Copy, PartialEq)]
    enum Names {
        Hold,
        Debit,
        Nothing,
    }
    /// What id `i` names for token `t`.
    fn names(t: usize, i: usize) -> Names {
        match (i % 3, t % 2) {
            (2, _) => Names::Nothing,
            (0, 0) | (1, 1) => Names::Hold,
            _ => Names::Debit,
        }
    }
    let store = db.store().await;
    let mut tokens = Vec::new();
    for t in 0..TOKENS {
        let (tok, key) = new_token(&store, 1_000).await;
        for i in 0..IDS {
            let id = format!("id-{i}");
            match names(t, i) {
                Names::Hold => {
                    store
                        .reserve(&key.digest(), units(10), &id, ttl(), NOW)
                        .await
                        .unwrap();
                }
                Names::Debit => {
                    consume(&store, &key, 1, Some(&id)).await.unwrap();
                }
                Names::Nothing => {}
            }
        }
        tokens.push((tok, key));
    }
    let mut tasks = Vec::new();
    for (t, (_, key)) in tokens.iter().enumerate() {
        for i in 0..IDS {
            let (store, digest) = (store.clone(), key.digest());
            tasks.push(tokio::spawn(async move {
                let id = format!("id-{i}");
                // Even ids are settled at 4 units, odd ones released.
                let answer = if i % 2 == 0 {
                    store.settle(&digest, &id, 4, NOW + 1).await
                } else {
                    store.release(&digest, &id, NOW + 1).await
                };
                (t, i, answer)
            }));
        }
    }
    for task in tasks {
        let (t, i, answer) = task.await.unwrap();
        match names(t, i) {
            Names::Hold => assert!(answer.is_ok(), "token {t}, id-{i}: {answer:?}"),
            Names::Debit => assert!(
                matches!(answer, Err(QuotaError::RequestIdInUse(_))),
                "token {t}, id-{i}: {answer:?}"
            ),
            Names::Nothing => assert!(
                matches!(answer, Err(QuotaError::HoldNotFound)),
                "token {t}, id-{i}: {answer:?}"
            ),
        }
    }
    for (t, (tok, _)) in tokens.iter().enumerate() {
        let debits = (0..IDS).filter(|&i| names(t, i) == Names::Debit).count() as i64;
        let settled = (0..IDS)
            .filter(|&i| names(t, i) == Names::Hold && i % 2 == 0)
            .count() as i64;
        let row = row_of(&store, tok.id).await;
        assert_eq!(
            (row.remaining, row.used, row.held),
            (1_000 - debits - 4 * settled, debits + 4 * settled, 0),
            "token {t}"
        );
    }
    assert_verified(&store).await;
}

on_every_database!(
    a_settle_sweeps_an_expired_hold_and_counts_only_live_ones,
    a_settle_counts_no_expired_hold
);
/// A settle of less than its live hold while another hold of the token has
/// expired unswept: the expired hold is swept and not reported in `held`,
/// as every write at that time does.
async fn a_settle_counts_no_expired_hold(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let digest = key.digest();
    let short = HoldTtl::parse(1).unwrap();
    store
        .reserve(&digest, units(30), "old", short, NOW)
        .await
        .unwrap();
    store
        .reserve(&digest, units(20), "live", ttl(), NOW)
        .await
        .unwrap();
    let settled = store.settle(&digest, "live", 5, NOW + 2).await.unwrap();
    assert_eq!(
        (
            settled.held,
            settled.balance.remaining,
            settled.balance.used,
            settled.overdraft
        ),
        (0, 95, 5, 0)
    );
    let row = row_of(&store, tok.id).await;
    assert_eq!((row.remaining, row.used, row.held), (95, 5, 0));
    let states: Vec<(String, i16)> = holds_of(&store, tok.id)
        .await
        .into_iter()
        .map(|h| (h.request_id, h.state))
        .collect();
    assert_eq!(
        states,
        [
            ("old".to_owned(), HoldState::Expired.code()),
            ("live".to_owned(), HoldState::Settled.code())
        ]
    );
    assert_eq!(usage_of(&store, tok.id).await, [(DAY0, 5)]);
    assert_verified(&store).await;
}

on_every_database!(
    a_settle_that_would_overflow_used_is_refused_and_writes_nothing,
    a_settle_that_would_overflow_used
);
/// `used` one settle away from the largest number of units: a settle past
/// it is refused with INVALID_ARGUMENT and changes nothing; one up to it
/// succeeds.
async fn a_settle_that_would_overflow_used(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 100).await;
    let digest = key.digest();
    store
        .reserve(&digest, units(10), "r", ttl(), NOW)
        .await
        .unwrap();
    let near = i64::MAX - 5;
    token::Entity::update_many()
        .col_expr(token::Column::Used, sea_orm::sea_query::Expr::val(near))
        .filter(token::Column::Id.eq(tok.id))
        .exec(store.connection())
        .await
        .unwrap();
    let refused = store.settle(&digest, "r", 6, NOW + 1).await;
    assert!(
        matches!(refused, Err(QuotaError::InvalidArgument(_))),
        "{refused:?}"
    );
    let row = row_of(&store, tok.id).await;
    assert_eq!((row.remaining, row.used, row.held), (100, near, 10));
    assert_eq!(
        holds_of(&store, tok.id).await[0].state,
        HoldState::Live.code()
    );
    assert!(debits_of(&store, tok.id).await.is_empty());
    assert!(usage_of(&store, tok.id).await.is_empty());
    let settled = store.settle(&digest, "r", 5, NOW + 1).await.unwrap();
    assert_eq!(
        (
            settled.balance.used,
            settled.balance.remaining,
            settled.held
        ),
        (i64::MAX, 95, 0)
    );
    // No `assert_verified`: `used` was set by hand, past the ledger's sum.
}

on_every_database!(
    a_settle_and_a_release_of_one_hold_at_once_one_wins,
    a_settle_and_a_release_race
);
/// Every hold of a token settled on one replica and released on another at
/// the same moment (two stores on one database, each with its own queues,
/// so that the two calls meet only at the token's row lock; one store in
/// memory): exactly one of the two succeeds, the other is refused by the
/// state the winner left (released or settled), and the counters, the hold
/// rows, the ledger and the usage per day agree with the winners.
async fn a_settle_and_a_release_race(db: TestDb) {
    const HOLDS: usize = 40;
    let (settler, releaser) = (db.store().await, db.store().await);
    let (tok, key) = new_token(&settler, 10_000).await;
    let digest = key.digest();
    for i in 0..HOLDS {
        settler
            .reserve(&digest, units(10), &format!("h{i}"), ttl(), NOW)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..HOLDS {
        let (settler, releaser) = (settler.clone(), releaser.clone());
        let (to_settle, to_release) = (digest.clone(), digest.clone());
        let id = format!("h{i}");
        let same_id = id.clone();
        tasks.push(tokio::spawn(async move {
            let (settle, release) = tokio::join!(
                tokio::spawn(async move { settler.settle(&to_settle, &id, 4, NOW + 1).await }),
                tokio::spawn(async move { releaser.release(&to_release, &same_id, NOW + 1).await }),
            );
            (settle.unwrap(), release.unwrap())
        }));
    }
    let mut settled = 0;
    for task in tasks {
        match task.await.unwrap() {
            (Ok(_), Err(QuotaError::HoldSettled)) => settled += 1,
            (Err(QuotaError::HoldReleased), Ok(_)) => {}
            other => panic!("one of the two must win: {other:?}"),
        }
    }
    let row = row_of(&settler, tok.id).await;
    assert_eq!(
        (row.remaining, row.used, row.held),
        (10_000 - 4 * settled, 4 * settled, 0)
    );
    let holds = holds_of(&settler, tok.id).await;
    let in_state =
        |state: HoldState| holds.iter().filter(|h| h.state == state.code()).count() as i64;
    assert_eq!(
        (in_state(HoldState::Settled), in_state(HoldState::Released)),
        (settled, HOLDS as i64 - settled)
    );
    assert_eq!(debits_of(&settler, tok.id).await.len() as i64, settled);
    assert_verified(&settler).await;
}
