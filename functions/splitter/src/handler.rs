//! Decodes the trigger (S3 `ObjectCreated`, a scheduled run input, continuations from the
//! splitter's own queue, or the batch poll schedule), picks template, model and mode, and runs the
//! split use case, or polls the open batch-mode runs' batches.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imagepipe::adapters::dynamodb_ledger::DynamoLedger;
use imagepipe::adapters::s3_store::{S3Csv, S3ObjectStore};
use imagepipe::adapters::sqs_queue::SqsQueue;
use imagepipe::domain::deployment::DeploymentConfig;
use imagepipe::domain::locations::Locations;
use imagepipe::domain::template::Mode;
use imagepipe::drivers::config::{Config, ConfigError};
use imagepipe::drivers::lambda::{AwsClients, Record, each_record, ledger};
use imagepipe::ports::ledger::RunLedger;
use imagepipe::usecase::batch::{BatchApis, Batches, ChunkSink};
use imagepipe::usecase::split::{Continuation, CsvSource, Split, SplitSettings, Splitter};
use lambda_runtime::{Error, LambdaEvent};
use serde::{Deserialize, Serialize};

/// The user metadata of an uploaded CSV naming the run's model (`imagepipe submit --model`).
pub const MODEL_METADATA: &str = "imagepipe-model";
/// The user metadata of an uploaded CSV asking for batch mode (`imagepipe submit --batch`).
pub const MODE_METADATA: &str = "imagepipe-mode";
/// A batch is not started being read with less time than this left in the invocation.
const COLLECT_TIME: Duration = Duration::from_secs(300);

/// An invocation stops sending this long before its deadline and continues in a fresh one.
const RESERVE: Duration = Duration::from_secs(30);

/// Built once per container.
pub struct Deps {
    pub clients: AwsClients,
    pub splitter: Splitter<SqsQueue, SqsQueue, SqsQueue, DynamoLedger>,
    /// Batch-mode runs' chunks: submitted while splitting, collected by the poll schedule.
    pub batches: Arc<Batches<S3ObjectStore, SqsQueue, SqsQueue>>,
    /// The deployment's bucket: its `config/` files extend the built-in templates and models.
    pub bucket: S3ObjectStore,
}

impl Deps {
    pub fn new(clients: &AwsClients, config: Config) -> Result<Self, ConfigError> {
        let bucket = S3ObjectStore::new(clients.s3.clone(), &config.bucket);
        let batches = Arc::new(Batches {
            store: bucket.clone(),
            apis: BatchApis::from_env(),
            jobs: SqsQueue::new(clients.sqs.clone(), config.jobs_queue_url()?),
            events: SqsQueue::new(clients.sqs.clone(), config.events_queue_url()?),
            locations: Locations::bucket(&config.bucket, config.public_base_url.clone()),
            retry_failed: config.batch_retry_failed,
            // The ledger keeps every outcome: a chunk found done has nothing to send again.
            replay_done: false,
        });
        Ok(Self {
            clients: clients.clone(),
            batches: batches.clone(),
            splitter: Splitter {
                jobs: SqsQueue::new(clients.sqs.clone(), config.jobs_queue_url()?),
                events: SqsQueue::new(clients.sqs.clone(), config.events_queue_url()?),
                continuations: SqsQueue::new(clients.sqs.clone(), config.split_queue_url()?),
                ledger: ledger(clients, &config),
                settings: SplitSettings {
                    provider: config.provider,
                    max_run_cost_usd: config.max_run_cost_usd,
                    max_rows: config.max_rows_per_run,
                    send_concurrency: config.send_concurrency,
                    reserve: RESERVE,
                    rows_per_invocation: config.split_rows_per_invocation,
                    batch_requests: config.batch_requests,
                },
                batches: Some(batches as Arc<dyn ChunkSink>),
            },
            bucket,
        })
    }
}

