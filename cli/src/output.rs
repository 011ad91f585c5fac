//! What the CLI prints: text for people, JSON with `--json`, a progress bar on a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;

use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::events::now_ms;
use imagepipe::domain::report::RunReport;
use imagepipe::ports::ledger::RunRecord;
use imagepipe::usecase::batch::BatchProgress;
use imagepipe::usecase::plan::Plan;
use indicatif::{ProgressBar, ProgressStyle};

/// Logs to stderr; `-v` for info, `-vv` for debug; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A progress bar on stderr when it is a terminal; otherwise (a CI log) one plain line per 10 %;
/// nothing with JSON output.
pub struct Bar(Option<ProgressBar>, Option<std::sync::atomic::AtomicU64>);

pub fn progress_bar(json: bool) -> Bar {
    if json {
        return Bar(None, None);
    }
    if !std::io::stderr().is_terminal() {
        return Bar(None, Some(std::sync::atomic::AtomicU64::new(0)));
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {msg}  {per_sec}  eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Bar(Some(bar), None)
}

impl Bar {
    /// Shows where `run` stands (a local run's or a deployed one's: the same ledger record).
    pub fn update(&self, run: &RunRecord) {
        let (done, total) = (run.recorded(), run.totals.as_ref().map_or(0, |t| t.awaited));
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!(
                "{} failed  ${:.4} spent",
                run.counts.failed, run.counts.spend_usd
            ));
        }
        if let Some(shown) = &self.1 {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if run.totals.is_some() && shown.fetch_max(tenth, std::sync::atomic::Ordering::Relaxed) < tenth {
                eprintln!("progress: {} ({}%)", progress_summary(run), tenth * 10);
            }
        }
    }

    /// Shows where a batch-mode run's batches stand after a poll.
    pub fn batches(&self, progress: &BatchProgress) {
        let line = format!(
            "batches: {} at the provider ({}/{} requests done), {} read this poll",
            progress.waiting, progress.done, progress.requests, progress.collected
        );
        match &self.0 {
            Some(bar) => bar.println(line),
            None if self.1.is_some() => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Done/total, failures, invalid rows, spend, rate and ETA of a run.
pub fn progress_summary(run: &RunRecord) -> String {
    let totals = run.totals.clone().unwrap_or_default();
    let done = run.recorded();
    let elapsed = now_ms().saturating_sub(run.started_at_ms) as f64 / 1000.0;
    let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
    let eta = match run.outstanding() {
        Some(0) => "done".to_owned(),
        Some(left) if rate > 0.0 => format!("ETA {:.0}s", left as f64 / rate),
        _ => "ETA -".to_owned(),
    };
    format!(
        "{done}/{} done, {} failed, {} invalid, ${:.4} spent, {rate:.1}/s, {eta}",
        totals.awaited, run.counts.failed, totals.invalid, run.counts.spend_usd
    )
}

/// Prints `value` as JSON with `json`; otherwise hands back stdout for the text form.
fn json_or_text(json: bool, value: &impl serde::Serialize) -> anyhow::Result<Option<std::io::StdoutLock<'static>>> {
    let mut out = std::io::stdout().lock();
    if !json {
        return Ok(Some(out));
    }
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(None)
}

pub fn models(catalog: &Catalog, json: bool) -> anyhow::Result<()> {
    let Some(mut out) = json_or_text(json, catalog)? else {
        return Ok(());
    };
    writeln!(
        out,
        "{:<18} {:<12} {:<34} {:>9} {:>9}  use for",
        "MODEL", "PROVIDER", "PROVIDER MODEL", "$/IMAGE", "BATCH"
    )?;
    for (name, m) in &catalog.models {
        let batch = m.batch_price_per_image.map_or("-".to_owned(), |p| format!("{p:.4}"));
        writeln!(
            out,
            "{name:<18} {:<12} {:<34} {:>9.4} {batch:>9}  {}",
            m.provider, m.provider_model, m.price_per_image, m.use_for
        )?;
    }
    writeln!(
        out,
        "\nList prices in {} as of {}.",
        catalog.currency, catalog.prices_as_of
    )?;
    Ok(())
}

pub fn providers(json: bool) -> anyhow::Result<()> {
    use imagepipe::providers::registry::PROVIDERS;
    let rows: Vec<_> = (PROVIDERS.iter())
        .map(|p| serde_json::json!({"name": p.name, "about": p.about, "credentials": p.credentials.describe()}))
        .collect();
    let Some(mut out) = json_or_text(json, &rows)? else {
        return Ok(());
    };
    writeln!(out, "{:<12} {:<56} CREDENTIALS", "PROVIDER", "WHAT")?;
    for p in &PROVIDERS {
        writeln!(out, "{:<12} {:<56} {}", p.name, p.about, p.credentials.describe())?;
    }
    Ok(())
}

pub fn plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    let Some(mut out) = json_or_text(json, plan)? else {
        return Ok(());
    };
    writeln!(
        out,
        "{}: template {}, model {} ({}), {}",
        shown(&plan.file),
        plan.template,
        plan.model,
        plan.provider,
        plan.size
    )?;
    writeln!(
        out,
        "rows {}  valid {}  invalid {}",
        plan.rows, plan.valid, plan.invalid
    )?;
    for invalid in &plan.invalid_rows {
        writeln!(out, "  row {}: {}", invalid.row, shown(&invalid.reason))?;
    }
    writeln!(out, "\nsample prompts:")?;
    for prompt in &plan.sample_prompts {
        writeln!(out, "  {}", shown(prompt))?;
    }
    let how = if plan.mode.is_batch() {
        " through the batch API"
    } else {
        ""
    };
    writeln!(
        out,
        "\nestimated provider cost{how}: ${:.2} ({} images × ${})",
        plan.estimated_cost_usd, plan.valid, plan.price_per_image
    )?;
    match plan.batch_cost_usd {
        Some(_) if plan.mode.is_batch() => writeln!(out, "  synchronous calls would cost ${:.2}", plan.sync_cost_usd)?,
        Some(batch) => writeln!(out, "  through the batch API (--batch): ${batch:.2}")?,
        None => writeln!(out, "  (no batch API price for {})", plan.model)?,
    }
    writeln!(out, "\n{} at scale:", plan.model)?;
    for (images, cost) in &plan.cost_at_scale {
        writeln!(out, "  {images:>7} images  ${cost:>10.2}")?;
    }
    writeln!(
        out,
        "\nthis run ({} images) on every model (prices as of {}):",
        plan.valid, plan.prices_as_of
    )?;
    for line in &plan.cost_for_this_run {
        let batch = line
            .batch_cost_usd
            .map_or(String::new(), |c| format!("  (batch API ${c:.2})"));
        writeln!(
            out,
            "  {:<18} {:<12} ${:>10.2}{batch}",
            line.model, line.provider, line.cost_usd
        )?;
    }
    let usage = &plan.aws_usage;
    writeln!(
        out,
        "
AWS infrastructure on the serverless path (generator {} MB, batch {}, {} s per provider call):",
        usage.generator_memory_mb, usage.generator_batch, usage.provider_latency_secs
    )?;
    for cost in &plan.aws_cost {
        writeln!(
            out,
            "  {:>7} images  ${:>8.4}  (Lambda ${:.4}, SQS ${:.4}, S3 ${:.4}, DynamoDB ${:.4}, logs ${:.4}) \
             + provider ${:.2}",
            cost.images,
            cost.total_usd,
            cost.lambda_usd,
            cost.sqs_usd,
            cost.s3_usd,
            cost.dynamodb_usd,
            cost.logs_usd,
            plan.price_per_image * cost.images as f64
        )?;
    }
    Ok(())
}

