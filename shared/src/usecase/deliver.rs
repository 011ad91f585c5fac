//! Deliver (AWS path): one job received from the queue → generate its image → tell the finalizer.
//! Decides what the queue does with the message: delete it, or hand it back after a back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::domain::catalog::Catalog;
use crate::domain::catalog::ModelInfo;
use crate::domain::events::PipelineEvent;
use crate::domain::job::Job;
use crate::domain::locations::Locations;
use crate::domain::report::FailureEntry;
use crate::domain::retry::RetryPolicy;
use crate::ports::ledger::RunLedger;
use crate::ports::queue::MessageQueue;
use crate::ports::store::ObjectStore;
use crate::providers::{self, ImageProvider, ReferenceSigner};
use crate::usecase::Error;
use crate::usecase::generate::{self, Generated};
use crate::usecase::lease::{acquire, release};
use crate::usecase::stops::RunStops;

/// A provider call gets at least this long, or the job is handed back unstarted.
pub const MIN_CALL_TIME: Duration = Duration::from_secs(10);
/// Time kept back after the provider call to store the image and send the event.
pub const FINISH_TIME: Duration = Duration::from_secs(5);

/// What the queue should do with a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The job has an outcome (image or failure event sent): delete the message.
    Done,
    /// Try again after `after` (a batch item failure, hidden for that long).
    RetryAfter(Duration),
    /// Not started (too little time left, or the event could not be sent): hand it back as it is.
    HandBack(String),
}

/// Providers by name, built on first use and kept for the container's life.
pub struct Providers {
    /// Routes every model through this provider.
    route_all: Option<String>,
    built: Mutex<HashMap<String, Arc<dyn ImageProvider>>>,
}