/// The template a request names, or why there is none.
fn template_name<'a>(request: &'a Request, config: &DeploymentConfig) -> Result<&'a str, String> {
    request.template.as_deref().ok_or_else(|| {
        format!(
            "no template: upload the CSV as incoming/<template>/<name>.csv or name one in the schedule's input; \
             templates: {}",
            config.templates.names().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The input of a scheduled run (the EventBridge target's input).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledRun {
    /// `s3://bucket/key` of the CSV.
    pub csv: String,
    pub template: Option<String>,
    pub model: Option<String>,
    /// `batch`: through the provider's batch API; `sync` or absent: the template's mode.
    #[serde(default)]
    pub mode: Option<String>,
}

/// One CSV to split.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub bucket: String,
    pub key: String,
    /// ETag of the version the event names; looked up when the event has none (a schedule).
    pub etag: Option<String>,
    pub template: Option<String>,
    pub model: Option<String>,
    /// Batch mode asked for by the schedule's input (the template's mode otherwise).
    pub batch: bool,
}

/// What one CSV became, returned to the invoker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub csv: String,
    pub run_id: String,
    pub jobs_sent: u64,
    pub invalid_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    pub duplicate: bool,
    /// The split goes on in a fresh invocation (a continuation message).
    pub continued: bool,
}

impl Outcome {
    fn of(csv: &str, split: Split) -> Self {
        let totals = split.totals.unwrap_or_default();
        Self {
            csv: csv.to_owned(),
            run_id: split.run_id,
            jobs_sent: split.sent,
            invalid_rows: totals.invalid,
            rejected: totals.rejected,
            duplicate: split.duplicate,
            continued: split.continued,
        }
    }
}

/// The requests in an event: S3 records (keys arrive URL-encoded) or one scheduled run.
pub fn requests(event: serde_json::Value) -> Result<Vec<Request>, String> {
    if event.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if event.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(event).map_err(|e| format!("not an S3 event: {e}"))?;
        return event
            .records
            .into_iter()
            .filter(|r| r.event_name.as_deref().is_some_and(|n| n.starts_with("ObjectCreated")))
            .map(|r| {
                let bucket = r.s3.bucket.name.ok_or("S3 record without a bucket name")?;
                let key = url_decode(&r.s3.object.key.ok_or("S3 record without an object key")?);
                Ok(Request {
                    template: template_from_key(&key),
                    bucket,
                    key,
                    etag: r.s3.object.e_tag.filter(|e| !e.is_empty()).or(r.s3.object.version_id),
                    model: None,
                    batch: false,
                })
            })
            .collect();
    }
    let input = event
        .get("detail")
        .filter(|d| d.get("csv").is_some())
        .cloned()
        .unwrap_or(event);
    let run: ScheduledRun = serde_json::from_value(input).map_err(|e| {
        format!("not an S3 event nor a scheduled run input {{\"csv\": \"s3://bucket/key\", \"template\": …, \"model\": …}}: {e}")
    })?;
    let batch = match run.mode.as_deref().unwrap_or_default() {
        "batch" => true,
        "" | "sync" => false,
        other => return Err(format!("mode {other:?} is not one: \"batch\" or \"sync\"")),
    };
    let (bucket, key) = run
        .csv
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| format!("csv {:?} is not an s3://bucket/key URI", run.csv))?;
    Ok(vec![Request {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        etag: None,
        // The template's schedule input leaves an unset template or model as "": absent, not a name.
        template: run
            .template
            .filter(|t| !t.is_empty())
            .or_else(|| template_from_key(key)),
        model: run.model.filter(|m| !m.is_empty()),
        batch,
    }])
}

/// `incoming/<template>/<name>.csv` names its template.
fn template_from_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    (parts.len() >= 3 && parts[0] == "incoming" && !parts[1].is_empty()).then(|| parts[1].to_owned())
}

/// S3 event keys are form-URL-encoded (`+` for space, `%2F` for `/`).
fn url_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (b'+', None) => out.push(b' '),
            (byte, None) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits every CSV the event names, or goes on with the runs of a batch of continuations.
