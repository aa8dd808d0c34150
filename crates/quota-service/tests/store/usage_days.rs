//! The usage per day (`quota_usage_days`) kept with every debit: after random
//! debits (alone and batched), holds settled and released, repeats, refusals
//! and deletes, it equals the ledger's debits summed per (token, UTC day), and
//! the usage answers equal a scan of the ledger.

use crate::helpers::*;
use migration::{Migrator, MigratorTrait};
use quota_service::domain::HoldTtl;
use sea_orm::ConnectionTrait;
use std::collections::BTreeMap;

/// A small deterministic generator (xorshift64*); the seed is in every
/// failure message, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        (Rng(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

type Days = BTreeMap<(i64, i64), i64>;

/// The ledger's debits summed per (token, UTC day): what the usage route
/// used to scan for.
async fn ledger_days(store: &Store) -> Days {
    let rows = ledger::Entity::find()
        .filter(ledger::Column::Kind.eq(KIND_DEBIT))
        .all(store.connection())
        .await
        .unwrap();
    let mut days = Days::new();
    for row in rows {
        *days
            .entry((row.token_id, day_start(row.created_at)))
            .or_insert(0) += row.units;
    }
    days
}

/// The rows of `quota_usage_days`.
async fn kept_days(store: &Store) -> Days {
    usage_day::Entity::find()
        .all(store.connection())
        .await
        .unwrap()
        .into_iter()
        .map(|row| ((row.token_id, row.day), row.units))
        .collect()
}

/// A token's days with spend within `[start, end)` by the ledger scan: a
/// day whose debits add up to 0 units is not one.
fn scanned(ledger: &Days, token_id: i64, start: Option<i64>, end: Option<i64>) -> Vec<DaySpend> {
    ledger
        .iter()
        .filter(|((id, day), units)| {
            *id == token_id
                && **units > 0
                && start.is_none_or(|s| *day >= s)
                && end.is_none_or(|e| *day < e)
        })
        .map(|(&(_, day), &units)| DaySpend { day, units })
        .collect()
}

/// What happened to the random operations, so that the test knows it
/// covered each kind.
#[derive(Debug, Default)]
struct Seen {
    debits: u32,
    refusals: u32,
    repeats: u32,
    settles: u32,
    releases: u32,
}

/// One random operation on the token `key` at `now`: a debit (new id, no id,
/// or an id used before), or a hold reserved then settled (sometimes for 0,
/// sometimes above the hold, sometimes a day later) or released.
async fn random_op(store: Store, key: TokenKey, n: u64, pick: u64, cost: i64, now: i64) -> Seen {
    let digest = key.digest();
    let mut seen = Seen::default();
    let id = format!("op-{n}");
    match pick {
        0..=3 => match store.consume(&digest, units(cost), Some(&id), now).await {
            Ok(_) => seen.debits += 1,
            Err(QuotaError::QuotaExhausted { .. }) => seen.refusals += 1,
            Err(e) => panic!("debit {id}: {e:?}"),
        },
        4 => match store.consume(&digest, units(cost), None, now).await {
            Ok(_) => seen.debits += 1,
            Err(QuotaError::QuotaExhausted { .. }) => seen.refusals += 1,
            Err(e) => panic!("debit without id: {e:?}"),
        },
        5 => {
            // An id that an earlier operation may have used: a repeat, a new
            // debit, or refused as naming a hold.
            let earlier = format!("op-{}", n / 2);
            match store
                .consume(&digest, units(cost), Some(&earlier), now)
                .await
            {
                Ok(debit) if debit.repeat => seen.repeats += 1,
                Ok(_) => seen.debits += 1,
                Err(QuotaError::QuotaExhausted { .. }) => seen.refusals += 1,
                Err(QuotaError::RequestIdInUse(_)) => {}
                Err(e) => panic!("debit {earlier}: {e:?}"),
            }
        }
        _ => {
            let ttl = HoldTtl::parse(600).unwrap();
            match store.reserve(&digest, units(cost), &id, ttl, now).await {
                Ok(_) => {}
                Err(QuotaError::QuotaExhausted { .. }) => {
                    seen.refusals += 1;
                    return seen;
                }
                // Operation 2n or 2n + 1, running at the same time, may have
                // debited this id first (as its `earlier`): it is a debit's now.
                Err(QuotaError::RequestIdInUse(_)) => return seen,
                Err(e) => panic!("reserve {id}: {e:?}"),
            }
            // Settled within the hour or the next day (a hold expired by
            // then is settled from the balance), or released.
            let (later, settled) = match pick {
                6 => (now + 60, Some(0)),
                7 => (now + 120, Some(cost / 2)),
                8 => (now + 180, Some(cost * 2)),
                9 => (now + DAY, Some(cost)),
                _ => (now + 30, None),
            };
            match settled {
                Some(spent) => {
                    store.settle(&digest, &id, spent, later).await.unwrap();
                    seen.settles += 1;
                }
                None => {
                    store.release(&digest, &id, later).await.unwrap();
                    seen.releases += 1;
                }
            }
        }
    }
    seen
}

