//! The run report: counts that always add up, and every image, failure and invalid row.

use serde::{Deserialize, Serialize};

use crate::rows::InvalidRow;

/// One stored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub row: u64,
    pub key: String,
    /// The image's key in the store (`images/<key>.<ext>`).
    pub object_key: String,
    /// Where the image is: a file path locally, `s3://bucket/key` on AWS.
    pub path: String,
    pub content_type: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// The image already existed (an earlier run made it), so the provider was not called.
    #[serde(default)]
    pub reused: bool,
    pub cost_usd: f64,
    /// Credits the provider reported for the call (AnyCap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_used: Option<f64>,
}

/// One row whose image could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureEntry {
    pub row: u64,
    pub key: String,
    pub reason: String,
    pub attempts: u32,
}

/// The outcome of a run. Invariant: `rows == succeeded + failed + invalid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub source: String,
    pub template: String,
    pub model: String,
    pub provider: String,
    pub rows: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub invalid: u64,
    /// Images that already existed and were not generated again.
    pub reused: u64,
    pub estimated_cost_usd: f64,
    pub actual_cost_usd: f64,
    pub duration_secs: f64,
    pub images: Vec<ImageEntry>,
    pub failures: Vec<FailureEntry>,
    pub invalid_rows: Vec<InvalidRow>,
    /// Images the CMS was pointed at.
    #[serde(default)]
    pub cms_updated: u64,
    /// Images stored but not recorded in the CMS (the image itself succeeded).
    #[serde(default)]
    pub cms_failures: Vec<FailureEntry>,
    /// Why nothing was generated (over budget, unreadable CSV, unknown template); `None` for a run that went ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// Collects outcomes as they arrive and produces a consistent report.
#[derive(Debug)]
pub struct ReportBuilder {
    report: RunReport,
}

impl ReportBuilder {
    /// Starts a report for run `run_id`.
    pub fn new(
        run_id: &str,
        source: &str,
        template: &str,
        model: &str,
        provider: &str,
        estimated_cost_usd: f64,
    ) -> Self {
        Self {
            report: RunReport {
                run_id: run_id.to_owned(),
                source: source.to_owned(),
                template: template.to_owned(),
                model: model.to_owned(),
                provider: provider.to_owned(),
                rows: 0,
                succeeded: 0,
                failed: 0,
                invalid: 0,
                reused: 0,
                estimated_cost_usd,
                actual_cost_usd: 0.0,
                duration_secs: 0.0,
                images: Vec::new(),
                failures: Vec::new(),
                invalid_rows: Vec::new(),
                cms_updated: 0,
                cms_failures: Vec::new(),
                rejected: None,
            },
        }
    }

    /// Records a stored image.
    pub fn image(&mut self, entry: ImageEntry) {
        self.report.reused += u64::from(entry.reused);
        self.report.actual_cost_usd += entry.cost_usd;
        self.report.images.push(entry);
    }

    /// Records a failed row.
    pub fn failure(&mut self, entry: FailureEntry) {
        self.report.failures.push(entry);
    }

    /// Records an invalid row.
    pub fn invalid(&mut self, entry: InvalidRow) {
        self.report.invalid_rows.push(entry);
    }

    /// The report, sorted by row, with counts derived from the entries.
    pub fn finish(mut self, duration_secs: f64) -> RunReport {
        let r = &mut self.report;
        r.images.sort_by_key(|e| e.row);
        r.failures.sort_by_key(|e| e.row);
        r.invalid_rows.sort_by_key(|e| e.row);
        r.succeeded = r.images.len() as u64;
        r.failed = r.failures.len() as u64;
        r.invalid = r.invalid_rows.len() as u64;
        r.rows = r.succeeded + r.failed + r.invalid;
        r.duration_secs = duration_secs;
        self.report
    }
}
