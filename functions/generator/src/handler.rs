//! Runs the records of an SQS batch concurrently through the deliver use case and reports, per
//! record, only what must come back (`ReportBatchItemFailures`).

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use std::sync::Arc;

use imagepipe::adapters::dynamodb_ledger::DynamoLedger;
use imagepipe::adapters::s3_store::{S3ObjectStore, S3Signer};
use imagepipe::adapters::sqs_queue::SqsQueue;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::job::Job;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::drivers::config::{Config, ConfigError};
use imagepipe::drivers::lambda::{AwsClients, Record, each_record, ledger, time_left};
use imagepipe::ports::queue::MessageQueue;
use imagepipe::usecase::deliver::{Disposition, Generator, Providers};
use imagepipe::usecase::stops::RunStops;
use lambda_runtime::{Error, LambdaEvent};

/// How long a presigned `s3://` reference stays valid: the provider fetches it during the call.
const REFERENCE_URL_LIFETIME: Duration = Duration::from_secs(3600);

/// Built once per container.
pub struct Deps {
    pub generator: Generator<S3ObjectStore, SqsQueue, DynamoLedger>,
    /// For the back-off of retried records.
    pub jobs: SqsQueue,
}

/// Back-off between deliveries of a retried job: 10 s, 20 s, 40 s … up to 15 minutes, jittered.
pub const BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_secs(10),
    cap: Duration::from_secs(900),
};

impl Deps {
    pub fn new(clients: &AwsClients, config: Config) -> Result<Self, ConfigError> {
        let store = S3ObjectStore::new(clients.s3.clone(), &config.bucket);
        let locations = config.locations();
        Ok(Self {
            jobs: SqsQueue::new(clients.sqs.clone(), config.jobs_queue_url()?),
            generator: Generator {
                events: SqsQueue::new(clients.sqs.clone(), config.events_queue_url()?),
                stops: RunStops::new(ledger(clients, &config)),
                store,
                catalog: Catalog::builtin(),
                providers: Providers::new(config.provider),
                signer: Some(Arc::new(S3Signer::new(clients.s3.clone(), REFERENCE_URL_LIFETIME))),
                provider_timeout: config.provider_timeout,
                provider_timeouts: config.provider_timeouts,
                max_receive_count: config.max_receive_count,
                backoff: BACKOFF,
                locations,
                leases: true,
            },
        })
    }
}

/// Handles a batch: every record on its own, concurrently; returns the records to deliver again.
pub async fn handle(deps: &Deps, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let deadline = event.context.deadline;
    let records = Record::all(event.payload);
    let concurrency = records.len();
    Ok(each_record(records, concurrency, |record| handle_record(deps, record, deadline)).await)
}

/// Whether the record must be delivered again.
async fn handle_record(deps: &Deps, record: Record, deadline_ms: u64) -> bool {
    // A job that does not parse fails alone; after the queue's last delivery it rests in the jobs
    // DLQ for a person to see.
    let Some(job) = record.parse::<Job>("a job") else {
        return true;
    };
    match deps
        .generator
        .deliver(&job, record.receive_count, time_left(deadline_ms))
        .await
    {
        Disposition::Done => false,
        Disposition::RetryAfter(after) => {
            if let Some(handle) = record.receipt_handle.as_deref()
                && let Err(e) = deps.jobs.delay(handle, after).await
            {
                tracing::warn!(error = %e, "back-off not set; the queue's visibility timeout applies");
            }
            true
        }
        Disposition::HandBack(reason) => {
            tracing::warn!(%reason, "handed back");
            true
        }
    }
}
