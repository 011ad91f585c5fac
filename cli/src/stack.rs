//! Operating a deployed stack from a terminal: its templates and models (`config`), starting a run
//! (`submit`), watching it (`status`, `submit --wait`) and stopping it (`cancel`). The bucket and the
//! ledger table come from the CloudFormation stack's outputs (`--stack`), or are named directly;
//! credentials and region come from the standard AWS chain (`AWS_ENDPOINT_URL` included).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use imagepipe::adapters::dynamodb_ledger::DynamoLedger;
use imagepipe::adapters::s3_store::S3ObjectStore;
use imagepipe::domain::deployment::{DeploymentConfig, MODELS_KEY, TEMPLATES_KEY};
use imagepipe::domain::report::RunReport;
use imagepipe::domain::template::Mode;
use imagepipe::drivers::lambda::AwsClients;
use imagepipe::ports::ledger::{RunLedger, RunRecord, RunState};
use imagepipe::ports::store::{NewObject, ObjectStore};
use imagepipe::usecase::batch::batch_refusal;
use imagepipe::usecase::split::run_id_of;

/// The user metadata naming a submitted run's model (read by the splitter).
const MODEL_METADATA: &str = "imagepipe-model";
const MODE_METADATA: &str = "imagepipe-mode";

/// Where a deployed stack keeps things.
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// The CloudFormation stack (its outputs name the bucket and the ledger table).
    #[arg(long, env = "IMAGEPIPE_STACK")]
    pub stack: Option<String>,
    /// The stack's bucket (instead of the stack's output).
    #[arg(long)]
    pub bucket: Option<String>,
    /// The stack's run-ledger table (instead of the stack's output).
    #[arg(long)]
    pub table: Option<String>,
    /// The stack's jobs queue URL (instead of the stack's output; `redrive` sends to it).
    #[arg(long)]
    pub jobs_queue: Option<String>,
}

/// A deployed stack, resolved.
pub struct Stack {
    pub clients: AwsClients,
    pub bucket: String,
    pub ledger: DynamoLedger,
    /// The jobs queue, when known.
    pub jobs_queue: Option<String>,
}

impl StackArgs {
    /// Resolves the bucket and table, from the stack's outputs unless both are given.
    pub async fn resolve(&self) -> anyhow::Result<Stack> {
        if self.stack.is_none() && (self.bucket.is_none() || self.table.is_none()) {
            bail!("name the stack with --stack NAME (or IMAGEPIPE_STACK), or give --bucket and --table");
        }
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let clients = AwsClients::from_config(&config);
        let (bucket, table, jobs_queue) = match (&self.bucket, &self.table, &self.stack) {
            (Some(bucket), Some(table), None) => (bucket.clone(), table.clone(), self.jobs_queue.clone()),
            (_, _, Some(stack)) => {
                let outputs = stack_outputs(&config, stack).await?;
                let output = |name: &str| {
                    outputs
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                        .with_context(|| format!("stack {stack} has no output {name}: is it an imagepipe stack?"))
                };
                (
                    self.bucket.clone().map_or_else(|| output("BucketName"), Ok)?,
                    self.table.clone().map_or_else(|| output("LedgerTableName"), Ok)?,
                    self.jobs_queue.clone().or_else(|| output("JobsQueueUrl").ok()),
                )
            }
            _ => bail!("name the stack with --stack NAME (or IMAGEPIPE_STACK), or give --bucket and --table"),
        };
        let ledger = DynamoLedger::new(clients.dynamodb.clone(), &table, Duration::from_secs(90 * 86_400));
        Ok(Stack {
            clients,
            bucket,
            ledger,
            jobs_queue,
        })
    }
}

async fn stack_outputs(config: &aws_config::SdkConfig, stack: &str) -> anyhow::Result<Vec<(String, String)>> {
    let described = aws_sdk_cloudformation::Client::new(config)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .with_context(|| format!("cannot describe stack {stack}"))?;
    let stack = described
        .stacks()
        .first()
        .with_context(|| format!("no stack {stack}"))?;
    Ok(stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect())
}

impl Stack {
    fn store(&self) -> S3ObjectStore {
        S3ObjectStore::new(self.clients.s3.clone(), &self.bucket)
    }

    /// The run record, or an error naming the run.
    pub async fn run(&self, run_id: &str) -> anyhow::Result<RunRecord> {
        self.ledger
            .run(run_id)
            .await?
            .with_context(|| format!("no run {run_id} in this stack's ledger"))
    }

    /// The run's report, once written.
    pub async fn report(&self, run_id: &str) -> anyhow::Result<Option<RunReport>> {
        let key = imagepipe::domain::locations::keys::report(run_id);
        match self.store().get(&key).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).context("the run's report.json")?)),
        }
    }
}

