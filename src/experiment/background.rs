//! The engine's background work, owned: the table refresher and snapshot threads and the ticker
//! task (allocation counters, expiry, settlement, histories, metrics) share one stop signal and
//! are joined by [`Experiments::shutdown`], so a shutdown knows when none of them can touch the
//! store any more. Each also ends by itself once the engine is dropped (tests drop engines
//! without shutting them down).

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::Experiments;

/// How long a shutdown waits for the background work to finish its current round.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A stop signal that threads can sleep on and tasks can await.
#[derive(Debug)]
pub(super) struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
    tasks: watch::Sender<bool>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            tasks: watch::Sender::new(false),
        }
    }
}

impl StopSignal {
    /// Sleeps for `interval` unless stopped first; returns whether the work must stop.
    pub(super) fn sleep(&self, interval: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.wake.wait_for(&mut stopped, interval);
        }
        *stopped
    }

    /// A receiver that changes to `true` when the work must stop.
    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tasks.subscribe()
    }

    fn stop(&self) {
        *self.stopped.lock() = true;
        self.wake.notify_all();
        self.tasks.send_replace(true);
    }
}

/// The stop signal and the join handles of everything started.
#[derive(Debug, Default)]
pub(super) struct Background {
    pub(super) stop: std::sync::Arc<StopSignal>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Background {
    /// Keeps `handle` to join at shutdown.
    pub(super) fn thread(&self, handle: std::thread::JoinHandle<()>) {
        self.threads.lock().push(handle);
    }

    /// Keeps `handle` to await at shutdown.
    pub(super) fn task(&self, handle: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(handle);
    }
}

impl Experiments {
    /// Stops the background work and waits (at most 10 s) until every thread and task has
    /// finished its current round. Idempotent.
    pub async fn shutdown(&self) {
        let background = &self.inner.background;
        background.stop.stop();
        let threads = std::mem::take(&mut *background.threads.lock());
        let tasks = std::mem::take(&mut *background.tasks.lock());
        let joined = async {
            for task in tasks {
                let _ = task.await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await;
        };
        if tokio::time::timeout(JOIN_TIMEOUT, joined).await.is_err() {
            tracing::warn!(
                timeout_secs = JOIN_TIMEOUT.as_secs(),
                "background work still running at shutdown; going on without it"
            );
        }
    }
}
