//! Whether a run still calls the provider: what generators know of their runs' stops (credentials
//! refused, spend cap reached, cancelled), read from the ledger at most once per
//! [`STOP_CHECK_INTERVAL`] per run and container, so a stop reaches every generator within seconds
//! at the cost of one read per run every few seconds, whatever the run's size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::ledger::RunLedger;

/// How stale a generator's view of a run's stop may be.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A run's stop as last read, and when.
type Seen = (Instant, Option<String>);

/// The runs' stops, cached per container.
pub struct RunStops<L> {
    pub ledger: L,
    seen: Mutex<HashMap<String, Seen>>,
}

impl<L: RunLedger> RunStops<L> {
    pub fn new(ledger: L) -> Self {
        Self {
            ledger,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Why `run_id` stopped, `None` while it goes on (or when the ledger cannot say: the job runs).
    pub async fn reason(&self, run_id: &str) -> Option<String> {
        if let Some((at, reason)) = self.seen.lock().await.get(run_id)
            && at.elapsed() < STOP_CHECK_INTERVAL
        {
            return reason.clone();
        }
        let reason = match self.ledger.run(run_id).await {
            Ok(run) => run.and_then(|r| r.stopped),
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "run state not read; the job goes ahead");
                None
            }
        };
        self.seen
            .lock()
            .await
            .insert(run_id.to_owned(), (Instant::now(), reason.clone()));
        reason
    }

    /// Stops `run_id` for `reason` (the first reason wins) and remembers it.
    pub async fn stop(&self, run_id: &str, reason: &str) {
        match self.ledger.stop(run_id, reason).await {
            Ok(true) => tracing::warn!(%run_id, %reason, "run stopped: no further provider calls"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%run_id, error = %e, "run not marked stopped"),
        }
        self.seen.lock().await.remove(run_id);
    }
}