pub async fn handle(deps: &Deps, event: LambdaEvent<serde_json::Value>) -> Result<serde_json::Value, Error> {
    let deadline = event.context.deadline;
    if event.payload.get(POLL_EVENT).is_some() {
        return Ok(serde_json::to_value(poll_batches(deps, deadline).await?)?);
    }
    if is_sqs(&event.payload) {
        let batch: SqsEvent = serde_json::from_value(event.payload)?;
        return Ok(serde_json::to_value(continue_runs(deps, batch, deadline).await)?);
    }
    let mut outcomes = Vec::new();
    for request in requests(event.payload)? {
        outcomes.push(split_one(deps, request, deadline).await?);
    }
    Ok(serde_json::to_value(outcomes)?)
}

fn is_sqs(event: &serde_json::Value) -> bool {
    event
        .pointer("/Records/0/eventSource")
        .and_then(|s| s.as_str())
        .is_some_and(|s| s == "aws:sqs")
}

async fn split_one(deps: &Deps, request: Request, deadline: u64) -> Result<Outcome, Error> {
    let source_store = S3ObjectStore::new(deps.clients.s3.clone(), &request.bucket);
    // One HEAD: the ETag when the event has none (a schedule), the model a submit chose.
    let (head_etag, metadata) = source_store
        .head(&request.key)
        .await?
        .ok_or_else(|| format!("{} does not exist", source_store.uri(&request.key)))?;
    let etag = request.etag.clone().unwrap_or(head_etag);
    let model = request.model.clone().or_else(|| metadata.get(MODEL_METADATA).cloned());
    let batch = request.batch || metadata.get(MODE_METADATA).is_some_and(|m| m == "batch");
    let source = S3Csv::new(source_store, &request.key, &etag);
    // A broken config file rejects the run (file, line, problem in the report and in Slack).
    let (config, template) = match DeploymentConfig::load(&deps.bucket).await {
        Ok(config) => {
            let template = template_name(&request, &config).map(str::to_owned);
            (config, template)
        }
        Err(reason) => (DeploymentConfig::from_texts(None, None)?, Err(reason.to_string())),
    };
    let template = template.and_then(|name| config.templates.get(&name).map_err(|e| e.to_string()));
    let template = template.map(|t| {
        let mut template = t.clone();
        if batch {
            template.mode = Mode::Batch;
        }
        template
    });
    let split = deps
        .splitter
        .split(
            &source,
            template.as_ref().map_err(String::clone),
            model.as_deref(),
            &config.catalog,
            deadline,
        )
        .await?;
    Ok(Outcome::of(source.name(), split))
}

/// The input of the batch poll schedule: `{"poll_batches": true}`.
pub const POLL_EVENT: &str = "poll_batches";

/// What one poll found, returned to the invoker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Polled {
    /// Open batch-mode runs looked at.
    pub runs: u64,
    /// Batches still at the provider, and those whose results were read now.
    pub waiting: u64,
    pub collected: u64,
}

/// Polls the batches of every open batch-mode run, reading those finished while the invocation has
/// time; a run whose poll fails is logged and polled again at the next schedule.
async fn poll_batches(deps: &Deps, deadline: u64) -> Result<Polled, Error> {
    let mut polled = Polled::default();
    let stop_by = deadline.saturating_sub(COLLECT_TIME.as_millis() as u64);
    for run_id in deps.splitter.ledger.open_runs().await? {
        let Some(run) = deps.splitter.ledger.run(&run_id).await? else {
            continue;
        };
        if !run.mode.is_batch() {
            continue;
        }
        polled.runs += 1;
        match deps.batches.poll(&run_id, stop_by, run.stopped.is_some()).await {
            Ok(progress) => {
                polled.waiting += progress.waiting;
                polled.collected += progress.collected;
            }
            Err(e) => tracing::warn!(%run_id, error = %e, "batches not polled; trying again at the next poll"),
        }
    }
    tracing::info!(
        runs = polled.runs,
        waiting = polled.waiting,
        collected = polled.collected,
        "batches polled"
    );
    Ok(polled)
}

