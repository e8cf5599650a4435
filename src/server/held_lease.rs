//! Cluster mode: the writer lease, refreshed from the moment it is taken (a standby may still be
//! closing its state, and the writer's opening may take longer than the lease lasts) until the
//! writer is done with it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::{StreamLog, WriterLease};
use crate::storage::Storage;

/// A lease being kept by a task of its own.
pub(super) struct HeldLease {
    /// Why this arbiter must stop writing (lease lost, log failed), once it must.
    pub(super) lost: watch::Receiver<Option<String>>,
    /// Why the lease cannot be refreshed right now (NATS out of reach), while it cannot.
    pub(super) unreachable: watch::Receiver<Option<String>>,
    /// The writer's storage, once open: the lease is handed back when its log fails.
    opened: watch::Sender<Weak<Storage>>,
    /// The writer's log, once open: it stops writing the moment the lease is lost.
    log: Arc<parking_lot::Mutex<Option<Arc<StreamLog>>>>,
    stop: watch::Sender<bool>,
    keeper: tokio::task::JoinHandle<Option<WriterLease>>,
}

impl HeldLease {
    /// Starts refreshing `lease`.
    pub(super) fn keep(mut lease: WriterLease) -> Self {
        let (lost_tx, lost) = watch::channel(None);
        let (unreachable_tx, unreachable) = watch::channel(None);
        let (opened, opened_rx) = watch::channel(Weak::new());
        let (stop, mut stopping) = watch::channel(false);
        let log: Arc<parking_lot::Mutex<Option<Arc<StreamLog>>>> = Arc::default();
        let writing = log.clone();
        let keeper = tokio::spawn(async move {
            tokio::select! {
                why = lease.keep(&unreachable_tx) => {
                    tracing::error!(reason = %why, "lost the writer lease");
                    // Another arbiter writes now: not one more entry from this one (its entries
                    // landing after the other's start would fail the other's log).
                    let writing = writing.lock();
                    if let Some(log) = writing.as_ref() {
                        log.stop_writing(&why);
                    }
                    lost_tx.send_replace(Some(why));
                    None
                }
                // A failed replicated log (another writer's entry where this one's belonged)
                // refuses every write until reopened: the lease goes back to a standby (or to
                // this arbiter, following again).
                why = log_failure(opened_rx) => {
                    tracing::error!(reason = %why, "the replicated log failed; handing the writer lease back");
                    lost_tx.send_replace(Some(format!("the replicated log failed: {why}")));
                    Some(lease)
                }
                _ = stopping.wait_for(|&stop| stop) => Some(lease),
            }
        });
        Self {
            lost,
            unreachable,
            opened,
            log,
            stop,
            keeper,
        }
    }

    /// The writer's storage is open, over `log`. A lease already lost stops it at once.
    pub(super) fn opened(&self, storage: &Arc<Storage>, log: Option<Arc<StreamLog>>) {
        self.opened.send_replace(Arc::downgrade(storage));
        let mut writing = self.log.lock();
        if let (Some(log), Some(why)) = (&log, self.lost.borrow().clone()) {
            log.stop_writing(&why);
        }
        *writing = log;
    }

    /// Stops refreshing and hands the lease back, unless it was lost.
    pub(super) async fn release(self) {
        self.stop.send_replace(true);
        if let Ok(Some(lease)) = self.keeper.await {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not release the writer lease; a standby takes over when it lapses");
            }
        }
    }
}

/// Resolves with why the log of the storage `opened` holds failed, once it has (never for a
/// log that does not).
async fn log_failure(opened: watch::Receiver<Weak<Storage>>) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(storage) = opened.borrow().upgrade() else {
            continue;
        };
        if let Some(why) = storage.log().failure() {
            return why;
        }
    }
}
