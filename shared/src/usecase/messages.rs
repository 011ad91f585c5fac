//! The run's messages to people: the start and completion texts, and posting them with retries.

use crate::domain::report::RunReport;
use crate::domain::retry::RetryPolicy;
use crate::ports::publish::{Notifier, PublishError};

/// Failures listed in the completion message; the report has them all.
const FAILURES_SHOWN: usize = 10;

/// The message that announces a run.
pub fn start_message(
    run_id: &str,
    source: &str,
    template: &str,
    model: &str,
    valid: u64,
    estimated_cost: f64,
) -> String {
    format!(
        "*imagepipe* run `{run_id}` started: {valid} images from `{source}` ({template}, {model}), estimated ${estimated_cost:.2}"
    )
}

/// The completion message: counts, failures with reasons, cost, duration and where the report is.
pub fn completion_message(report: &RunReport, report_location: &str) -> String {
    let what = if report.redrives > 0 {
        "redrive finished"
    } else {
        "finished"
    };
    let mut text = format!(
        "*imagepipe* run `{}` {what}: {}. Cost ${:.2} (estimated ${:.2}), {:.0}s.",
        report.run_id,
        report.counts(),
        report.actual_cost_usd,
        report.estimated_cost_usd,
        report.duration_secs
    );
    if let Some(reason) = &report.rejected {
        text.push_str(&format!(" Rejected, nothing generated: {reason}."));
    }
    if let Some(reason) = &report.stopped {
        text.push_str(&format!(" Stopped: {reason}; the rows after it were not attempted."));
    }
    if report.cms_failed > 0 {
        text.push_str(&format!(" CMS updates failed for {} images.", report.cms_failed));
    }
    let problems = report
        .failures
        .iter()
        .map(|f| format!("• row {} `{}`: {}", f.row, f.key, f.reason))
        .chain(
            report
                .invalid_rows
                .iter()
                .map(|i| format!("• row {} invalid: {}", i.row, i.reason)),
        );
    let listed: Vec<String> = problems.take(FAILURES_SHOWN).collect();
    if !listed.is_empty() {
        text.push('\n');
        text.push_str(&listed.join("\n"));
        let more = (report.failed + report.invalid) as usize - listed.len();
        if more > 0 {
            text.push_str(&format!("\n…and {more} more in the report"));
        }
    }
    text.push_str(&format!("\nReport: {report_location}"));
    text
}

/// Posts `text`, retrying when the notifier is throttled or down.
pub async fn notify<N: Notifier>(notifier: &N, text: &str, retry: &RetryPolicy) -> Result<(), PublishError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match notifier.post(text).await {
            Ok(()) => return Ok(()),
            Err(error) if error.retryable && retry.allows_another(attempt) => {
                tracing::warn!(attempt, %error, "retrying");
                tokio::time::sleep(retry.delay(attempt, None)).await;
            }
            Err(error) => return Err(error),
        }
    }
}
