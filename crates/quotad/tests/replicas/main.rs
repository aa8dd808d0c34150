//! Replicas as processes: three `quotad grpc` processes on one PostgreSQL
//! database, and three on one MariaDB database. Callers race `Consume`
//! debits and holds (`Reserve`, then `Settle` at the held cost) across all
//! of them, more than the tokens can pay for; one replica is SIGKILLed
//! mid-run and started again. Then:
//!
//! - the successful debits and settled holds of each token add up to at
//!   most its quota, and to exactly its quota, since demand exceeded it;
//! - every acknowledged request id is found again (a repeat) on every
//!   replica, the restarted one included, and the ledger holds exactly the
//!   acknowledged ids, none of the refused ones;
//! - each token's counters equal the sums of its ledger, nothing is left
//!   held, and the real `quotad verify` agrees (exit 0).
//!
//! A caller whose replica fails (killed, restarting) retries the same request
//! id on the next one, as a relay would; a request id makes that safe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../cli/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::*;
use quota::pb;
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::Store;
use quota_service::domain::{TokenLocator, unix_now};
use quota_service::store::NewToken;
use quota_service::store::entity::{KIND_DEBIT, KIND_GRANT, ledger};
use quota_service::testing::TestDb;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// `quotad grpc` processes on the one database.
const REPLICAS: usize = 3;
/// Tokens the callers debit, each from every replica.
const TOKENS: usize = 3;
/// Concurrent callers, each sending its debits one after the other.
const CALLERS: usize = 24;
/// Calls each caller makes: 960 in all, 320 per token; every 4th is a hold
/// (a Reserve, then its Settle), the others are debits.
const PER_CALLER: usize = 40;
/// Units of each debit and each hold (settled at exactly what it held).
const UNITS: i64 = 10;
/// Debits and holds each token can pay for: 200 of its 320.
const AFFORDABLE: i64 = 200;
/// Acknowledged debits after which replica 0 is killed.
const KILL_AFTER: usize = 150;
/// The most one run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The gRPC URL of each replica; a restarted replica has a new one.
type Urls = Arc<RwLock<Vec<String>>>;

fn start_replica(database_url: &str, dir: &Path) -> Server {
    let mut cmd = quotad();
    cmd.args(["grpc", "--database-url", database_url])
        .args(["--grpc-addr", "127.0.0.1:0"]);
    Server::spawn(cmd, dir, Serves::GRPC)
}

/// What a caller asks of a token under a request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// A debit of [`UNITS`].
    Consume,
    /// A hold of [`UNITS`] for ten minutes.
    Reserve,
    /// The hold turned into a debit of all it held.
    Settle,
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    request
}

/// Makes `call` through `client`: `(repeat, remaining)` when it succeeds.
async fn make(
    client: &mut QuotaServiceClient<Channel>,
    call: Call,
    key: &str,
    id: &str,
) -> Result<(bool, i64), tonic::Status> {
    let (token, request_id) = (key.to_owned(), id.to_owned());
    match call {
        Call::Consume => {
            let request = pb::ConsumeRequest {
                token,
                quota: UNITS,
                request_id,
            };
            let r = client.consume(admin(request)).await?.into_inner();
            Ok((r.repeat, r.remaining))
        }
        Call::Reserve => {
            let request = pb::ReserveRequest {
                token,
                quota: UNITS,
                request_id,
                ttl_seconds: 600,
            };
            let r = client.reserve(admin(request)).await?.into_inner();
            Ok((r.repeat, r.remaining))
        }
        Call::Settle => {
            let request = pb::SettleRequest {
                token,
                request_id,
                quota: UNITS,
            };
            let r = client.settle(admin(request)).await?.into_inner();
            assert_eq!(r.overdraft, 0, "{id}: a settle at the held cost overdrew");
            Ok((r.repeat, r.remaining))
        }
    }
}

/// A failure of the replica or the way to it, not an answer about the debit:
/// the same request id is sent again, elsewhere.
fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        // h2 reports a connection cut in the middle of a call as INTERNAL.
        Code::Internal => ["h2", "transport", "connection", "stream"]
            .iter()
            .any(|m| status.message().contains(m)),
        _ => false,
    }
}

