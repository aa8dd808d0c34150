//! Group commit: a burst of debits over many tokens, from many callers at
//! once, is settled in transactions that span tokens; each debit still gets
//! its own answer, and the ledger equals the counters.

use crate::helpers::*;
use quota_service::domain::HoldTtl;
use std::collections::HashMap;

/// Callers at once.
const CALLERS: usize = 32;
/// Tokens that can pay, each debited by [`DEBITS_PER_TOKEN`] distinct ids.
const PAYING: usize = 150;
const DEBITS_PER_TOKEN: i64 = 4;
/// Each paying token's quota: more than its debits cost.
const QUOTA: i64 = 1_000;
/// Tokens refused whatever they ask: disabled, exhausted (no quota), unknown.
const DISABLED: usize = 20;
const EXHAUSTED: usize = 20;
const UNKNOWN: usize = 10;
/// One token that affords exactly [`TIGHT_AFFORDS`] of its [`TIGHT_DEBITS`] one-unit debits.
const TIGHT_AFFORDS: i64 = 25;
const TIGHT_DEBITS: i64 = 40;

/// What a debit of the burst is, and so what it must be answered.
#[derive(Clone, Debug)]
enum Case {
    /// A distinct id of a paying token, sent twice: debited once, a repeat once.
    Paying {
        token: usize,
        units: i64,
    },
    /// A paying token's debit without a request id: debited.
    Anonymous,
    /// An id that names a hold of the token: ALREADY_EXISTS.
    NamesHold,
    Disabled,
    Exhausted,
    Unknown,
    /// One unit of the tight token.
    Tight,
}

struct Call {
    case: Case,
    key: TokenKey,
    units: i64,
    request_id: Option<String>,
}

