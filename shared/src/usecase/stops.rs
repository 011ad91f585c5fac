//! What generators know of their runs: whether a run still calls the provider (or stopped:
//! credentials refused, spend cap reached, cancelled) and the model entry it started with. Read
//! from the ledger at most once per [`STOP_CHECK_INTERVAL`] per run and container, so a stop
//! reaches every generator within seconds at the cost of one read per run every few seconds,
//! whatever the run's size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::domain::catalog::ModelInfo;
use crate::ports::ledger::RunLedger;

/// How stale a generator's view of a run's stop may be.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What was last read of a run, and when.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    stopped: Option<String>,
    model: Option<ModelInfo>,
}

/// The runs' stops, cached per container.
pub struct RunStops<L> {
    pub ledger: L,
    seen: Mutex<HashMap<String, Seen>>,
    /// How long a read is trusted: [`STOP_CHECK_INTERVAL`], or zero where reads are free (in memory).
    interval: Duration,
}

impl<L: RunLedger> RunStops<L> {
    pub fn new(ledger: L) -> Self {
        Self::with_interval(ledger, STOP_CHECK_INTERVAL)
    }

    /// Reads the ledger at most once per `interval` per run.
    pub fn with_interval(ledger: L, interval: Duration) -> Self {
        Self {
            ledger,
            seen: Mutex::new(HashMap::new()),
            interval,
        }
    }

    async fn seen(&self, run_id: &str) -> Seen {
        if let Some(seen) = self.seen.lock().await.get(run_id)
            && seen.at.elapsed() < self.interval
        {
            return seen.clone();
        }
        let (stopped, model) = match self.ledger.run(run_id).await {
            Ok(Some(run)) => (run.stopped, run.model_entry),
            Ok(None) => (None, None),
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "run state not read; the job goes ahead");
                (None, None)
            }
        };
        let seen = Seen {
            at: Instant::now(),
            stopped,
            model,
        };
        self.seen.lock().await.insert(run_id.to_owned(), seen.clone());
        seen
    }

    /// Why `run_id` stopped, `None` while it goes on (or when the ledger cannot say: the job runs).
    pub async fn reason(&self, run_id: &str) -> Option<String> {
        self.seen(run_id).await.stopped
    }

    /// The model entry `run_id` started with (`None`: not recorded, use the built-in catalog).
    pub async fn model(&self, run_id: &str) -> Option<ModelInfo> {
        self.seen(run_id).await.model
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
