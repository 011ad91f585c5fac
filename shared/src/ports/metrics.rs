//! The pipeline's metrics, through the `metrics` facade: each use case makes one call where its event
//! happens, which does nothing until a recorder is installed. The Lambda functions install [`Emf`],
//! which prints CloudWatch Embedded Metric Format lines after each invocation; a local run installs
//! none. Dimensions never name a run (function, provider, model, template, failure class), so the
//! number of metrics stays bounded however many runs there are.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use crate::domain::failure_class::FailureClass;
use crate::domain::job::Job;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "imagepipe";
pub const IMAGES_SUCCEEDED: &str = "ImagesSucceeded";
pub const IMAGES_FAILED: &str = "ImagesFailed";
pub const IMAGES_REUSED: &str = "ImagesReused";
pub const PROVIDER_LATENCY: &str = "ProviderLatency";
pub const SPEND_USD: &str = "SpendUsd";
pub const JOBS_SENT: &str = "JobsSent";
pub const RUNS_COMPLETED: &str = "RunsCompleted";
/// 1 for a failed image, 0 for a stored one, per function: its 5-minute average is the failure rate
/// failed / (succeeded + failed) that the stack's alarm watches, without metric math.
pub const FAILURE_RATE: &str = "FailureRate";

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

/// One more of `name` under `labels`, and under `function` alone (the dashboard's totals: a graph
/// cannot add up all of a metric's series without a SEARCH per widget), and the image's 0 or 1 of
/// [`FAILURE_RATE`].
fn count(name: &'static str, labels: &[(&'static str, String)]) {
    counter!(name, labels).increment(1);
    counter!(name).increment(1);
    histogram!(FAILURE_RATE).record(if name == IMAGES_FAILED { 1.0 } else { 0.0 });
}

/// A job's image was stored (or already existed), `cost_usd` paid for it.
pub fn image_made(job: &Job, provider: &str, reused: bool, cost_usd: f64) {
    let labels = job_labels(job, provider);
    count(IMAGES_SUCCEEDED, &labels);
    if reused {
        counter!(IMAGES_REUSED, &labels).increment(1);
    }
    histogram!(SPEND_USD, &labels).record(cost_usd);
}

/// A job failed for good with `reason`, counted by its [`FailureClass`].
pub fn image_failed(job: &Job, provider: &str, reason: &str) {
    let mut labels = job_labels(job, provider);
    labels.push(("reason", FailureClass::of(reason).id().to_owned()));
    count(IMAGES_FAILED, &labels);
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
    /// Installs the process-wide recorder, every metric with the dimension `function`: the Lambda
    /// function's name (`AWS_LAMBDA_FUNCTION_NAME`, so two stacks' metrics stay apart), else `role`.
    pub fn install(role: &str) -> Result<Self, String> {
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| role.to_owned());
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::domain::key::ObjectKey;
    use crate::domain::template::ImageSize;

    /// The process's recorder; other tests of this binary may record into it too.
    fn emf() -> &'static Emf {
        static EMF: OnceLock<Emf> = OnceLock::new();
        EMF.get_or_init(|| Emf::install("metrics-test").unwrap())
    }

    #[test]
    fn a_failure_is_counted_by_its_class_and_never_by_its_run() {
        let emf = emf();
        let job = Job {
            run_id: "run-0123456789abcdef".into(),
            row: 7,
            key: ObjectKey::parse("metrics_test/SKU-7").unwrap(),
            cms_id: "SKU-7".into(),
            prompt: "a mug".into(),
            model: "nano-banana".into(),
            size: ImageSize { width: 64, height: 64 },
            references: vec![],
        };
        image_failed(&job, "gemini", "rate limited: 429 (gave up after 3 attempts)");
        image_made(&job, "gemini", false, 0.039);
        let mut out = Vec::new();
        emf.flush(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("run-0123456789abcdef") && !out.contains("SKU-7"), "{out}");
        let documents: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let of_test = |name: &str| {
            let found = documents
                .iter()
                .find(|d| d["template"] == "metrics_test" && d.get(name).is_some());
            found.unwrap_or_else(|| panic!("no {name} in {out}")).clone()
        };
        let failed = of_test(IMAGES_FAILED);
        assert_eq!(
            (failed["reason"].as_str(), failed[IMAGES_FAILED].as_u64()),
            (Some("rate_limited"), Some(1))
        );
        assert_eq!(failed["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        let dimensions = &failed["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0];
        assert_eq!(
            *dimensions,
            serde_json::json!(["function", "provider", "model", "template", "reason"])
        );
        assert_eq!(of_test(SPEND_USD)[SPEND_USD], serde_json::json!([0.039]));
        let rates: Vec<f64> = documents
            .iter()
            .filter_map(|d| d.get(FAILURE_RATE)?.as_array().cloned())
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect();
        assert!(rates.contains(&1.0) && rates.contains(&0.0), "{out}");
    }
}
