//! Group commit: one background task syncs the engine on behalf of every writer that asked for
//! durability while the previous sync was running, so N concurrent writers cost about two syncs
//! instead of N.
//!
//! Correctness: a writer applies its batch *before* it enqueues its request, and the task only
//! starts a flush after dequeuing that request, so the flush covers the batch. Writers that
//! pipeline (apply the next batch while waiting for the previous one) ask with a *mark*, the count
//! of batches applied when theirs was: a flush that had read a count at least that large before it
//! started covers them, so they need no flush of their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{Result, StorageError};

use super::engine::Engine;

/// A failed sync, shared by all its waiters (errors are not `Clone`).
type Waiter = oneshot::Sender<Result<(), Arc<StorageError>>>;

#[derive(Debug)]
pub(super) struct GroupCommit {
    requests: mpsc::UnboundedSender<Waiter>,
    flushes: Arc<AtomicU64>,
    /// The count of applied batches that the last successful flush is known to cover.
    durable: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts the flusher task; it ends when the `GroupCommit` is dropped. `applied` counts the
    /// batches applied so far; each writer increments it after its batch is applied.
    /// The task holds the engine weakly: the storage owns it, and closes it when dropped.
    pub(super) fn start(engine: Weak<dyn Engine>, applied: Arc<AtomicU64>) -> Self {
        let (requests, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let covered = durable.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(next) = rx.try_recv() {
                    waiters.push(next);
                }
                let engine = engine.clone();
                // Every batch counted here was applied before this flush starts, so it is covered.
                let covers = applied.load(Ordering::Acquire);
                let started = std::time::Instant::now();
                let outcome = tokio::task::spawn_blocking(move || match engine.upgrade() {
                    Some(engine) => engine.sync(),
                    None => Err(StorageError::Closed),
                })
                .await
                .unwrap_or_else(|join| {
                    Err(StorageError::Io {
                        context: "sync task".into(),
                        source: std::io::Error::other(join.to_string()),
                    })
                })
                .map_err(Arc::new);
                counter.fetch_add(1, Ordering::Relaxed);
                if outcome.is_ok() {
                    covered.fetch_max(covers, Ordering::AcqRel);
                }
                metrics::histogram!("arbiter_storage_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                for waiter in waiters {
                    // A writer that went away no longer needs its answer.
                    let _ = waiter.send(outcome.clone());
                }
            }
        });
        Self {
            requests,
            flushes,
            durable,
        }
    }

    /// Returns once every batch counted in `mark` is durable: at once if a flush that started
    /// after they were applied has already succeeded, else after the next flush.
    pub(super) async fn flush_through(&self, mark: u64) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        self.flush().await
    }

    pub(super) async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).map_err(|_| StorageError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(StorageError::Shared(err)),
            Err(_) => Err(StorageError::Closed),
        }
    }

    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}
