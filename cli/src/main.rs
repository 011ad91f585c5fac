//! `imagepipe`: plan and run CSV → image pipelines on one machine, list the model catalog, and
//! operate a deployed stack (its templates and models, submitting, watching and cancelling runs).

mod output;
mod stack;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use imagepipe::adapters::http_publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::adapters::s3_store::LazyS3Signer;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::template::{Mode, Template, TemplateSet};
use imagepipe::drivers::local::{
    CancellationToken, INTERRUPT_GRACE, LocalBatch, LocalRun, Publishing, RunError, report_path,
};
use imagepipe::ports::ledger::RunState;
use imagepipe::providers;
use imagepipe::usecase::plan::plan_csv;

/// Exit code: the run finished but some rows failed or were invalid.
const EXIT_INCOMPLETE: u8 = 1;
/// Exit code: the run could not start (usage, configuration, unreadable input).
const EXIT_CANNOT_START: u8 = 2;
/// Exit code: the run was interrupted (Ctrl-C); its report says which rows were not done.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(name = "imagepipe", version, about = "Turn a CSV of rows into AI-generated images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log more (repeat for debug); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Args)]
struct Input {
    /// The CSV file (UTF-8, header row first).
    csv: PathBuf,
    /// Template name (see the templates file).
    #[arg(short, long)]
    template: String,
    /// Templates TOML file; the built-in templates when absent.
    #[arg(long, env = "IMAGEPIPE_TEMPLATES")]
    templates: Option<PathBuf>,
    /// Model from the catalog; the template's model when absent.
    #[arg(short, long)]
    model: Option<String>,
    /// Through the provider's batch API: half the price, results within a day (as the template's
    /// `mode = "batch"`).
    #[arg(long)]
    batch: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a CSV against a template and show what a run would cost.
    Plan(Input),
    /// Generate one image per valid row, locally.
    Run {
        #[command(flatten)]
        input: Input,
        /// Provider to call; the model's catalog provider when absent (`placeholder` works offline).
        #[arg(short, long)]
        provider: Option<String>,
        /// Output directory: images under images/, reports under runs/.
        #[arg(short, long, default_value = "out")]
        out: PathBuf,
        /// Provider calls in flight at once.
        #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// Attempts per row, the first included.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
        max_attempts: u32,
        /// Seconds one provider call may take (at least 1).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_secs: u64,
        /// Batch mode: seconds between polls of the provider's batches.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        poll_secs: u64,
        /// Batch mode: requests in one batch (at most 500).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=500))]
        batch_size: u16,
        /// Batch mode: rows a batch failed or let expire are tried once the synchronous way
        /// (`retry`), or fail with the provider's reason (`fail`).
        #[arg(long, value_enum, default_value_t = BatchFailed::Retry)]
        batch_failed: BatchFailed,
    },
    /// List the model catalog with prices.
    Models {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the image providers and the credentials each reads.
    Providers {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a deployment's templates and models files, or push them to its bucket.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Upload a CSV to a deployed stack (incoming/<template>/<file>) and print its run id.
    Submit {
        /// The CSV file.
        csv: PathBuf,
        /// Template name (built-in or from the stack's config/templates.toml).
        #[arg(short, long)]
        template: String,
        /// Model from the stack's catalog; the template's model when absent.
        #[arg(short, long)]
        model: Option<String>,
        /// Through the provider's batch API: half the price, results within a day (polled every
        /// `BatchPollSchedule`).
        #[arg(long)]
        batch: bool,
        #[command(flatten)]
        follow: Follow,
        #[command(flatten)]
        stack: stack::StackArgs,
    },
    /// A run's progress from the ledger (counts, spend, rate, ETA), or the runs not yet complete.
    Status {
        /// The run; without it, the open runs.
        run_id: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        stack: stack::StackArgs,
    },
    /// Send a complete run's failed rows again (those that may succeed now, or --all-failed); the
    /// run completes again with its report rewritten. Images already made are not paid again.
    Redrive {
        run_id: String,
        /// Every failed row, refusals included.
        #[arg(long)]
        all_failed: bool,
        #[command(flatten)]
        follow: Follow,
        #[command(flatten)]
        stack: stack::StackArgs,
    },
    /// Stop a run: generators stop starting its jobs within seconds; the rest is reported not attempted.
    Cancel {
        run_id: String,
        #[command(flatten)]
        stack: stack::StackArgs,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate templates and models files offline, as the splitter will.
    Check {
        #[command(flatten)]
        files: stack::ConfigFiles,
    },
    /// Validate the files, then upload them to the stack's config/.
    Push {
        #[command(flatten)]
        files: stack::ConfigFiles,
        #[command(flatten)]
        stack: stack::StackArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CANNOT_START)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    output::init_logging(cli.verbose);
    match execute(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::builtin();
    match command {
        Command::Config { action } => config(action).await,
        Command::Submit {
            csv,
            template,
            model,
            batch,
            follow,
            stack,
        } => {
            let stack = stack.resolve().await?;
            let (run_id, source) = stack::submit(&stack, &csv, &template, model.as_deref(), batch).await?;
            if !follow.wait {
                output::submitted(&run_id, &source, follow.json)?;
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{source}: run {run_id}");
            follow.until_reported(&stack, &run_id).await
        }
        Command::Status { run_id, json, stack } => {
            let stack = stack.resolve().await?;
            let runs = match &run_id {
                Some(run_id) => vec![stack.run(run_id).await?],
                None => {
                    let mut runs = Vec::new();
                    for run_id in imagepipe::ports::ledger::RunLedger::open_runs(&stack.ledger).await? {
                        runs.push(stack.run(&run_id).await?);
                    }
                    runs
                }
            };
            let failures = match &run_id {
                Some(run_id) => stack::first_failures(&stack, run_id, 5).await?,
                None => Vec::new(),
            };
            output::status(&runs, &failures, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Redrive {
            run_id,
            all_failed,
            follow,
            stack,
        } => {
            let stack = stack.resolve().await?;
            let sent = stack::redrive(&stack, &run_id, all_failed).await?;
            eprintln!("{run_id}: {sent} rows sent again");
            if sent == 0 || !follow.wait {
                return Ok(ExitCode::SUCCESS);
            }
            follow.until_reported(&stack, &run_id).await
        }
        Command::Cancel { run_id, stack } => {
            let stack = stack.resolve().await?;
            let run = stack.run(&run_id).await?;
            let who = std::env::var("USER").unwrap_or_else(|_| "someone".into());
            let reason = format!("cancelled by {who} from the command line");
            let stopped = imagepipe::ports::ledger::RunLedger::stop(&stack.ledger, &run_id, &reason).await?;
            match (stopped, run.state) {
                (true, _) => eprintln!("{run_id}: cancelled; generators stop starting its jobs within seconds"),
                (false, RunState::Complete) => eprintln!("{run_id}: already complete"),
                (false, _) => eprintln!("{run_id}: already stopped ({})", run.stopped.unwrap_or_default()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Providers { json } => {
            output::providers(json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { json } => {
            output::models(&catalog, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(input) => {
            let template = load_template(&input)?;
            let file = input.csv.display().to_string();
            let csv = std::fs::File::open(&input.csv).with_context(|| format!("cannot read {file}"))?;
            let plan = plan_csv(
                std::io::BufReader::new(csv),
                &file,
                &template,
                input.model.as_deref(),
                &catalog,
            )?;
            output::plan(&plan, input.json)?;
            Ok(if plan.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INCOMPLETE)
            })
        }
        Command::Run {
            input,
            provider,
            out,
            concurrency,
            max_attempts,
            timeout_secs,
            poll_secs,
            batch_size,
            batch_failed,
        } => {
            let template = load_template(&input)?;
            let model_name = input.model.as_deref().unwrap_or(&template.model);
            let model = catalog.model(model_name)?;
            let provider_name = provider.unwrap_or_else(|| model.provider.clone());
            let provider = providers::from_env(&provider_name)
                .await
                .with_context(|| format!("model {model_name} cannot run"))?;
            let bar = Arc::new(output::progress_bar(input.json));
            let batch = match template.mode {
                Mode::Sync => None,
                Mode::Batch => {
                    let entry = providers::registry::entry(&provider_name)?;
                    let api = entry
                        .build_batch()
                        .with_context(|| format!("provider {provider_name} has no batch API; run without --batch"))??;
                    let shown = bar.clone();
                    Some(LocalBatch {
                        api,
                        poll_every: Duration::from_secs(poll_secs),
                        retry_failed: batch_failed == BatchFailed::Retry,
                        requests: batch_size.into(),
                        progress: Arc::new(move |progress| shown.batches(progress)),
                    })
                }
            };
            let run = LocalRun {
                csv: input.csv.clone(),
                model: input.model.clone(),
                template,
                catalog,
                provider,
                // The AWS configuration is loaded only when a row has an s3:// reference to presign.
                signer: Some(Arc::new(LazyS3Signer::new(Duration::from_secs(3600)))),
                out_dir: out,
                concurrency: concurrency.into(),
                retry: RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                },
                timeout: Duration::from_secs(timeout_secs),
                publish: publishing_from_env()?,
                batch,
            };
            let interrupt = CancellationToken::new();
            watch_ctrl_c(interrupt.clone())?;
            let report = match run.run_until(|run| bar.update(run), &interrupt).await {
                Ok(report) => report,
                Err(paused @ RunError::Paused { .. }) => {
                    bar.finish();
                    eprintln!("{paused}");
                    return Ok(ExitCode::from(EXIT_INTERRUPTED));
                }
                Err(e) => return Err(e.into()),
            };
            bar.finish();
            output::report(&report, &report_path(&run.out_dir, &report.run_id), input.json)?;
            Ok(if interrupt.is_cancelled() {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                exit_code(&report)
            })
        }
    }
}

/// How `submit` and `redrive` follow the run they started.
#[derive(clap::Args)]
struct Follow {
    /// Show progress until the run's report is written, then its summary.
    #[arg(long)]
    wait: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl Follow {
    /// Shows the run's progress until its report is written, then the report's summary.
    async fn until_reported(&self, stack: &stack::Stack, run_id: &str) -> anyhow::Result<ExitCode> {
        let report = stack::wait(stack, run_id, self.json).await?;
        let key = imagepipe::domain::locations::keys::report(run_id);
        output::report(&report, Path::new(&key), self.json)?;
        Ok(exit_code(&report))
    }
}

/// 0 when every row made its image (and the CMS took it), 1 otherwise.
fn exit_code(report: &imagepipe::domain::report::RunReport) -> ExitCode {
    if report.failed + report.invalid == 0 && report.cms_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    }
}

async fn config(action: ConfigAction) -> anyhow::Result<ExitCode> {
    match action {
        ConfigAction::Check { files } => {
            stack::check_config(files.templates.as_deref(), files.models.as_deref())?;
            eprintln!("valid: every template parses and names a model the catalog has");
        }
        ConfigAction::Push { files, stack } => {
            let (templates, models) = stack::check_config(files.templates.as_deref(), files.models.as_deref())?;
            if templates.is_none() && models.is_none() {
                anyhow::bail!("nothing to push: give --templates and/or --models");
            }
            let stack = stack.resolve().await?;
            for pushed in stack::push_config(&stack, templates, models).await? {
                eprintln!("pushed {pushed}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first Ctrl-C interrupts the run (calls in flight get a grace period, then the report is
/// written); a second one exits at once. The handler is installed before this returns.
fn watch_ctrl_c(interrupt: CancellationToken) -> anyhow::Result<()> {
    let mut signals =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    tokio::spawn(async move {
        if signals.recv().await.is_none() {
            return;
        }
        eprintln!(
            "interrupted: no new provider call; calls in flight get {} s, then the report is written \
             (Ctrl-C again to stop at once)",
            INTERRUPT_GRACE.as_secs()
        );
        interrupt.cancel();
        if signals.recv().await.is_some() {
            std::process::exit(EXIT_INTERRUPTED.into());
        }
    });
    Ok(())
}

fn load_template(input: &Input) -> anyhow::Result<Template> {
    let mut template = TemplateSet::load(input.templates.as_deref())?
        .get(&input.template)?
        .clone();
    if input.batch {
        template.mode = Mode::Batch;
    }
    Ok(template)
}

/// What a batch-mode run does with rows a batch did not make.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BatchFailed {
    /// Try them once more through synchronous calls (full price).
    Retry,
    /// Fail them with the provider's reason.
    Fail,
}

/// CMS and Slack settings from the environment; both optional, but a CMS needs all of its three.
fn publishing_from_env() -> anyhow::Result<Publishing> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let client = http_client(Duration::from_secs(30));
    let cms = match var("CMS_BASE_URL") {
        None => None,
        Some(base) => {
            let token = var("CMS_TOKEN").context("CMS_BASE_URL is set, so CMS_TOKEN must be too")?;
            var("IMAGEPIPE_PUBLIC_BASE_URL")
                .context("CMS_BASE_URL is set, so IMAGEPIPE_PUBLIC_BASE_URL (where images are served) must be too")?;
            imagepipe::adapters::http_publish::check_base_url(&base)
                .map_err(|e| anyhow::anyhow!("CMS_BASE_URL {e}"))?;
            Some(HttpCms::new(client.clone(), &base, &token))
        }
    };
    Ok(Publishing {
        cms,
        notifier: var("SLACK_WEBHOOK_URL").map(|url| SlackWebhook::new(client, &url)),
        public_base_url: var("IMAGEPIPE_PUBLIC_BASE_URL"),
    })
}
