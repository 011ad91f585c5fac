//! Handles a batch from the events queue or the jobs DLQ: each record through the finish use case,
//! then, per run touched, the tally and the completion check. A run whose completion step fails
//! hands all its records back, so the step is tried again.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use imagepipe::adapters::s3_store::S3ObjectStore;
use imagepipe::config::{Config, ConfigError, secret};
use imagepipe::events::{FinalizerInput, Outcome};
use imagepipe::lambda::AwsClients;
use imagepipe::publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::retry::RetryPolicy;
use imagepipe::usecase::finish::{Finisher, Handled};
use lambda_runtime::{Error, LambdaEvent};
use tracing::Instrument;

/// Records handled at once (CMS calls in flight).
const CONCURRENCY: usize = 16;

/// Built once per container.
pub struct Deps {
    pub finisher: Finisher<S3ObjectStore, HttpCms, SlackWebhook>,
}

impl Deps {
    pub fn new(clients: &AwsClients, config: Config) -> Result<Self, ConfigError> {
        let client = http_client(Duration::from_secs(20));
        let cms = match &config.cms {
            None => None,
            Some(cms) => {
                let token = secret("CMS_TOKEN").ok_or(ConfigError::Missing("CMS_TOKEN (or CMS_TOKEN_PARAM)"))?;
                let http = HttpCms::new(client.clone(), &cms.base_url, &token)
                    .with_request(&cms.method, &cms.path, &cms.body)
                    .map_err(|message| ConfigError::Secret {
                        name: "CMS_*".into(),
                        message,
                    })?;
                Some(http)
            }
        };
        let notifier = secret("SLACK_WEBHOOK_URL").map(|url| SlackWebhook::new(client, &url));
        let (images, reports) = (config.clone(), config.bucket.clone());
        Ok(Self {
            finisher: Finisher {
                store: S3ObjectStore::new(clients.s3.clone(), &config.bucket),
                cms,
                notifier,
                image_url: Box::new(move |key| images.image_url(key)),
                report_location: Box::new(move |run_id| format!("s3://{reports}/runs/{run_id}/report.json")),
                cms_max_attempts: config.cms_max_attempts,
                claim_ttl: config.claim_ttl,
                notify_retry: RetryPolicy {
                    max_attempts: 3,
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(5),
                },
            },
        })
    }
}

/// Handles a batch; returns the records to deliver again.
pub async fn handle(deps: &Deps, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let handled: Vec<(String, Record)> = futures::stream::iter(event.payload.records)
        .map(|record| async move {
            let id = record.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!("record", message_id = %id);
            (id, handle_record(deps, &record).instrument(span).await)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut failed: Vec<String> = handled
        .iter()
        .filter(|(_, h)| matches!(h, Record::Again))
        .map(|(id, _)| id.clone())
        .collect();
    for (run_id, (ids, outcomes, split)) in by_run(&handled) {
        if let Err(e) = deps.finisher.settle(&run_id, &outcomes, split).await {
            tracing::warn!(%run_id, error = %e, "run not settled; its records come back");
            failed.extend(ids);
        }
    }
    let mut response = SqsBatchResponse::default();
    for id in failed {
        response.add_failure(id);
    }
    Ok(response)
}

/// Per run: the message ids, the outcomes, and whether the run's split event was among them.
fn by_run(handled: &[(String, Record)]) -> BTreeMap<String, (Vec<String>, Vec<Outcome>, bool)> {
    let mut runs: BTreeMap<String, (Vec<String>, Vec<Outcome>, bool)> = BTreeMap::new();
    for (id, record) in handled {
        let Record::Handled(handled) = record else {
            continue;
        };
        let (run_id, outcome, split) = match handled.as_ref() {
            Handled::Outcome { run_id, outcome } => (run_id, Some(outcome), false),
            Handled::Split { run_id } => (run_id, None, true),
        };
        let run = runs.entry(run_id.clone()).or_default();
        run.0.push(id.clone());
        run.1.extend(outcome.cloned());
        run.2 |= split;
    }
    runs
}

/// What became of one record.
enum Record {
    Handled(Box<Handled>),
    /// Deleted without effect.
    Dropped,
    /// To be delivered again.
    Again,
}

async fn handle_record(deps: &Deps, record: &SqsMessage) -> Record {
    let body = record.body.as_deref().unwrap_or_default();
    let input = match FinalizerInput::parse(body) {
        Ok(input) => input,
        Err(e) => {
            // Neither an event nor a job: no row to record it against. Kept in the logs, not retried.
            tracing::error!(error = %e, body = %body.chars().take(500).collect::<String>(), "message dropped: not an imagepipe event");
            return Record::Dropped;
        }
    };
    let receive_count = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    match deps.finisher.handle(input, receive_count).await {
        Ok(handled) => Record::Handled(Box::new(handled)),
        Err(e) => {
            tracing::warn!(error = %e, receive_count, "record comes back later");
            Record::Again
        }
    }
}