/// One client per replica, reconnected when the replica's URL changes or a
/// call through it failed.
struct Clients {
    urls: Urls,
    clients: Vec<Option<(String, QuotaServiceClient<Channel>)>>,
}

impl Clients {
    fn new(urls: Urls) -> Clients {
        Clients {
            urls,
            clients: vec![None; REPLICAS],
        }
    }

    async fn get(&mut self, slot: usize) -> Option<QuotaServiceClient<Channel>> {
        let url = self.urls.read().unwrap()[slot].clone();
        if let Some((known, client)) = &self.clients[slot]
            && *known == url
        {
            return Some(client.clone());
        }
        let channel = Endpoint::from_shared(url.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .ok()?;
        let client = QuotaServiceClient::new(channel);
        self.clients[slot] = Some((url, client.clone()));
        Some(client)
    }

    fn forget(&mut self, slot: usize) {
        self.clients[slot] = None;
    }

    /// Sends one call until a replica answers for it: `Ok((repeat,
    /// remaining))` when it is acknowledged, `Err(())` when it is refused for
    /// want of quota.
    async fn send(
        &mut self,
        first_slot: usize,
        call: Call,
        key: &str,
        id: &str,
        retries: &AtomicUsize,
    ) -> Result<(bool, i64), ()> {
        let started = Instant::now();
        let mut slot = first_slot;
        loop {
            assert!(
                started.elapsed() < RUN_LIMIT,
                "no replica answered for {id} within {RUN_LIMIT:?}"
            );
            let answer = match self.get(slot).await {
                Some(mut client) => make(&mut client, call, key, id).await,
                None => Err(tonic::Status::unavailable("cannot connect")),
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert_ne!(call, Call::Settle, "{id}: a settle refused: {status:?}");
                    return Err(());
                }
                Err(status) if retryable(&status) => {
                    retries.fetch_add(1, Ordering::Relaxed);
                    self.forget(slot);
                    slot = (slot + 1) % REPLICAS;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("{id} on replica {slot}: {status:?}"),
            }
        }
    }
}

/// What the callers saw, per token: the acknowledged and the refused ids.
#[derive(Default)]
struct Seen {
    /// Debits acknowledged and holds settled.
    acked: Vec<BTreeSet<String>>,
    /// Of those, the holds.
    holds: Vec<BTreeSet<String>>,
    /// Debits and reserves refused for want of quota.
    refused: Vec<BTreeSet<String>>,
    /// The balance each first (not repeated) debit or settle left, per token.
    remaining: Vec<Vec<i64>>,
    /// Acknowledged as a repeat, per token: a call whose first answer was lost.
    repeats: Vec<usize>,
}

/// One caller's call of a token: a debit, or a hold and its settle. Its
/// outcome is that of the debit or the settle, or the reserve's refusal.
async fn debit_or_hold(
    clients: &mut Clients,
    slot: usize,
    hold: bool,
    key: &str,
    id: &str,
    retries: &AtomicUsize,
) -> Result<(bool, i64), ()> {
    if !hold {
        return clients.send(slot, Call::Consume, key, id, retries).await;
    }
    // A reserve repeated after a lost answer holds all the same; the
    // settle goes to the next replica.
    clients.send(slot, Call::Reserve, key, id, retries).await?;
    let slot = (slot + 1) % REPLICAS;
    clients.send(slot, Call::Settle, key, id, retries).await
}

async fn race(
    keys: &[String],
    urls: &Urls,
    acked: &Arc<AtomicUsize>,
    retries: &Arc<AtomicUsize>,
) -> Seen {
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let (keys, urls) = (keys.to_vec(), Arc::clone(urls));
        let (acked, retries) = (Arc::clone(acked), Arc::clone(retries));
        tasks.spawn(async move {
            let mut clients = Clients::new(urls);
            let mut seen = Vec::new();
            for i in 0..PER_CALLER {
                let token = (caller + i) % TOKENS;
                let hold = i % 4 == 3;
                let kind = if hold { "hold" } else { "debit" };
                let id = format!("caller{caller}-{kind}{i}");
                let slot = (caller + i) % REPLICAS;
                let outcome =
                    debit_or_hold(&mut clients, slot, hold, &keys[token], &id, &retries).await;
                if outcome.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                seen.push((token, id, hold, outcome));
            }
            seen
        });
    }
    let mut seen = Seen {
        acked: vec![BTreeSet::new(); TOKENS],
        holds: vec![BTreeSet::new(); TOKENS],
        refused: vec![BTreeSet::new(); TOKENS],
        remaining: vec![Vec::new(); TOKENS],
        repeats: vec![0; TOKENS],
    };
    while let Some(done) = tasks.join_next().await {
        for (token, id, hold, outcome) in done.unwrap() {
            match outcome {
                Ok((repeat, remaining)) => {
                    if repeat {
                        seen.repeats[token] += 1;
                    } else {
                        seen.remaining[token].push(remaining);
                    }
                    if hold {
                        seen.holds[token].insert(id.clone());
                    }
                    assert!(seen.acked[token].insert(id));
                }
                Err(()) => assert!(seen.refused[token].insert(id)),
            }
        }
    }
    seen
}

