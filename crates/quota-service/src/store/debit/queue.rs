//! The per-token queue: debits and hold calls of a busy token wait here and
//! are settled together by one worker, a batch per transaction.

use super::sql::BatchError;
use crate::domain::{Debit, HoldOutcome, HoldTtl, KeyDigest, QuotaError, QuotaUnits};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// The most debits one transaction settles.
const MAX_BATCH: usize = 256;
/// The most debits that may wait for one token; more are refused as busy
/// (UNAVAILABLE, retryable) rather than queued without bound behind a stuck lock.
const MAX_WAITING: usize = 8192;

/// What a call asks of its token.
#[derive(Debug)]
pub(super) enum Op {
    /// `Consume`: a debit.
    Consume {
        units: QuotaUnits,
        request_id: Option<String>,
    },
    /// `Reserve`: a new hold.
    Reserve {
        units: QuotaUnits,
        request_id: String,
        ttl: HoldTtl,
    },
    /// `Settle`: a hold turned into a debit of `cost`.
    Settle { request_id: String, cost: i64 },
    /// `Release`: a hold freed.
    Release { request_id: String },
}

impl Op {
    /// The request id the operation names, if any.
    pub(super) fn request_id(&self) -> Option<&str> {
        match self {
            Op::Consume { request_id, .. } => request_id.as_deref(),
            Op::Reserve { request_id, .. }
            | Op::Settle { request_id, .. }
            | Op::Release { request_id } => Some(request_id),
        }
    }
}

/// The answer to an [`Op`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Outcome {
    /// To `Consume`.
    Debit(Debit),
    /// To `Reserve`, `Settle` or `Release`.
    Hold(HoldOutcome),
}

/// One call waiting for its token's next transaction.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) op: Op,
    pub(super) now: i64,
    reply: oneshot::Sender<Result<Outcome, QuotaError>>,
}

/// Debits waiting, per token. A token has an entry exactly while a worker
/// settles its debits; the worker removes the entry when the queue is empty.
#[derive(Debug, Default)]
pub(crate) struct Queues(Mutex<HashMap<KeyDigest, Vec<Pending>>>);

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyDigest, Vec<Pending>>> {
        // The map is consistent at every unlock: a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a token's queue if its worker ends without doing so (a panic),
/// so that the waiting callers are answered and later debits start afresh.
struct WorkerGuard {
    queues: Arc<Queues>,
    digest: KeyDigest,
    done: bool,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if !self.done {
            self.queues.lock().remove(&self.digest);
        }
    }
}

impl Store {
    /// Debits `units` from the token whose key has `digest`: all or nothing.
    ///
    /// Succeeds only for an enabled, unexpired token that is unlimited or has
    /// `remaining >= units`. Once a debit with a `request_id` has succeeded,
    /// repeats of that id succeed too and debit nothing more.
    pub async fn consume(
        &self,
        digest: &KeyDigest,
        units: QuotaUnits,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<Debit, QuotaError> {
        let op = Op::Consume {
            units,
            request_id: request_id.map(str::to_owned),
        };
        match self.enqueue(digest, op, now).await? {
            Outcome::Debit(debit) => Ok(debit),
            Outcome::Hold(_) => Err(QuotaError::Internal(
                "a debit was answered as a hold call".into(),
            )),
        }
    }

    /// Queues `op` for the token whose key has `digest` (starting its worker
    /// if none runs) and waits for its outcome.
    pub(super) async fn enqueue(
        &self,
        digest: &KeyDigest,
        op: Op,
        now: i64,
    ) -> Result<Outcome, QuotaError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { op, now, reply };
        let start_worker = {
            let mut queues = self.queues.lock();
            match queues.get_mut(digest) {
                Some(queue) => {
                    if queue.len() >= MAX_WAITING {
                        // Callers that have gone do not hold a place.
                        queue.retain(|p| !p.reply.is_closed());
                    }
                    if queue.len() >= MAX_WAITING {
                        return Err(QuotaError::Busy(format!(
                            "{MAX_WAITING} debits are already waiting for one token"
                        )));
                    }
                    queue.push(pending);
                    false
                }
                None => {
                    queues.insert(digest.clone(), vec![pending]);
                    true
                }
            }
        };
        if start_worker {
            tokio::spawn(self.clone().settle_queue(digest.clone()));
        }
        answer
            .await
            .map_err(|_| QuotaError::Internal("the debit worker stopped before answering".into()))?
    }

    /// Settles a token's queue, a batch at a time, until it is empty.
    async fn settle_queue(self, digest: KeyDigest) {
        let mut guard = WorkerGuard {
            queues: self.queues.clone(),
            digest,
            done: false,
        };
        loop {
            let batch: Vec<Pending> = {
                let mut queues = self.queues.lock();
                let Some(queue) = queues.get_mut(&guard.digest).filter(|q| !q.is_empty()) else {
                    queues.remove(&guard.digest);
                    guard.done = true;
                    return;
                };
                let take = queue.len().min(MAX_BATCH);
                // A caller that has gone (cancelled, past its deadline) before
                // its debit started is not debited: it was told it failed.
                queue
                    .drain(..take)
                    .filter(|p| !p.reply.is_closed())
                    .collect()
            };
            if !batch.is_empty() {
                self.run_batch(&guard.digest, batch).await;
            }
        }
    }

    /// Settles one batch: a lone debit with the single conditional UPDATE,
    /// anything else in one transaction under the token's row lock.
    async fn run_batch(&self, digest: &KeyDigest, mut batch: Vec<Pending>) {
        if let [
            Pending {
                op: Op::Consume { units, request_id },
                now,
                ..
            },
        ] = batch.as_slice()
        {
            let outcome = self
                .consume_one(digest, *units, request_id.as_deref(), *now)
                .await
                .map(Outcome::Debit);
            if let Some(p) = batch.pop() {
                let _ = p.reply.send(outcome);
            }
            return;
        }
        let ops: Vec<(&Op, i64)> = batch.iter().map(|p| (&p.op, p.now)).collect();
        match self.apply_batch(digest, &ops).await {
            Ok(outcomes) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.reply.send(outcome);
                }
            }
            // Not expected under the row lock, but the index has the last word:
            // settle each call on its own.
            Err(BatchError::Duplicate) => {
                for p in batch {
                    let outcome = self.apply_one(digest, &p.op, p.now).await;
                    let _ = p.reply.send(outcome);
                }
            }
            Err(BatchError::Failed(err)) => {
                for p in batch {
                    let _ = p.reply.send(Err(err.clone()));
                }
            }
        }
    }
}
