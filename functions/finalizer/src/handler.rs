//! Handles a batch from the events queue or the jobs DLQ through the record use case (each record's
//! outcome, then per run the start and completion steps), or — on its schedule — reconciles the
//! runs whose last events were lost.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imagepipe::adapters::dynamodb_ledger::DynamoLedger;
use imagepipe::adapters::http_publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::adapters::s3_store::{S3ObjectStore, S3Signer};
use imagepipe::domain::events::FinalizerInput;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::drivers::config::{Config, ConfigError, secret};
use imagepipe::drivers::lambda::{AwsClients, Record, batch_response, ledger};
use imagepipe::usecase::record::{Delivery, Recorder};
use lambda_runtime::{Error, LambdaEvent};

/// Built once per container.
pub struct Deps {
    pub recorder: Recorder<DynamoLedger, S3ObjectStore, HttpCms, SlackWebhook>,
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
        Ok(Self {
            recorder: Recorder {
                ledger: ledger(clients, &config),
                store: S3ObjectStore::new(clients.s3.clone(), &config.bucket),
                cms,
                notifier,
                locations: config.locations(),
                links: Some(Arc::new(S3Signer::new(clients.s3.clone(), config.report_link))),
                cms_max_attempts: config.cms_max_attempts,
                notify_retry: RetryPolicy {
                    max_attempts: 3,
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(5),
                },
                notify_best_effort: false,
                silence: config.reconcile_silence,
                max_run_cost_usd: config.max_run_cost_usd,
            },
        })
    }
}

/// An SQS batch (returns the records to deliver again), or the reconciler's schedule.
pub async fn handle(deps: &Deps, event: LambdaEvent<serde_json::Value>) -> Result<serde_json::Value, Error> {
    let deadline = event.context.deadline;
    if event.payload.get("Records").is_none() {
        let reconciled = deps.recorder.reconcile(deadline).await?;
        tracing::info!(
            runs = reconciled.runs,
            lost_rows = reconciled.lost_rows,
            stalled_splits = ?reconciled.stalled_splits,
            "reconciled"
        );
        return Ok(serde_json::json!({
            "runs": reconciled.runs,
            "lost_rows": reconciled.lost_rows,
            "stalled_splits": reconciled.stalled_splits,
        }));
    }
    let batch: SqsEvent = serde_json::from_value(event.payload)?;
    let response = handle_batch(deps, batch, deadline).await;
    Ok(serde_json::to_value(response)?)
}

/// Handles the records of a batch; returns the ones to deliver again.
pub async fn handle_batch(deps: &Deps, batch: SqsEvent, deadline_ms: u64) -> SqsBatchResponse {
    // A message that is neither an event nor a job has no row to record it against: it is logged
    // and dropped, not retried.
    let deliveries = (Record::all(batch).into_iter())
        .filter_map(|record| {
            let input = FinalizerInput::parse(&record.body)
                .map_err(
                    |e| tracing::error!(message_id = %record.message_id, error = %e, "not an imagepipe event; dropped"),
                )
                .ok()?;
            Some(Delivery {
                id: record.message_id,
                input,
                receive_count: record.receive_count,
            })
        })
        .collect();
    batch_response(deps.recorder.handle_batch(deliveries, deadline_ms).await)
}
