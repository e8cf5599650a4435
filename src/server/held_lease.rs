//! Cluster mode: the writer lease, refreshed from the moment it is taken (a standby may still be
//! closing its state, and the writer's opening may take longer than the lease lasts) until the
//! writer is done with it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::WriterLease;
use crate::storage::Storage;

/// A lease being kept by a task of its own.
pub(super) struct HeldLease {
    /// Why this arbiter must stop writing (lease lost, log failed), once it must.
    pub(super) lost: watch::Receiver<Option<String>>,
    /// Why the lease cannot be refreshed right now (NATS out of reach), while it cannot.
    pub(super) unreachable: watch::Receiver<Option<String>>,
    /// The writer's storage, once open: the lease is handed back when its log fails.
    opened: watch::Sender<Weak<Storage>>,
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
        let keeper = tokio::spawn(async move {
            tokio::select! {
                why = lease.keep(&unreachable_tx) => {
                    tracing::error!(reason = %why, "lost the writer lease");
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
            stop,
            keeper,
        }
    }

    /// The writer's storage is open.
    pub(super) fn opened(&self, storage: &Arc<Storage>) {
        self.opened.send_replace(Arc::downgrade(storage));
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