/// Reads the files named and checks them as the splitter will; returns their texts.
pub fn check_config(
    templates: Option<&Path>,
    models: Option<&Path>,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let read = |path: Option<&Path>| -> anyhow::Result<Option<String>> {
        path.map(|p| {
            let size = std::fs::metadata(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .len();
            if size > imagepipe::domain::deployment::MAX_CONFIG_BYTES as u64 {
                bail!(
                    "{} is {size} bytes; config files are limited to {} bytes",
                    p.display(),
                    imagepipe::domain::deployment::MAX_CONFIG_BYTES
                );
            }
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        })
        .transpose()
    };
    let (templates_text, models_text) = (read(templates)?, read(models)?);
    let named = |path: Option<&Path>, text: &Option<String>| -> Option<(String, String)> {
        Some((path?.display().to_string(), text.clone()?))
    };
    let (t, m) = (named(templates, &templates_text), named(models, &models_text));
    let config = DeploymentConfig::from_named_texts(
        t.as_ref().map(|(n, x)| (n.as_str(), x.as_str())),
        m.as_ref().map(|(n, x)| (n.as_str(), x.as_str())),
    )?;
    for name in config.templates.names() {
        let template = config.templates.get(name)?;
        config
            .catalog
            .model(&template.model)
            .with_context(|| format!("template {name} names a model the catalog does not have"))?;
    }
    Ok((templates_text, models_text))
}

/// Uploads checked config files to the stack's `config/`.
pub async fn push_config(
    stack: &Stack,
    templates: Option<String>,
    models: Option<String>,
) -> anyhow::Result<Vec<String>> {
    let mut pushed = Vec::new();
    for (key, text) in [(TEMPLATES_KEY, templates), (MODELS_KEY, models)] {
        let Some(text) = text else { continue };
        let object = NewObject {
            body: text.into_bytes().into(),
            content_type: "application/toml".into(),
            cache_control: None,
            metadata: Vec::new(),
        };
        stack.store().put(key, object).await?;
        pushed.push(format!("s3://{}/{key}", stack.bucket));
    }
    Ok(pushed)
}

/// Uploads `csv` as `incoming/<template>/<file name>` (with `model`, and batch mode when asked
/// for, in its metadata);
/// returns the run id the splitter will give it, and where the CSV went.
pub async fn submit(
    stack: &Stack,
    csv: &Path,
    template: &str,
    model: Option<&str>,
    batch: bool,
) -> anyhow::Result<(String, String)> {
    let config = DeploymentConfig::load(&stack.store()).await?;
    let chosen = config.templates.get(template)?;
    let model = model.map_or(chosen.model.clone(), str::to_owned);
    let info = config.catalog.model(&model)?;
    let mode = if batch { Mode::Batch } else { chosen.mode };
    if mode.is_batch()
        && let Some(refusal) = batch_refusal(&model, info, None, &config.catalog)
    {
        anyhow::bail!(refusal);
    }
    let name = csv
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", csv.display()))?;
    let key = format!("incoming/{template}/{name}");
    let body = aws_sdk_s3::primitives::ByteStream::from_path(csv)
        .await
        .with_context(|| format!("cannot read {}", csv.display()))?;
    let mut put = (stack.clients.s3.put_object())
        .bucket(&stack.bucket)
        .key(&key)
        .content_type("text/csv")
        .metadata(MODEL_METADATA, &model);
    if batch {
        put = put.metadata(MODE_METADATA, "batch");
    }
    let put = put
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot upload to s3://{}/{key}", stack.bucket))?;
    let etag = put.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    let source = format!("s3://{}/{key}", stack.bucket);
    Ok((run_id_of(&source, &etag, template, &model, mode), source))
}

/// Sends the failed rows of `run_id` again (those worth retrying, or `all` of them); returns how
/// many jobs were queued.
pub async fn redrive(stack: &Stack, run_id: &str, all: bool) -> anyhow::Result<u64> {
    use imagepipe::usecase::redrive;
    let run = stack.run(run_id).await?;
    if run.state != RunState::Complete {
        bail!(
            "run {run_id} is still {}: redrive it once it is complete",
            run.state.as_str()
        );
    }
    let queue = stack
        .jobs_queue
        .as_deref()
        .context("the jobs queue is not known: name the stack with --stack, or give --jobs-queue")?;
    let rows = redrive::failed_rows(&stack.ledger, run_id, all).await?;
    let source =
        imagepipe::adapters::s3_store::S3Csv::of_run(stack.clients.s3.clone(), &run).map_err(anyhow::Error::msg)?;
    let jobs = imagepipe::adapters::sqs_queue::SqsQueue::new(stack.clients.sqs.clone(), queue);
    Ok(redrive::redrive(&stack.ledger, &jobs, &run, &source, &rows).await?)
}

/// Progress as people read it: done/total, failed, spend, rate and ETA.
pub fn progress_line(run: &RunRecord) -> String {
    let stopped = run
        .stopped
        .as_deref()
        .map(|r| format!(", stopped: {r}"))
        .unwrap_or_default();
    let summary = crate::output::progress_summary(run);
    format!("{} {}: {summary}{stopped}", run.run_id, run.state.as_str())
}

/// The first failures of a run (from the first page of its outcomes: one read).
pub async fn first_failures(
    stack: &Stack,
    run_id: &str,
    n: usize,
) -> anyhow::Result<Vec<imagepipe::domain::report::FailureEntry>> {
    let page = stack.ledger.outcomes(run_id, None).await?;
    Ok(page
        .items
        .into_iter()
        .filter_map(|o| match o {
            imagepipe::domain::events::Outcome::Failed { failure } => Some(failure),
            imagepipe::domain::events::Outcome::Succeeded { .. } => None,
        })
        .take(n)
        .collect())
}

/// Polls the run until its report is written; prints a progress line when it changes.
pub async fn wait(stack: &Stack, run_id: &str, json: bool) -> anyhow::Result<RunReport> {
    let bar = crate::output::progress_bar(json);
    loop {
        if let Some(run) = stack.ledger.run(run_id).await? {
            bar.update(&run);
            if run.state == RunState::Complete
                && let Some(report) = stack.report(run_id).await?
            {
                bar.finish();
                return Ok(report);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The paths of the config files a command was given.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigFiles {
    /// A templates file (the format of `templates/default.toml`).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// A models file (the format of `catalog/models.toml`, with `prices_as_of`).
    #[arg(long)]
    pub models: Option<PathBuf>,
}
