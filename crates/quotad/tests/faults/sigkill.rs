//! SIGKILL during a storm of debits, then a restart on the same database:
//! every acknowledged `request_id` is found (a repeat), nothing more is
//! debited for it, and `quotad verify` finds counters and ledger in agreement.

use crate::helpers::{Server, consume, describe, verify};
use quota::pb::quota_service_client::QuotaServiceClient;
use quota_service::testing::TestDb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CALLERS: usize = 16;
/// Debits acknowledged before the kill.
const BEFORE_KILL: usize = 200;

async fn acknowledged_debits_survive_sigkill(db: TestDb) {
    let mut server = Server::start(&db.url).await;
    let (key, _) = server.create_token(1_000_000_000).await;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let channel = server.channel().await;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = QuotaServiceClient::new(channel.clone());
            let (key, acknowledged) = (key.clone(), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                for n in 0..100_000 {
                    let id = format!("storm-{caller}-{n}");
                    match consume(&mut client, &key, &id).await {
                        Ok(debit) => {
                            assert!(!debit.repeat, "{id} was new");
                            acknowledged.lock().unwrap().push(id);
                        }
                        // The process is gone.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the storm is too slow"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.signal("KILL");
    for caller in callers {
        caller.await.unwrap();
    }
    let status = tokio::task::block_in_place(|| server.wait(Duration::from_secs(10)));
    assert_eq!(status.code(), None, "killed by a signal");
    let acknowledged = acknowledged.lock().unwrap().clone();

    let restarted = Server::start(&db.url).await;
    let channel = restarted.channel().await;
    let chunks: Vec<_> = acknowledged
        .chunks(acknowledged.len().div_ceil(CALLERS))
        .map(|ids| {
            let mut client = QuotaServiceClient::new(channel.clone());
            let (key, ids) = (key.clone(), ids.to_vec());
            tokio::spawn(async move {
                let mut used = 0;
                for id in ids {
                    let debit = consume(&mut client, &key, &id).await.unwrap();
                    assert!(debit.repeat, "acknowledged {id} was lost");
                    used = debit.used;
                }
                used
            })
        })
        .collect();
    let mut used = 0;
    for chunk in chunks {
        used = used.max(chunk.await.unwrap());
    }
    // Debits in flight at the kill may or may not have been made; none was
    // made twice, and none acknowledged is missing.
    assert!(used >= acknowledged.len() as i64, "{used}");
    assert!(used <= (acknowledged.len() + CALLERS) as i64, "{used}");

    let out = tokio::task::block_in_place(|| verify(&db.url));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_survives_sigkill() {
    acknowledged_debits_survive_sigkill(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_sigkill() {
    if let Some(db) = TestDb::postgres().await {
        acknowledged_debits_survive_sigkill(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_survives_sigkill() {
    if let Some(db) = TestDb::mysql().await {
        acknowledged_debits_survive_sigkill(db).await;
    }
}