/// The burst: every call, in an order that interleaves tokens and puts the
/// two copies of each duplicated id far apart.
fn burst(paying: &[TokenKey], refused: &[(Case, TokenKey)], tight: &TokenKey) -> Vec<Call> {
    let mut calls = Vec::new();
    for round in 0..2 {
        for j in 0..DEBITS_PER_TOKEN {
            for (t, key) in paying.iter().enumerate() {
                let units = j + 1;
                calls.push(Call {
                    case: Case::Paying { token: t, units },
                    key: key.clone(),
                    units,
                    request_id: Some(format!("pay-{j}")),
                });
                if round == 0 && j == 0 {
                    calls.push(Call {
                        case: Case::Anonymous,
                        key: key.clone(),
                        units: 1,
                        request_id: None,
                    });
                    calls.push(Call {
                        case: Case::NamesHold,
                        key: key.clone(),
                        units: 1,
                        request_id: Some("held".into()),
                    });
                }
            }
        }
        for (i, (case, key)) in refused.iter().enumerate() {
            calls.push(Call {
                case: case.clone(),
                key: key.clone(),
                units: i as i64 % 3 + 1,
                request_id: Some(format!("refused-{round}")),
            });
        }
    }
    for i in 0..TIGHT_DEBITS {
        calls.push(Call {
            case: Case::Tight,
            key: tight.clone(),
            units: 1,
            request_id: Some(format!("tight-{i}")),
        });
    }
    // A fixed stride through the calls: a shuffle without a random generator.
    let n = calls.len();
    let stride = (0..).map(|k| 97 + k).find(|s| gcd(*s, n) == 1).unwrap();
    let mut slots: Vec<Option<Call>> = calls.into_iter().map(Some).collect();
    (0..n)
        .map(|i| slots[(i * stride) % n].take().unwrap())
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Sends `calls` from [`CALLERS`] tasks, spread over `stores` in turn;
/// returns every answer with its call.
async fn send(stores: &[Store], calls: Vec<Call>) -> Vec<(Call, Result<Debit, QuotaError>)> {
    let mut lanes: Vec<Vec<Call>> = (0..CALLERS).map(|_| Vec::new()).collect();
    for (i, call) in calls.into_iter().enumerate() {
        lanes[i % CALLERS].push(call);
    }
    let mut tasks = Vec::new();
    for (i, lane) in lanes.into_iter().enumerate() {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for call in lane {
                let answer = store
                    .consume(
                        &call.key.digest(),
                        units(call.units),
                        call.request_id.as_deref(),
                        NOW,
                    )
                    .await;
                answers.push((call, answer));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("caller task"));
    }
    answers
}

async fn burst_over_many_tokens(stores: &[Store]) {
    let store = &stores[0];
    let mut paying = Vec::new();
    for _ in 0..PAYING {
        let (tok, key) = new_token(store, QUOTA).await;
        // A live hold of 10 units named "held".
        store
            .reserve(
                &key.digest(),
                units(10),
                "held",
                HoldTtl::parse(600).unwrap(),
                NOW,
            )
            .await
            .expect("reserve");
        paying.push((tok, key));
    }
    let mut refused = Vec::new();
    for _ in 0..DISABLED {
        let (tok, key) = new_token(store, QUOTA).await;
        disable(store, tok.id, NOW).await;
        refused.push((Case::Disabled, key));
    }
    for _ in 0..EXHAUSTED {
        let (_, key) = new_token(store, 0).await;
        refused.push((Case::Exhausted, key));
    }
    for _ in 0..UNKNOWN {
        refused.push((Case::Unknown, TokenKey::generate().unwrap()));
    }
    let (tight, tight_key) = new_token(store, TIGHT_AFFORDS).await;
    let keys: Vec<TokenKey> = paying.iter().map(|(_, k)| k.clone()).collect();
    let calls = burst(&keys, &refused, &tight_key);
    let total = calls.len();
    assert_eq!(
        total,
        PAYING * (2 * DEBITS_PER_TOKEN as usize + 2)
            + 2 * (DISABLED + EXHAUSTED + UNKNOWN)
            + TIGHT_DEBITS as usize
    );

    let answers = send(stores, calls).await;
    assert_eq!(answers.len(), total);
    // Per paying token and id: (first answers, repeats).
    let mut paid: HashMap<(usize, String), (i64, i64)> = HashMap::new();
    let (mut tight_debited, mut tight_refused) = (0, 0);
    for (call, answer) in answers {
        match (&call.case, answer) {
            (Case::Paying { token, units }, Ok(debit)) => {
                assert_eq!(call.units, *units);
                let id = call.request_id.clone().unwrap();
                let seen = paid.entry((*token, id)).or_default();
                if debit.repeat {
                    seen.1 += 1;
                } else {
                    seen.0 += 1;
                }
            }
            (Case::Anonymous, Ok(debit)) => assert!(!debit.repeat),
            (Case::NamesHold, Err(QuotaError::RequestIdInUse(what))) => {
                assert_eq!(what, "a hold")
            }
            (Case::Disabled, Err(QuotaError::TokenDisabled)) => {}
            (
                Case::Exhausted,
                Err(QuotaError::QuotaExhausted {
                    spendable: remaining,
                    requested,
                }),
            ) => {
                assert_eq!((remaining, requested), (0, call.units));
            }
            (Case::Unknown, Err(QuotaError::TokenNotFound)) => {}
            (Case::Tight, Ok(debit)) => {
                assert!(!debit.repeat);
                tight_debited += 1;
            }
            (
                Case::Tight,
                Err(QuotaError::QuotaExhausted {
                    spendable: remaining,
                    requested,
                }),
            ) => {
                assert_eq!((remaining, requested), (0, 1));
                tight_refused += 1;
            }
            (case, answer) => panic!("{case:?} ({:?}) was answered {answer:?}", call.request_id),
        }
    }
    assert_eq!(paid.len(), PAYING * DEBITS_PER_TOKEN as usize);
    assert!(paid.values().all(|seen| *seen == (1, 1)), "{paid:?}");
    assert_eq!(
        (tight_debited, tight_refused),
        (TIGHT_AFFORDS, TIGHT_DEBITS - TIGHT_AFFORDS)
    );

    // Each paying token: 1 + 2 + 3 + 4 by id, 1 without; 10 still held.
    let spent = (1..=DEBITS_PER_TOKEN).sum::<i64>() + 1;
    for (tok, _) in &paying {
        let after = store.token(&TokenLocator::Id(tok.id)).await.unwrap();
        assert_eq!(after.balance, limited(QUOTA - spent, spent));
        assert_eq!(after.held, 10);
        let debits = debits_of(store, tok.id).await;
        assert_eq!(debits.len() as i64, DEBITS_PER_TOKEN + 1);
        assert_eq!(debits.iter().map(|r| r.units).sum::<i64>(), spent);
    }
    assert_eq!(balance(store, tight.id).await, limited(0, TIGHT_AFFORDS));
    assert_eq!(debits_of(store, tight.id).await.len() as i64, TIGHT_AFFORDS);
    for (case, key) in &refused {
        if let Some(tok) = store.token_by_digest(&key.digest()).await.unwrap() {
            assert!(debits_of(store, tok.id).await.is_empty(), "{case:?}");
        }
    }
    let verification = assert_verified(store).await;
    assert_eq!(
        verification.tokens,
        (PAYING + DISABLED + EXHAUSTED + 1) as u64
    );
}

on_every_database!(a_burst_over_many_tokens_answers_each_debit, one_store);
async fn one_store(db: TestDb) {
    burst_over_many_tokens(&[db.store().await]).await;
}

on_every_database!(
    a_burst_over_many_tokens_on_two_replicas_answers_each_debit,
    two_replicas
);
async fn two_replicas(db: TestDb) {
    burst_over_many_tokens(&[db.store().await, db.store().await]).await;
}

/// Every PostgreSQL connection of the store plans each statement with its
/// values: a generic plan made while the ledger was small would read every
/// ledger row of a hot token to look up a group's request ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_plan_statements_with_their_values() {
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.store().await;
    // Four connections at once (each transaction holds its own), so that
    // more than the first one made is checked.
    let mut open = Vec::new();
    for _ in 0..4 {
        let txn = sea_orm::TransactionTrait::begin(store.connection())
            .await
            .unwrap();
        let row = txn
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Postgres,
                "SHOW plan_cache_mode",
            ))
            .await
            .unwrap()
            .unwrap();
        let mode: String = row.try_get_by_index(0).unwrap();
        assert_eq!(mode, "force_custom_plan");
        open.push(txn);
    }
}

