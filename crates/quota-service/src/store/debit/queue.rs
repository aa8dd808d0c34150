//! The queues: debits and hold calls wait here, per token, for a committer,
//! which settles the waiting calls of many tokens in one transaction.

use super::group::Work;
use super::sql::BatchError;
use crate::domain::{Debit, HoldOutcome, HoldTtl, KeyDigest, QuotaError, QuotaUnits};
use crate::store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// The most calls of one token one transaction settles.
const MAX_BATCH: usize = 256;
/// The most calls one group transaction takes (a token's batch may pass it).
const MAX_GROUP: usize = 256;
/// The most group transactions a store on a server database runs at once.
/// On SQLite, whose writes share one connection, one: a second committer
/// would only take the next group early and wait for the connection with
/// it, so that each transaction settled fewer calls.
const MAX_COMMITTERS: usize = 4;
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

/// A token's calls: those waiting, and whether a committer is settling some.
#[derive(Debug, Default)]
struct TokenQueue {
    waiting: Vec<Pending>,
    running: bool,
}

/// Every token's queue, and the tokens ready for a committer.
///
/// A token has an entry while it has waiting calls or a committer settles
/// some of them; it is in `ready` exactly when it has waiting calls and no
/// committer settles any of its calls, so a token is in at most one
/// transaction at a time and its calls are settled in arrival order.
#[derive(Debug, Default)]
struct State {
    tokens: HashMap<KeyDigest, TokenQueue>,
    ready: VecDeque<KeyDigest>,
    /// Committer tasks running.
    committers: usize,
    /// The most that may run.
    max_committers: usize,
}

/// The debit queues of a store.
#[derive(Debug)]
pub(crate) struct Queues(Mutex<State>);