on_every_database!(
    usage_days_equal_the_ledger_after_random_work,
    usage_days_equal_the_ledger_after_random_work
);
async fn usage_days_equal_the_ledger_after_random_work(db: TestDb) {
    let (mut rng, seed) = Rng::seeded();
    let store = db.store().await;
    // Plenty, little (refusals), unlimited, and one to delete half-way.
    let mut tokens = Vec::new();
    for (quota, unlimited) in [
        (2_000_000, false),
        (3_000, false),
        (0, true),
        (500_000, false),
    ] {
        let new = NewToken {
            quota,
            unlimited,
            ..NewToken::default()
        };
        tokens.push(create(&store, new).await);
    }
    let deleted = tokens[3].0.id;
    let mut seen = Seen::default();
    let mut n = 0u64;
    for round in 0..6i64 {
        // 24 operations at once over the tokens: a busy token's debits and
        // hold calls are written in batches, each at its own time, over two days.
        let base = DAY0 + round * DAY / 2;
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                n += 1;
                let (_, key) = &tokens[rng.below(tokens.len() as u64) as usize];
                let pick = rng.below(11);
                let cost = 1 + rng.below(700) as i64;
                let now = base + rng.below(DAY as u64) as i64;
                tokio::spawn(random_op(store.clone(), key.clone(), n, pick, cost, now))
            })
            .collect();
        for task in tasks {
            let got = task.await.unwrap();
            seen.debits += got.debits;
            seen.refusals += got.refusals;
            seen.repeats += got.repeats;
            seen.settles += got.settles;
            seen.releases += got.releases;
        }
        assert_eq!(
            kept_days(&store).await,
            ledger_days(&store).await,
            "seed {seed}, round {round}"
        );
        if round == 3 {
            store
                .delete_token(&TokenLocator::Id(deleted))
                .await
                .unwrap();
            tokens.pop();
        }
    }
    // A repeat on another day adds nothing to any day.
    let (first, key) = &tokens[0];
    let digest = key.digest();
    store
        .consume(&digest, units(11), Some("again"), DAY0 + 2)
        .await
        .unwrap();
    let before = kept_days(&store).await;
    let again = store
        .consume(&digest, units(11), Some("again"), DAY0 + 4 * DAY)
        .await
        .unwrap();
    assert!(again.repeat);
    assert_eq!(kept_days(&store).await, before, "seed {seed}");

    assert!(
        seen.debits > 0 && seen.refusals > 0 && seen.settles > 0 && seen.releases > 0,
        "seed {seed}: {seen:?}"
    );
    let ledger = ledger_days(&store).await;
    assert_eq!(kept_days(&store).await, ledger, "seed {seed}");
    assert!(
        ledger.keys().all(|(id, _)| *id != deleted),
        "seed {seed}: the deleted token's days are gone"
    );
    // The usage answers: all time, a month, windows that cut the days.
    for (token, _) in &tokens {
        for (start, end) in [
            (None, None),
            (Some(DAY0), Some(DAY0 + 30 * DAY)),
            (Some(DAY0 + DAY), Some(DAY0 + 3 * DAY)),
            (Some(DAY0 + 2 * DAY), None),
            (None, Some(DAY0 + DAY)),
        ] {
            assert_eq!(
                store
                    .daily_usage(token.id, UsageWindow { start, end })
                    .await
                    .unwrap(),
                scanned(&ledger, token.id, start, end),
                "seed {seed}, token {}, {start:?}..{end:?}",
                token.id
            );
        }
    }
    assert!(
        !scanned(&ledger, first.id, None, None).is_empty(),
        "seed {seed}"
    );
    let verified = store.verify().await.unwrap();
    assert!(verified.agrees(), "seed {seed}: {verified:?}");
}

