//! In-process wake-ups for idle queue consumers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// One [`Notify`] per queue name. Enqueues call [`Wakeups::wake`] after they commit;
/// consumers wait with [`Wakeups::wait`]. A wake-up with no waiter leaves a permit, so a
/// consumer that was busy claiming when the job arrived does not sleep through it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Wakeups {
    queues: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Wakeups {
    fn notify_for(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes the consumers of `queue`.
    pub(crate) fn wake(&self, queue: &str) {
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