impl Queues {
    /// The queues of a store whose writes share one connection (`single`:
    /// SQLite) or not.
    pub(crate) fn new(single: bool) -> Queues {
        Queues(Mutex::new(State {
            max_committers: if single { 1 } else { MAX_COMMITTERS },
            ..State::default()
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent at every unlock: a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Takes the next group: ready tokens in turn, each with its waiting
    /// calls (up to [`MAX_BATCH`]), until [`MAX_GROUP`] calls. A caller that
    /// has gone (cancelled, past its deadline) before its debit started is not
    /// debited: it was told it failed.
    fn take_group(&mut self) -> Vec<(KeyDigest, Vec<Pending>)> {
        let mut group = Vec::new();
        let mut calls = 0;
        while calls < MAX_GROUP {
            let Some(digest) = self.ready.pop_front() else {
                break;
            };
            let Some(queue) = self.tokens.get_mut(&digest) else {
                continue;
            };
            let take = queue.waiting.len().min(MAX_BATCH);
            let batch: Vec<Pending> = queue
                .waiting
                .drain(..take)
                .filter(|p| !p.reply.is_closed())
                .collect();
            queue.running = true;
            calls += batch.len();
            group.push((digest, batch));
        }
        group
    }

    /// A committer is done with `digests`: each is ready again if calls
    /// arrived meanwhile, else forgotten.
    fn finish(&mut self, digests: impl IntoIterator<Item = KeyDigest>) {
        for digest in digests {
            let Some(queue) = self.tokens.get_mut(&digest) else {
                continue;
            };
            queue.running = false;
            if queue.waiting.is_empty() {
                self.tokens.remove(&digest);
            } else {
                self.ready.push_back(digest);
            }
        }
    }

    /// Takes every waiting call of every token: once a transaction found the
    /// database unreachable or silent, the calls behind it would only wait
    /// as long again (a token's next transaction, or a free committer)
    /// before meeting the same database. None of them has started.
    fn take_all_waiting(&mut self) -> Vec<Pending> {
        let mut taken = Vec::new();
        for queue in self.tokens.values_mut() {
            taken.append(&mut queue.waiting);
        }
        // A token no committer holds has nothing left: forgotten, and no
        // longer ready. Those held are finished by their committers.
        self.tokens.retain(|_, queue| queue.running);
        self.ready.clear();
        taken
    }

    /// Counts a new committer if one is wanted: work is ready and fewer than
    /// the most that may run.
    fn want_committer(&mut self) -> bool {
        let wanted = !self.ready.is_empty() && self.committers < self.max_committers;
        if wanted {
            self.committers += 1;
        }
        wanted
    }
}

/// Hands a group's tokens back if its committer ends without doing so (a
/// panic), so that later calls of those tokens are settled again.
struct GroupGuard {
    store: Store,
    digests: Vec<KeyDigest>,
    done: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let respawn = {
            let mut state = self.store.queues.lock();
            state.finish(std::mem::take(&mut self.digests));
            state.committers -= 1;
            state.want_committer()
        };
        if respawn {
            tokio::spawn(self.store.clone().commit());
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

    /// Queues `op` for the token whose key has `digest` (starting a
    /// committer if none is free) and waits for its outcome.
    pub(super) async fn enqueue(
        &self,
        digest: &KeyDigest,
        op: Op,
        now: i64,
    ) -> Result<Outcome, QuotaError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { op, now, reply };
        let start_committer = {
            let mut state = self.queues.lock();
            let queue = state.tokens.entry(digest.clone()).or_default();
            let was_ready = !queue.running && !queue.waiting.is_empty();
            if queue.waiting.len() >= MAX_WAITING {
                // Callers that have gone do not hold a place.
                queue.waiting.retain(|p| !p.reply.is_closed());
            }
            if queue.waiting.len() >= MAX_WAITING {
                return Err(QuotaError::Busy(format!(
                    "{MAX_WAITING} debits are already waiting for one token"
                )));
            }
            queue.waiting.push(pending);
            // A token that just became ready may want a committer of its own.
            let newly_ready = !was_ready && !queue.running;
            if newly_ready {
                state.ready.push_back(digest.clone());
            }
            newly_ready && state.want_committer()
        };
        if start_committer {
            tokio::spawn(self.clone().commit());
        }
        answer
            .await
            .map_err(|_| QuotaError::Internal("the debit worker stopped before answering".into()))?
    }

    /// A committer: settles groups of ready tokens, one transaction each,
    /// until no token is ready.
    async fn commit(self) {
        loop {
            let group = {
                let mut state = self.queues.lock();
                let group = state.take_group();
                if group.is_empty() {
                    state.committers -= 1;
                    return;
                }
                group
            };
            let mut guard = GroupGuard {
                store: self.clone(),
                digests: group.iter().map(|(d, _)| d.clone()).collect(),
                done: false,
            };
            let unavailable = self.run_group(group).await;
            guard.done = true;
            let failed = {
                let mut state = self.queues.lock();
                state.finish(std::mem::take(&mut guard.digests));
                match &unavailable {
                    Some(_) => state.take_all_waiting(),
                    None => Vec::new(),
                }
            };
            if let Some(err) = unavailable {
                for p in failed {
                    let _ = p.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Settles one group: a single token's batch as [`Store::run_batch`]
    /// does; several tokens in one transaction, falling back to one
    /// transaction per token if that fails for any reason but an unreachable
    /// database (a statement one token's calls make fail must not fail the
    /// others'). Every transaction is bounded ([`Store::bounded`]), so a
    /// database that stops answering holds neither the group's tokens nor
    /// the committer for longer. Returns the error of an unreachable or
    /// silent database, if one answered a call.
    async fn run_group(&self, group: Vec<(KeyDigest, Vec<Pending>)>) -> Option<QuotaError> {
        let mut group: Vec<(KeyDigest, Vec<Pending>)> =
            group.into_iter().filter(|(_, b)| !b.is_empty()).collect();
        if group.len() <= 1 {
            let (digest, batch) = group.pop()?;
            return self.run_batch(&digest, batch).await;
        }
        let work: Vec<Work<'_>> = group
            .iter()
            .map(|(digest, batch)| (digest, batch.iter().map(|p| (&p.op, p.now)).collect()))
            .collect();
        let result = self.bounded(self.apply_group(&work)).await;
        drop(work);
        match result {
            Ok(outcomes) => {
                for ((_, batch), outcomes) in group.into_iter().zip(outcomes) {
                    for (p, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = p.reply.send(outcome);
                    }
                }
                None
            }
            Err(BatchError::Failed(err @ QuotaError::Unavailable(_))) => {
                for p in group.into_iter().flat_map(|(_, batch)| batch) {
                    let _ = p.reply.send(Err(err.clone()));
                }
                Some(err)
            }
            Err(_) => {
                let mut unavailable = None;
                for (digest, batch) in group {
                    match &unavailable {
                        // The database is not answering: the rest would wait as long.
                        Some(err) => {
                            for p in batch {
                                let _ = p.reply.send(Err(QuotaError::clone(err)));
                            }
                        }
                        None => unavailable = self.run_batch(&digest, batch).await,
                    }
                }
                unavailable
            }
        }
    }

    /// Settles one token's batch: a lone debit or reserve with the single
    /// conditional UPDATE, anything else in one transaction under the token's
    /// row lock.
    /// Returns the error of an unreachable or silent database, if one
    /// answered a call.
    async fn run_batch(&self, digest: &KeyDigest, mut batch: Vec<Pending>) -> Option<QuotaError> {
        if let [
            Pending {
                op: op @ (Op::Consume { .. } | Op::Reserve { .. }),
                now,
                ..
            },
        ] = batch.as_slice()
        {
            let outcome = self.bounded(self.run_one(digest, op, *now)).await;
            let unavailable = unreachable(&outcome);
            if let Some(p) = batch.pop() {
                let _ = p.reply.send(outcome);
            }
            return unavailable;
        }
        let ops: Vec<(&Op, i64)> = batch.iter().map(|p| (&p.op, p.now)).collect();
        let result = self.bounded(self.apply_batch(digest, ops)).await;
        match result {
            Ok(outcomes) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.reply.send(outcome);
                }
                None
            }
            // Not expected under the row lock, but the index has the last word:
            // settle each call on its own.
            Err(BatchError::Duplicate) => {
                let mut unavailable = None;
                for p in batch {
                    let outcome = match &unavailable {
                        Some(err) => Err(QuotaError::clone(err)),
                        None => self.bounded(self.apply_one(digest, &p.op, p.now)).await,
                    };
                    unavailable = unavailable.or(unreachable(&outcome));
                    let _ = p.reply.send(outcome);
                }
                unavailable
            }
            Err(BatchError::Deadlock(err) | BatchError::Failed(err)) => {
                for p in batch {
                    let _ = p.reply.send(Err(err.clone()));
                }
                matches!(err, QuotaError::Unavailable(_)).then_some(err)
            }
        }
    }
}

/// The error of an outcome that says the database is unreachable or silent.
fn unreachable<T>(outcome: &Result<T, QuotaError>) -> Option<QuotaError> {
    match outcome {
        Err(err @ QuotaError::Unavailable(_)) => Some(err.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `n` tokens ready and asks for a committer after each, as
    /// `enqueue` does; returns how many were granted.
    fn committers_for(queues: &Queues, n: usize) -> usize {
        let mut state = queues.lock();
        (0..n)
            .filter(|i| {
                let digest = KeyDigest::of(&format!("sk-{i:048}"));
                state.ready.push_back(digest);
                state.want_committer()
            })
            .count()
    }

    #[test]
    fn one_connection_gets_one_committer_and_a_server_four() {
        assert_eq!(committers_for(&Queues::new(true), 10), 1);
        assert_eq!(committers_for(&Queues::new(false), 10), MAX_COMMITTERS);
    }
}