async fn ledger_of(store: &Store, token_id: i64, kind: i16) -> Vec<ledger::Model> {
    ledger::Entity::find()
        .filter(ledger::Column::TokenId.eq(token_id))
        .filter(ledger::Column::Kind.eq(kind))
        .all(store.connection())
        .await
        .unwrap()
}

fn replicas_on(db: TestDb, name: &str) {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new();
    let store = rt.block_on(db.store());
    let mut tokens = Vec::new();
    let mut keys = Vec::new();
    for t in 0..TOKENS {
        let new = NewToken {
            name: format!("shared-{t}"),
            quota: AFFORDABLE * UNITS,
            ..Default::default()
        };
        let (token, key) = rt.block_on(store.create_token(new, unix_now())).unwrap();
        tokens.push(token);
        keys.push(key.expose().to_owned());
    }

    let mut replicas: Vec<Server> = (0..REPLICAS)
        .map(|_| start_replica(&db.url, dir.path()))
        .collect();
    let urls: Urls = Arc::new(RwLock::new(
        replicas.iter().map(|r| r.grpc_url.clone()).collect(),
    ));
    let acked = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));

    // Replica 0 is SIGKILLed once KILL_AFTER debits are acknowledged, while
    // the callers go on, then started again on a new port.
    let victim = replicas.remove(0);
    let killer = {
        let (acked, urls, url) = (Arc::clone(&acked), Arc::clone(&urls), db.url.clone());
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + RUN_LIMIT;
            while acked.load(Ordering::Relaxed) < KILL_AFTER {
                assert!(
                    Instant::now() < deadline,
                    "debits never reached {KILL_AFTER}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            let killed_at = acked.load(Ordering::Relaxed);
            victim.signal("KILL");
            let mut victim = victim;
            let status = victim.child.wait_timeout(STOP_TIMEOUT).expect("killed");
            assert_eq!(status.signal(), Some(9), "{status:?}");
            let restarted = start_replica(&url, &dir);
            urls.write().unwrap()[0] = restarted.grpc_url.clone();
            (restarted, killed_at, acked.load(Ordering::Relaxed))
        })
    };
    let seen = rt.block_on(race(&keys, &urls, &acked, &retries));
    let (restarted, killed_at, back_at) = killer.join().unwrap();
    replicas.insert(0, restarted);
    let raced = started.elapsed();

    for (t, token) in tokens.iter().enumerate() {
        let (acked, refused) = (&seen.acked[t], &seen.refused[t]);
        assert_eq!(acked.len() + refused.len(), CALLERS * PER_CALLER / TOKENS);
        assert!(acked.is_disjoint(refused));
        // Never more than the quota, and all of it, since demand exceeded it.
        assert_eq!(acked.len() as i64, AFFORDABLE, "token {t}");
        assert!(seen.holds[t].is_subset(acked));
        // Each first debit or settle left a balance of its own, one debit
        // lower than another's: quota - k debits for distinct k, every k but
        // those whose answer was lost to the kill (acknowledged later as a
        // repeat).
        let mut left = seen.remaining[t].clone();
        left.sort_unstable();
        left.dedup();
        assert_eq!(left.len(), seen.remaining[t].len(), "token {t}: {left:?}");
        assert_eq!(
            left.len() + seen.repeats[t],
            AFFORDABLE as usize,
            "token {t}"
        );
        let possible: BTreeSet<i64> = (0..AFFORDABLE).map(|k| k * UNITS).collect();
        assert!(
            left.iter().all(|r| possible.contains(r)),
            "token {t}: {left:?}"
        );

        let after = rt
            .block_on(store.token(&TokenLocator::Id(token.id)))
            .unwrap();
        let balance = after.balance;
        assert_eq!(
            (balance.remaining, balance.used, after.held),
            (0, AFFORDABLE * UNITS, 0),
            "token {t}"
        );

        // The ledger: exactly the acknowledged ids, and the counters' sums.
        let debits = rt.block_on(ledger_of(&store, token.id, KIND_DEBIT));
        let ids: BTreeSet<String> = debits
            .iter()
            .map(|row| row.request_id.clone().unwrap())
            .collect();
        assert_eq!(ids.len(), debits.len(), "token {t}: an id debited twice");
        assert_eq!(&ids, acked, "token {t}: ledger and acknowledgements differ");
        assert_eq!(debits.iter().map(|r| r.units).sum::<i64>(), balance.used);
        let grants = rt.block_on(ledger_of(&store, token.id, KIND_GRANT));
        assert_eq!(
            grants.iter().map(|r| r.units).sum::<i64>(),
            balance.remaining + balance.used
        );
    }

    // Every acknowledged id is found again, on every replica.
    let checked = rt.block_on(async {
        // A debit is found by debiting again, a settled hold by settling again.
        let all: Vec<(usize, String, Call)> = (0..TOKENS)
            .flat_map(|t| {
                let holds = &seen.holds[t];
                seen.acked[t].iter().map(move |id| {
                    let call = if holds.contains(id) {
                        Call::Settle
                    } else {
                        Call::Consume
                    };
                    (t, id.clone(), call)
                })
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (caller, share) in all.chunks(all.len().div_ceil(CALLERS)).enumerate() {
            let (share, keys, urls) = (share.to_vec(), keys.clone(), Arc::clone(&urls));
            tasks.spawn(async move {
                let mut clients = Clients::new(urls);
                let unused = AtomicUsize::new(0);
                for (i, (t, id, call)) in share.iter().enumerate() {
                    let repeat = clients
                        .send((caller + i) % REPLICAS, *call, &keys[*t], id, &unused)
                        .await;
                    assert_eq!(
                        repeat,
                        Ok((true, 0)),
                        "token {t}: {id} is not a repeat of a sold-out token"
                    );
                }
                share.len()
            });
        }
        let mut checked = 0;
        while let Some(n) = tasks.join_next().await {
            checked += n.unwrap();
        }
        checked
    });

    for replica in replicas {
        let (status, log) = replica.stop_with("TERM");
        assert_eq!(status.code(), Some(0), "{status}\n{log}");
    }
    // The operator's check, as the operator runs it.
    let mut verify = quotad();
    verify.args(["verify", "--database-url", &db.url]);
    let out = run(verify, COMMAND_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout_of(&out),
        format!("{TOKENS} tokens checked: {TOKENS} agree with their ledger, 0 disagree\n")
    );
    eprintln!(
        "replicas on {name}: {REPLICAS} processes, {} debits and holds raced in {raced:.1?} \
         ({} acknowledged, {} of them holds, {} repeats after a lost answer; {} refused; {} retries), \
         replica 0 killed after {killed_at} and serving again after {back_at}; \
         {checked} acknowledged ids found again; {:.1?} in all",
        CALLERS * PER_CALLER,
        seen.acked.iter().map(BTreeSet::len).sum::<usize>(),
        seen.holds.iter().map(BTreeSet::len).sum::<usize>(),
        seen.repeats.iter().sum::<usize>(),
        seen.refused.iter().map(BTreeSet::len).sum::<usize>(),
        retries.load(Ordering::Relaxed),
        started.elapsed(),
    );
    drop(store);
    drop(db);
}

#[test]
fn three_processes_on_postgres_one_killed_never_oversell_or_lose_a_debit_or_hold() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(db) = rt.block_on(TestDb::postgres()) {
        drop(rt);
        replicas_on(db, "PostgreSQL");
    }
}

#[test]
fn three_processes_on_mariadb_one_killed_never_oversell_or_lose_a_debit_or_hold() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(db) = rt.block_on(TestDb::mysql()) {
        drop(rt);
        replicas_on(db, "MariaDB");
    }
}