/// Request ids that a statement binding its rows as JSON (SQLite's group
/// writes and look-ups) must carry exactly: quotes, a backslash, control
/// characters, non-ASCII text, and text that reads as JSON or a number.
const ODD_IDS: [&str; 9] = [
    "it's \"quoted\"",
    "back\\slash",
    "tab\tnew\nline\u{1}",
    "é 😀 中文",
    "[1,\"x\"]",
    "null",
    "123",
    " spaced ",
    "\u{202e}right-to-left",
];

on_every_database!(
    groups_write_and_find_any_request_id_exactly,
    odd_request_ids
);
async fn odd_request_ids(db: TestDb) {
    let store = db.store().await;
    let mut keys = Vec::new();
    for _ in 0..ODD_IDS.len() {
        keys.push(new_token(&store, 1_000).await);
    }
    let ttl = HoldTtl::parse(600).unwrap();
    // Every token at once: a consume and a reserve under each odd id (the
    // reserve's id prefixed), so that groups span tokens and mix both.
    let calls = |repeat: bool| {
        let store = store.clone();
        let keys = keys.clone();
        async move {
            let mut tasks = Vec::new();
            for ((_, key), id) in keys.iter().zip(ODD_IDS) {
                let (store, digest) = (store.clone(), key.digest());
                let held_id = format!("hold {id}");
                tasks.push(tokio::spawn(async move {
                    let debit = store
                        .consume(&digest, units(3), Some(id), NOW + 1)
                        .await
                        .unwrap();
                    let hold = store
                        .reserve(&digest, units(5), &held_id, ttl, NOW + 1)
                        .await
                        .unwrap();
                    (debit.repeat, hold.repeat)
                }));
            }
            for task in tasks {
                assert_eq!(task.await.unwrap(), (repeat, repeat));
            }
        }
    };
    calls(false).await;
    // Repeats, refusals and settles are decided under the row lock (the
    // group path, with its look-ups and writes) whether or not the calls
    // above met in groups.
    calls(true).await;
    for ((tok, key), id) in keys.iter().zip(ODD_IDS) {
        let held_id = format!("hold {id}");
        // Each id names the other kind's call: refused, whichever asks.
        assert!(matches!(
            store
                .reserve(&key.digest(), units(1), id, ttl, NOW + 2)
                .await,
            Err(QuotaError::RequestIdInUse(_))
        ));
        assert!(matches!(
            store
                .consume(&key.digest(), units(1), Some(&held_id), NOW + 2)
                .await,
            Err(QuotaError::RequestIdInUse(_))
        ));
        let settled = store
            .settle(&key.digest(), &held_id, 4, NOW + 2)
            .await
            .unwrap();
        assert_eq!((settled.held, settled.balance.used), (0, 7), "{id:?}");
        let ids: Vec<Option<String>> = debits_of(&store, tok.id)
            .await
            .into_iter()
            .map(|row| row.request_id)
            .collect();
        assert_eq!(ids, [Some(id.to_owned()), Some(held_id)], "{id:?}");
    }
    assert_verified(&store).await;
}