impl Providers {
    pub fn new(route_all: Option<String>) -> Self {
        Self {
            route_all,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// With a provider already built (tests, local servers).
    pub fn with(provider: Arc<dyn ImageProvider>) -> Self {
        let name = provider.name().to_owned();
        Self {
            route_all: Some(name.clone()),
            built: Mutex::new(HashMap::from([(name, provider)])),
        }
    }

    async fn get(&self, catalog_provider: &str) -> Result<Arc<dyn ImageProvider>, providers::ProviderSetupError> {
        let name = self.route_all.as_deref().unwrap_or(catalog_provider);
        let mut built = self.built.lock().await;
        if let Some(provider) = built.get(name) {
            return Ok(provider.clone());
        }
        let provider = providers::from_env(name).await?;
        built.insert(name.to_owned(), provider.clone());
        Ok(provider)
    }
}

/// What the generator needs, built once per container.
pub struct Generator<S, E, L> {
    pub store: S,
    pub events: E,
    /// Whether each job's run still calls the provider.
    pub stops: RunStops<L>,
    pub catalog: Catalog,
    pub providers: Providers,
    /// Signs `s3://` reference images.
    pub signer: Option<Arc<dyn ReferenceSigner>>,
    pub provider_timeout: Duration,
    /// Per provider name, over `provider_timeout`.
    pub provider_timeouts: HashMap<String, Duration>,
    /// The jobs queue's `maxReceiveCount`.
    pub max_receive_count: u32,
    /// Back-off between deliveries.
    pub backoff: RetryPolicy,
    /// Where images are (an image's `path` in reports and results).
    pub locations: Locations,
    /// Generate under a lease on the image key (several consumers may hold the same job at once);
    /// off where one process holds every delivery (the local run).
    pub leases: bool,
}

impl<S: ObjectStore, E: MessageQueue, L: RunLedger> Generator<S, E, L> {
    /// Handles one delivery (`receive_count` from 1) of `job` with `time_left` before the Lambda deadline.
    #[tracing::instrument(skip_all, fields(run_id = %job.run_id, row = job.row, key = %job.key, receive_count))]
    pub async fn deliver(&self, job: &Job, receive_count: u32, time_left: Duration) -> Disposition {
        let Some(budget) = time_left.checked_sub(FINISH_TIME).filter(|t| *t >= MIN_CALL_TIME) else {
            return Disposition::HandBack("too little time left before the function's deadline".into());
        };
        let mut provider_name = String::from("none");
        let result = if let Some(reason) = self.stops.reason(&job.run_id).await {
            Err(Error::Input(format!("not attempted: the run was stopped ({reason})")))
        } else {
            match self.model_and_provider(job).await {
                Ok((model, provider)) => {
                    provider_name = provider.name().to_owned();
                    // The call never outlives the invocation: it gets what is left, at most its timeout.
                    let configured = self.provider_timeouts.get(provider.name()).copied();
                    let timeout = configured.unwrap_or(self.provider_timeout).min(budget);
                    self.generate_leased(job, &model, provider.as_ref(), timeout).await
                }
                Err(error) => Err(error),
            }
        };
        let result = match result {
            Ok(Some(generated)) => Ok(generated),
            Ok(None) => {
                let after = self
                    .provider_timeout
                    .max(self.provider_timeouts.values().copied().max().unwrap_or_default())
                    + FINISH_TIME;
                tracing::info!(?after, "another delivery is generating this image; checking back later");
                return Disposition::RetryAfter(after);
            }
            Err(error) => Err(error),
        };
        let event = match result {
            Ok(generated) => PipelineEvent::JobSucceeded {
                run_id: job.run_id.clone(),
                image: {
                    let path = self.locations.object(&generated.object_key);
                    generated.into_entry(job, path)
                },
            },
            Err(error) if error.is_retryable() && receive_count < self.max_receive_count => {
                let after = self.backoff.delay(receive_count, error.retry_after());
                tracing::warn!(%error, ?after, "retrying later");
                return Disposition::RetryAfter(after);
            }
            Err(error) => {
                if error.stops_run() {
                    self.stops.stop(&job.run_id, &error.to_string()).await;
                }
                let reason = if error.is_retryable() {
                    format!("{error} (gave up after {receive_count} attempts)")
                } else {
                    error.to_string()
                };
                tracing::warn!(%reason, "job failed");
                PipelineEvent::JobFailed {
                    run_id: job.run_id.clone(),
                    failure: FailureEntry {
                        row: job.row,
                        key: job.key.to_string(),
                        reason,
                        attempts: receive_count,
                    },
                }
            }
        };
        match &event {
            PipelineEvent::JobSucceeded { image, .. } => {
                crate::ports::metrics::image_made(job, &provider_name, image.reused, image.cost_usd)
            }
            PipelineEvent::JobFailed { failure, .. } => {
                crate::ports::metrics::image_failed(job, &provider_name, &failure.reason)
            }
            _ => {}
        }
        let body = serde_json::to_string(&event).expect("an event always serialises");
        match self.events.send_batch(vec![body]).await {
            Ok(()) => Disposition::Done,
            Err(e) => Disposition::HandBack(format!("outcome not sent: {e}")),
        }
    }

    /// Generates under a lease on the image key, so concurrent deliveries of the same job (or of
    /// two runs' jobs for one key) pay the provider once; `None` while another delivery holds it.
    async fn generate_leased(
        &self,
        job: &Job,
        model: &ModelInfo,
        provider: &dyn ImageProvider,
        timeout: Duration,
    ) -> Result<Option<Generated>, Error> {
        if let Some(existing) = generate::existing_image(&self.store, job).await? {
            return Ok(Some(existing));
        }
        let signer = self.signer.as_deref();
        if !self.leases {
            return generate::generate_new(job, model, &self.store, provider, signer, timeout)
                .await
                .map(Some);
        }
        // A holder that crashed mid-call is taken over once its call must have ended.
        let prefix = format!("leases/{}/", job.key);
        let Some(lease) = acquire(&self.store, &prefix, timeout + FINISH_TIME).await? else {
            return Ok(None);
        };
        if lease.taken_over
            && let Some(existing) = generate::existing_image(&self.store, job).await?
        {
            return Ok(Some(existing));
        }
        let generated = generate::generate_new(job, model, &self.store, provider, signer, timeout).await;
        if generated.is_err() {
            release(&self.store, &lease).await;
        }
        generated.map(Some)
    }

    async fn model_and_provider(&self, job: &Job) -> Result<(ModelInfo, Arc<dyn ImageProvider>), Error> {
        // The run's own model entry (it may come from the deployment's models file), else the built-in one.
        let model = match self.stops.model(&job.run_id).await {
            Some(model) => model,
            None => self.catalog.model(&job.model)?.clone(),
        };
        let provider = self.providers.get(&model.provider).await?;
        Ok((model, provider))
    }
}

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;