/// Continues each run named by the batch; a run that could not go on comes back.
async fn continue_runs(deps: &Deps, batch: SqsEvent, deadline: u64) -> SqsBatchResponse {
    each_record(Record::all(batch), 1, |record| async move {
        let Some(continuation) = record.parse::<Continuation>("a continuation") else {
            return false; // dropped: nothing to continue
        };
        match continue_run(deps, &continuation, deadline).await {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(run_id = %continuation.continue_run, error = %e, "split not continued; trying again later");
                true
            }
        }
    })
    .await
}

async fn continue_run(deps: &Deps, continuation: &Continuation, deadline: u64) -> Result<(), Error> {
    let run_id = continuation.continue_run.as_str();
    let Some(run) = deps.splitter.ledger.run(run_id).await? else {
        return Err(format!("run {run_id} is not in the ledger").into());
    };
    let source = S3Csv::of_run(deps.clients.s3.clone(), &run)?;
    let split = deps
        .splitter
        .resume(run_id, continuation.rows_read, &source, deadline)
        .await?;
    tracing::info!(
        run_id,
        sent = split.sent,
        continued = split.continued,
        "split continued"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_put_event_names_bucket_decoded_key_etag_and_template() {
        let event = serde_json::from_str(include_str!("../../../events/s3-put.json")).unwrap();
        let requests = requests(event).unwrap();
        assert_eq!(
            requests,
            vec![Request {
                bucket: "imagepipe-example".into(),
                key: "incoming/product_hero/spring launch.csv".into(),
                etag: Some("0123456789abcdef0123456789abcdef".into()),
                template: Some("product_hero".into()),
                model: None,
                batch: false,
            }]
        );
    }

    #[test]
    fn a_schedule_input_may_ask_for_batch_mode() {
        let event = serde_json::json!({"csv": "s3://b/schedules/a.csv", "template": "product", "mode": "batch"});
        assert!(requests(event).unwrap()[0].batch);
        let event = serde_json::json!({"csv": "s3://b/schedules/a.csv", "mode": "sync"});
        assert!(!requests(event).unwrap()[0].batch);
        let error = requests(serde_json::json!({"csv": "s3://b/a.csv", "mode": "cheap"})).unwrap_err();
        assert!(error.contains("\"batch\" or \"sync\""), "{error}");
    }

    #[test]
    fn scheduled_input_names_csv_template_and_model() {
        let event = serde_json::from_str(include_str!("../../../events/scheduled-run.json")).unwrap();
        let requests = requests(event).unwrap();
        assert_eq!(requests[0].bucket, "imagepipe-example");
        assert_eq!(requests[0].key, "catalog/products.csv");
        assert_eq!(requests[0].template.as_deref(), Some("product_hero"));
        assert_eq!(requests[0].model.as_deref(), Some("nano-banana"));
    }

    #[test]
    fn an_empty_model_or_template_in_a_schedule_input_means_none() {
        let event = serde_json::json!({"csv": "s3://b/schedules/a.csv", "template": "blog_hero", "model": ""});
        let scheduled = requests(event).unwrap();
        assert_eq!(
            (scheduled[0].template.as_deref(), scheduled[0].model.as_deref()),
            (Some("blog_hero"), None)
        );
        let event = serde_json::json!({"csv": "s3://b/incoming/product/a.csv", "template": ""});
        assert_eq!(requests(event).unwrap()[0].template.as_deref(), Some("product"));
    }

    #[test]
    fn unusable_events_say_what_was_expected() {
        let error = requests(serde_json::json!({"csv": "products.csv"})).unwrap_err();
        assert!(error.contains("s3://bucket/key"), "{error}");
        let error = requests(serde_json::json!({"hello": 1})).unwrap_err();
        assert!(error.contains("scheduled run input"), "{error}");
        assert_eq!(requests(serde_json::json!({"Event": "s3:TestEvent"})).unwrap(), vec![]);
    }

    #[test]
    fn url_decoding_handles_plus_percent_and_stray_percent() {
        assert_eq!(url_decode("incoming%2Fa+b%C3%A9.csv"), "incoming/a bé.csv");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("50%zz"), "50%zz");
    }
}
