//! The pipeline's metrics, through the `metrics` facade: each use case makes one call where its event
//! happens, which does nothing until a recorder is installed. The Lambda functions install [`Emf`],
//! which prints CloudWatch Embedded Metric Format lines after each invocation; a local run installs
//! none. Dimensions never name a run (function, provider, model, template, failure class), so the
//! number of metrics stays bounded however many runs there are.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use crate::failure_class::FailureClass;
use crate::job::Job;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "imagepipe";
pub const IMAGES_SUCCEEDED: &str = "ImagesSucceeded";
pub const IMAGES_FAILED: &str = "ImagesFailed";
pub const IMAGES_REUSED: &str = "ImagesReused";
pub const PROVIDER_LATENCY: &str = "ProviderLatency";
pub const SPEND_USD: &str = "SpendUsd";
pub const JOBS_SENT: &str = "JobsSent";
pub const RUNS_COMPLETED: &str = "RunsCompleted";

/// The dimensions every metric has besides `function`.
fn labels(provider: &str, model: &str, template: &str) -> Vec<(&'static str, String)> {
    vec![
        ("provider", provider.to_owned()),
        ("model", model.to_owned()),
        ("template", template.to_owned()),
    ]
}

/// [`labels`] of a job: its template is its key's first segment.
fn job_labels(job: &Job, provider: &str) -> Vec<(&'static str, String)> {
    let key = job.key.as_str();
    labels(
        provider,
        &job.model,
        key.split_once('/').map_or(key, |(template, _)| template),
    )
}

/// A job's image was stored (or already existed), `cost_usd` paid for it.
pub fn image_made(job: &Job, provider: &str, reused: bool, cost_usd: f64) {
    let labels = job_labels(job, provider);
    counter!(IMAGES_SUCCEEDED, &labels).increment(1);
    if reused {
        counter!(IMAGES_REUSED, &labels).increment(1);
    }
    histogram!(SPEND_USD, &labels).record(cost_usd);
}

/// A job failed for good with `reason`, counted by its [`FailureClass`].
pub fn image_failed(job: &Job, provider: &str, reason: &str) {
    let mut labels = job_labels(job, provider);
    labels.push(("reason", FailureClass::of(reason).id().to_owned()));
    counter!(IMAGES_FAILED, &labels).increment(1);
}

/// One provider call took `elapsed`, whatever its result.
pub fn provider_call(job: &Job, provider: &str, elapsed: Duration) {
    let labels = job_labels(job, provider);
    histogram!(PROVIDER_LATENCY, &labels).record(elapsed.as_secs_f64() * 1000.0);
}

/// The splitter sent `jobs` jobs of a run.
pub fn jobs_sent(provider: &str, model: &str, template: &str, jobs: u64) {
    let labels = labels(provider, model, template);
    counter!(JOBS_SENT, &labels).increment(jobs);
}

/// A run completed: its report is written.
pub fn run_completed(provider: &str, model: &str, template: &str) {
    counter!(RUNS_COMPLETED, &labels(provider, model, template)).increment(1);
}

/// The units of the metrics (spend has none: CloudWatch has no currency unit).
fn describe() {
    for name in [
        IMAGES_SUCCEEDED,
        IMAGES_FAILED,
        IMAGES_REUSED,
        JOBS_SENT,
        RUNS_COMPLETED,
    ] {
        describe_counter!(name, Unit::Count, "");
    }
    describe_histogram!(PROVIDER_LATENCY, Unit::Milliseconds, "");
}

/// The CloudWatch Embedded Metric Format recorder of a Lambda function.
pub struct Emf(&'static metrics_cloudwatch_embedded::Collector);

impl Emf {
    /// Installs the process-wide recorder, every metric with the dimension `function`.
    pub fn install(function: &'static str) -> Result<Self, String> {
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(NAMESPACE)
            .with_dimension("function", function)
            .init()
            .map_err(|e| format!("metrics recorder: {e}"))?;
        describe();
        Ok(Self(collector))
    }

    /// Writes what was recorded since the last flush, one EMF document per line.
    pub fn flush(&self, out: impl std::io::Write) -> std::io::Result<()> {
        self.0.flush(out)
    }

    /// Runs one invocation, then prints its metrics to stdout (CloudWatch Logs).
    pub async fn around<T>(&self, invocation: impl Future<Output = T>) -> T {
        let result = invocation.await;
        if let Err(error) = self.flush(std::io::stdout().lock()) {
            tracing::warn!(%error, "metrics not written");
        }
        result
    }
}
