//! What the three Lambda functions share at init: JSON logs, the AWS clients, secrets.

use aws_config::BehaviorVersion;

/// Clients built once per container from one SDK configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl AwsClients {
    /// Loads the SDK configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`).
    pub async fn from_env() -> Self {
        Self::from_config(&aws_config::load_defaults(BehaviorVersion::latest()).await)
    }

    /// Clients from a loaded SDK configuration; S3 is addressed by path when the environment names
    /// a custom endpoint (emulators and other S3-compatible endpoints address buckets by path).
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        Self::new(config, custom_endpoint)
    }

    /// Clients from an SDK configuration; `path_style` addresses S3 buckets by path (emulators).
    pub fn new(config: &aws_config::SdkConfig, path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3),
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }

    /// The function's start-up: JSON logs, the clients, secrets named by `<NAME>_PARAM` read
    /// once, and the configuration (an error names the variable at fault).
    pub async fn init() -> Result<(Self, crate::drivers::config::Config), Box<dyn std::error::Error + Send + Sync>> {
        init_tracing();
        let clients = Self::from_env().await;
        crate::adapters::ssm_secrets::load_secrets(&clients.ssm).await?;
        Ok((clients, crate::drivers::config::Config::from_env()?))
    }
}

/// JSON logs to stdout (CloudWatch Logs), filtered by `RUST_LOG` (default `info`), without ANSI colours.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_ansi(false)
        .without_time()
        .try_init();
}

/// The run ledger of the deployment (`LEDGER_TABLE`).
pub fn ledger(
    clients: &AwsClients,
    config: &crate::drivers::config::Config,
) -> crate::adapters::dynamodb_ledger::DynamoLedger {
    crate::adapters::dynamodb_ledger::DynamoLedger::new(
        clients.dynamodb.clone(),
        &config.ledger_table,
        config.run_retention,
    )
}

/// Time left before a Lambda deadline given in Unix milliseconds.
pub fn time_left(deadline_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(deadline_ms.saturating_sub(crate::domain::events::now_ms()))
}

/// One SQS record as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: String,
    pub receipt_handle: Option<String>,
    /// Deliveries so far, from 1 (`ApproximateReceiveCount`).
    pub receive_count: u32,
    pub body: String,
}

impl Record {
    /// The records of a batch.
    pub fn all(event: aws_lambda_events::event::sqs::SqsEvent) -> Vec<Self> {
        (event.records.into_iter())
            .map(|message| Self {
                receive_count: (message.attributes.get("ApproximateReceiveCount"))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                message_id: message.message_id.unwrap_or_default(),
                receipt_handle: message.receipt_handle,
                body: message.body.unwrap_or_default(),
            })
            .collect()
    }

    /// The body as a `what`; a body that does not parse is logged (its start) and `None`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Option<T> {
        match serde_json::from_str(&self.body) {
            Ok(value) => Some(value),
            Err(e) => {
                let body: String = self.body.chars().take(500).collect();
                tracing::error!(message_id = %self.message_id, error = %e, %body, "message does not parse as {what}");
                None
            }
        }
    }
}

/// The response naming the records to deliver again (`ReportBatchItemFailures`).
pub fn batch_response(again: impl IntoIterator<Item = String>) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::event::sqs::SqsBatchResponse::default();
    for id in again {
        response.add_failure(id);
    }
    response
}

/// Runs `handle` on every record, `concurrency` at a time, each on its own: one record's failure
/// never fails its batch-mates. The records `handle` answers `true` for are delivered again.
pub async fn each_record<F, Fut>(
    records: Vec<Record>,
    concurrency: usize,
    handle: F,
) -> aws_lambda_events::event::sqs::SqsBatchResponse
where
    F: Fn(Record) -> Fut,
    Fut: Future<Output = bool>,
{
    use futures::StreamExt;
    let again: Vec<String> = futures::stream::iter(records)
        .map(|record| {
            let id = record.message_id.clone();
            let span = tracing::info_span!("record", message_id = %id);
            let handled = tracing::Instrument::instrument(handle(record), span);
            async move { handled.await.then_some(id) }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|id| async move { id })
        .collect()
        .await;
    batch_response(again)
}
