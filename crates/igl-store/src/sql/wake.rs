//! Wake-ups for idle queue consumers: in this process at once, and (PostgreSQL) in other
//! processes through a coalescing publisher.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// One [`Notify`] per queue name. Enqueues call [`Wakeups::wake`] after they commit;
/// consumers wait with [`Wakeups::wait`]. A wake-up with no waiter leaves a permit, so a
/// consumer that was busy claiming when the job arrived does not sleep through it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Wakeups {
    queues: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    remote: Option<Arc<RemotePublisher>>,
}

impl Wakeups {
    /// Wake-ups that are also handed to `remote` for other processes.
    pub(crate) fn with_remote(remote: Arc<RemotePublisher>) -> Self {
        Self {
            queues: Arc::default(),
            remote: Some(remote),
        }
    }

    fn notify_for(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes the consumers of `queue` in this process and, when configured, in others.
    pub(crate) fn wake(&self, queue: &str) {
        self.wake_local(queue);
        if let Some(remote) = &self.remote {
            remote.publish(queue);
        }
    }

    /// Wakes the consumers of `queue` in this process only (for wake-ups that came from
    /// another process).
    pub(crate) fn wake_local(&self, queue: &str) {
        let notify = self.notify_for(queue);
        notify.notify_one();
        notify.notify_waiters();
    }

    /// Waits for a wake-up of `queue` or the timeout.
    pub(crate) async fn wait(&self, queue: &str, timeout: Duration) {
        let notify = self.notify_for(queue);
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }
}

/// Queues whose consumers in other processes should be woken, gathered so that a burst of
/// commits costs one cross-process notification per queue. Publishing outside the writing
/// transaction matters on PostgreSQL: a transaction that executed `NOTIFY` takes a global
/// lock at commit, which would serialise every enqueueing commit.
#[derive(Debug, Default)]
pub(crate) struct RemotePublisher {
    pending: Mutex<BTreeSet<String>>,
    signal: Notify,
}

impl RemotePublisher {
    fn publish(&self, queue: &str) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.insert(queue.to_owned()) {
            self.signal.notify_one();
        }
    }

    /// Waits until something is pending, then takes it all.
    pub(crate) async fn next_batch(&self) -> BTreeSet<String> {
        loop {
            {
                let mut pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !pending.is_empty() {
                    return std::mem::take(&mut *pending);
                }
            }
            self.signal.notified().await;
        }
    }
}