/// Data (file names, keys, reasons quoting CSV values) as it may reach a terminal: control
/// characters, ANSI escapes included, shown escaped.
fn shown(text: &str) -> String {
    imagepipe::domain::redact::escape_control(text)
}

pub fn report(report: &RunReport, path: &Path, json: bool) -> anyhow::Result<()> {
    let Some(mut out) = json_or_text(json, report)? else {
        return Ok(());
    };
    writeln!(
        out,
        "{}: {} in {:.1}s",
        report.run_id,
        report.counts(),
        report.duration_secs
    )?;
    writeln!(
        out,
        "cost: ${:.4} (estimated ${:.4})",
        report.actual_cost_usd, report.estimated_cost_usd
    )?;
    if let Some(usd) = report.sync_cost_usd {
        writeln!(
            out,
            "made through the batch API; synchronous calls would have cost ${usd:.4}"
        )?;
    }
    if let Some(usd) = report.model_estimate_usd {
        writeln!(
            out,
            "with {} on its own provider this run would cost ${usd:.4} (made here by {})",
            report.model, report.provider
        )?;
    }
    let failures = report.failures.iter().map(|f| ("failed ", f));
    for (what, f) in failures.chain(report.cms_failures.iter().map(|f| ("CMS not updated,", f))) {
        let (key, reason) = (shown(&f.key), shown(&f.reason));
        writeln!(
            out,
            "  {what} row {} ({key}): {reason} [{} attempts]",
            f.row, f.attempts
        )?;
    }
    for i in &report.invalid_rows {
        writeln!(out, "  invalid row {}: {}", i.row, shown(&i.reason))?;
    }
    writeln!(out, "report: {}", path.display())?;
    writeln!(out, "page: {}", path.with_extension("html").display())?;
    Ok(())
}

/// A submitted run: its id (what `status` and `cancel` take) and where its CSV went.
pub fn submitted(run_id: &str, source: &str, json: bool) -> anyhow::Result<()> {
    let value = serde_json::json!({"run_id": run_id, "csv": source});
    let Some(mut out) = json_or_text(json, &value)? else {
        return Ok(());
    };
    writeln!(out, "{run_id}")?;
    eprintln!("{source}: watch it with `imagepipe status {run_id}`");
    Ok(())
}

/// Runs' progress, one line each, and the first failures of one run (or the ledger records as JSON).
pub fn status(
    runs: &[imagepipe::ports::ledger::RunRecord],
    failures: &[imagepipe::domain::report::FailureEntry],
    json: bool,
) -> anyhow::Result<()> {
    let Some(mut out) = json_or_text(json, &runs)? else {
        return Ok(());
    };
    if runs.is_empty() {
        writeln!(out, "no run in progress")?;
    }
    for run in runs {
        writeln!(out, "{}", shown(&crate::stack::progress_line(run)))?;
    }
    for f in failures {
        writeln!(out, "  failed row {} ({}): {}", f.row, shown(&f.key), shown(&f.reason))?;
    }
    Ok(())
}