on_every_database!(
    a_settle_counts_on_its_own_day,
    a_settle_counts_on_its_own_day
);
async fn a_settle_counts_on_its_own_day(db: TestDb) {
    let store = db.store().await;
    let (tok, key) = new_token(&store, 10_000).await;
    let digest = key.digest();
    let ttl = HoldTtl::parse(86_400).unwrap();
    // Held late on day 0, settled on day 1, where another is settled for 0;
    // one settled for 0 alone on day 2; one released on day 3.
    store
        .reserve(&digest, units(500), "late", ttl, DAY0 + DAY - 10)
        .await
        .unwrap();
    store
        .settle(&digest, "late", 320, DAY0 + DAY + 5)
        .await
        .unwrap();
    store
        .reserve(&digest, units(60), "beside", ttl, DAY0 + DAY + 6)
        .await
        .unwrap();
    store
        .settle(&digest, "beside", 0, DAY0 + DAY + 7)
        .await
        .unwrap();
    store
        .reserve(&digest, units(40), "free", ttl, DAY0 + 2 * DAY)
        .await
        .unwrap();
    store
        .settle(&digest, "free", 0, DAY0 + 2 * DAY + 1)
        .await
        .unwrap();
    store
        .reserve(&digest, units(70), "dropped", ttl, DAY0 + 3 * DAY)
        .await
        .unwrap();
    store
        .release(&digest, "dropped", DAY0 + 3 * DAY + 1)
        .await
        .unwrap();
    let spend = |day: i64, units: i64| DaySpend { day, units };
    let all = UsageWindow {
        start: None,
        end: None,
    };
    // Day 2 had no spend: it is not listed, in any window.
    assert_eq!(
        store.daily_usage(tok.id, all).await.unwrap(),
        [spend(DAY0 + DAY, 320)]
    );
    let from_day_2 = UsageWindow {
        start: Some(DAY0 + 2 * DAY),
        end: None,
    };
    assert_eq!(store.daily_usage(tok.id, from_day_2).await.unwrap(), []);
    // Its settle of 0 is still written, in the ledger and in the day's row.
    let kept = kept_days(&store).await;
    assert_eq!(kept.get(&(tok.id, DAY0 + 2 * DAY)), Some(&0));
    assert_eq!(kept, ledger_days(&store).await);
}

/// Tokens and a ledger written before the migration; the migration
/// backfills their days, and the usage answers are those of the ledger.
async fn the_migration_backfills_the_ledger(store: Store) {
    let sql = store.connection();
    Migrator::up(sql, Some(2)).await.unwrap();
    for id in [1, 2] {
        sql.execute_unprepared(&format!(
            "INSERT INTO quota_tokens (id, key_digest, display_prefix, name, remaining, used, \
             unlimited, status, created_at, updated_at) \
             VALUES ({id}, '{id:064}', 'sk-tok{id}…', '', 0, 0, FALSE, 1, 0, 0)"
        ))
        .await
        .unwrap();
    }
    // (token, kind, units, time): grants do not count; days end at UTC midnight.
    for (token, kind, units, at) in [
        (1, KIND_GRANT, 1_000, DAY0),
        (1, KIND_DEBIT, 10, DAY0),
        (1, KIND_DEBIT, 0, DAY0 + 9),
        (1, KIND_DEBIT, 20, DAY0 + DAY - 1),
        (1, KIND_DEBIT, 0, DAY0 + DAY),
        (1, KIND_DEBIT, 5, DAY0 + 40 * DAY + 7),
        (2, KIND_DEBIT, 300, DAY0 + 1),
    ] {
        sql.execute_unprepared(&format!(
            "INSERT INTO quota_ledger (token_id, kind, units, created_at) \
             VALUES ({token}, {kind}, {units}, {at})"
        ))
        .await
        .unwrap();
    }
    Migrator::up(sql, None).await.unwrap();
    let expected: Days = [
        ((1, DAY0), 30),
        ((1, DAY0 + DAY), 0),
        ((1, DAY0 + 40 * DAY), 5),
        ((2, DAY0), 300),
    ]
    .into();
    assert_eq!(kept_days(&store).await, expected);
    assert_eq!(ledger_days(&store).await, expected);
    let month = UsageWindow {
        start: Some(DAY0),
        end: Some(DAY0 + 30 * DAY),
    };
    // Day 1's debits add up to 0: no spend, not listed.
    assert_eq!(
        store.daily_usage(1, month).await.unwrap(),
        [DaySpend {
            day: DAY0,
            units: 30
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_backfills_the_ledger_on_sqlite_memory() {
    the_migration_backfills_the_ledger(Store::connect("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_backfills_the_ledger_on_sqlite() {
    let db = TestDb::sqlite_unmigrated();
    the_migration_backfills_the_ledger(db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_backfills_the_ledger_on_postgres() {
    if let Some(db) = TestDb::postgres_unmigrated().await {
        the_migration_backfills_the_ledger(db.store().await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_backfills_the_ledger_on_mysql() {
    if let Some(db) = TestDb::mysql_unmigrated().await {
        the_migration_backfills_the_ledger(db.store().await).await;
    }
}
