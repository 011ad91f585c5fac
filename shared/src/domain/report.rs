//! The run report (`report.json`): counts that always add up, failures and invalid rows grouped by
//! reason, and the first [`LISTED`] of each list; `results.csv` has a line for every row. Memory stays
//! bounded whatever the run's size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::rows::InvalidRow;

/// Entries listed per list in the report; the counts and `results.csv` cover every row.
pub const LISTED: usize = 100;
/// Characters of an image's prompt kept with it in the report.
pub const PROMPT_SHOWN: usize = 200;

/// The start of `prompt`, cut at [`PROMPT_SHOWN`] characters (with `…` when cut).
pub fn prompt_start(prompt: &str) -> String {
    match prompt.char_indices().nth(PROMPT_SHOWN) {
        Some((end, _)) => format!("{}…", &prompt[..end]),
        None => prompt.to_owned(),
    }
}

/// Distinct reasons counted per group; rarer ones are counted together as [`OTHER_REASONS`].
pub const REASON_GROUPS: usize = 50;
/// The group of the reasons past [`REASON_GROUPS`].
pub const OTHER_REASONS: &str = "(other reasons)";

/// How many rows failed (or were invalid) for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub rows: u64,
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub row: u64,
    pub key: String,
    /// What the CMS knows the row's item by.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cms_id: String,
    /// The start of the prompt (at most [`PROMPT_SHOWN`] characters), for the report's page.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
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
    /// A broken object (empty, an HTML page, cut short) was at the image's key and was replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaced_broken: bool,
}

#[cfg(any(test, feature = "test-util"))]
impl ImageEntry {
    /// A stored 64×64 PNG for `key` at row `row`, under `root` (a directory or `s3://bucket`), that
    /// cost $0.04; its CMS id is the key's last segment. For tests and benchmarks.
    pub fn example(row: u64, key: &str, root: &str) -> Self {
        let object_key = format!("images/{key}.png");
        Self {
            row,
            key: key.into(),
            cms_id: key.rsplit('/').next().unwrap_or(key).into(),
            prompt: format!("Photo of {key}"),
            path: format!("{root}/{object_key}"),
            object_key,
            content_type: "image/png".into(),
            bytes: 100,
            width: Some(64),
            height: Some(64),
            reused: false,
            cost_usd: 0.04,
            credits_used: None,
            replaced_broken: false,
        }
    }
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
    /// What the run would cost on its model's own provider, when another provider (the offline
    /// placeholder) made the images instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_estimate_usd: Option<f64>,
    pub actual_cost_usd: f64,
    /// Synchronous calls, or the provider's batch API.
    #[serde(default)]
    pub mode: crate::domain::template::Mode,
    /// In batch mode: what the images made would have cost through synchronous calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_cost_usd: Option<f64>,
    pub duration_secs: f64,
    /// The first [`LISTED`] images by row.
    pub images: Vec<ImageEntry>,
    /// The first [`LISTED`] failures by row.
    pub failures: Vec<FailureEntry>,
    /// Failures per reason, most frequent first.
    #[serde(default)]
    pub failure_reasons: Vec<ReasonCount>,
    /// The first [`LISTED`] invalid rows by row.
    pub invalid_rows: Vec<InvalidRow>,
    /// Invalid rows per reason, most frequent first.
    #[serde(default)]
    pub invalid_reasons: Vec<ReasonCount>,
    /// Images the CMS was pointed at.
    #[serde(default)]
    pub cms_updated: u64,
    /// How many images are stored but not recorded in the CMS (the image itself succeeded).
    #[serde(default)]
    pub cms_failed: u64,
    /// The first [`LISTED`] of those.
    #[serde(default)]
    pub cms_failures: Vec<FailureEntry>,
    /// Where the line of every row is (`results.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
    /// Times failed rows were sent again; the report is rewritten after each.
    #[serde(default)]
    pub redrives: u64,
    /// Why the run stopped calling the provider part-way (credentials refused, spend cap, cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Why nothing was generated (over budget, unreadable CSV, unknown template); `None` for a run that went ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl RunReport {
    /// `N/M succeeded, K failed, I invalid (R reused)`: the counts every summary starts with.
    pub fn counts(&self) -> String {
        format!(
            "{}/{} succeeded, {} failed, {} invalid ({} reused)",
            self.succeeded, self.rows, self.failed, self.invalid, self.reused
        )
    }
}

/// Collects outcomes as they arrive, in any order, and produces a consistent report. Keeps the
/// counts, the reason groups and the first [`LISTED`] entries of each list: bounded memory.
#[derive(Debug)]
pub struct ReportBuilder {
    report: RunReport,
    counts: Counts,
    failure_reasons: Reasons,
    invalid_reasons: Reasons,
}

#[derive(Debug, Default)]
struct Counts {
    succeeded: u64,
    failed: u64,
    invalid: u64,
}

/// Rows per reason, at most [`REASON_GROUPS`] reasons.
#[derive(Debug, Default)]
struct Reasons(BTreeMap<String, u64>);

impl Reasons {
    fn add(&mut self, reason: &str) {
        if let Some(rows) = self.0.get_mut(reason) {
            *rows += 1;
        } else if self.0.len() < REASON_GROUPS {
            self.0.insert(reason.to_owned(), 1);
        } else {
            *self.0.entry(OTHER_REASONS.to_owned()).or_default() += 1;
        }
    }

    fn sorted(self) -> Vec<ReasonCount> {
        let mut counts: Vec<ReasonCount> = self
            .0
            .into_iter()
            .map(|(reason, rows)| ReasonCount { reason, rows })
            .collect();
        counts.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.reason.cmp(&b.reason)));
        counts
    }
}

/// Keeps the first [`LISTED`] entries by row of a list that arrives in any order.
fn keep_first<T>(list: &mut Vec<T>, entry: T, row: impl Fn(&T) -> u64) {
    list.push(entry);
    if list.len() >= 2 * LISTED {
        list.sort_by_key(&row);
        list.truncate(LISTED);
    }
}

fn first_listed<T>(list: &mut Vec<T>, row: impl Fn(&T) -> u64) {
    list.sort_by_key(row);
    list.truncate(LISTED);
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
                model_estimate_usd: None,
                actual_cost_usd: 0.0,
                mode: crate::domain::template::Mode::Sync,
                sync_cost_usd: None,
                duration_secs: 0.0,
                images: Vec::new(),
                failures: Vec::new(),
                failure_reasons: Vec::new(),
                invalid_rows: Vec::new(),
                invalid_reasons: Vec::new(),
                cms_updated: 0,
                cms_failed: 0,
                cms_failures: Vec::new(),
                results: None,
                redrives: 0,
                stopped: None,
                rejected: None,
            },
            counts: Counts::default(),
            failure_reasons: Reasons::default(),
            invalid_reasons: Reasons::default(),
        }
    }

    /// Records a stored image.
    pub fn image(&mut self, entry: ImageEntry) {
        self.counts.succeeded += 1;
        self.report.reused += u64::from(entry.reused);
        self.report.actual_cost_usd += entry.cost_usd;
        keep_first(&mut self.report.images, entry, |e| e.row);
    }

    /// Records a failed row.
    pub fn failure(&mut self, entry: FailureEntry) {
        self.counts.failed += 1;
        self.failure_reasons.add(&entry.reason);
        keep_first(&mut self.report.failures, entry, |e| e.row);
    }

    /// Records an invalid row.
    pub fn invalid(&mut self, entry: InvalidRow) {
        self.counts.invalid += 1;
        self.invalid_reasons.add(&entry.reason);
        keep_first(&mut self.report.invalid_rows, entry, |e| e.row);
    }

    /// Records the CMS update of a stored image: `Ok` or the reason it failed.
    pub fn cms(&mut self, image: &ImageEntry, result: Result<(), String>) {
        match result {
            Ok(()) => self.report.cms_updated += 1,
            Err(reason) => {
                self.report.cms_failed += 1;
                let failure = FailureEntry {
                    row: image.row,
                    key: image.key.clone(),
                    reason,
                    attempts: 0,
                };
                keep_first(&mut self.report.cms_failures, failure, |e| e.row);
            }
        }
    }

    /// What the run would cost on its model's own provider (another provider made the images).
    pub fn model_estimate(&mut self, usd: f64) {
        self.report.model_estimate_usd = Some(usd);
    }

    /// Where `results.csv` is.
    pub fn results(&mut self, location: &str) {
        self.report.results = Some(location.to_owned());
    }

    /// The report, lists sorted by row and cut to [`LISTED`], counts covering every row.
    pub fn finish(mut self, duration_secs: f64) -> RunReport {
        let r = &mut self.report;
        first_listed(&mut r.images, |e| e.row);
        first_listed(&mut r.failures, |e| e.row);
        first_listed(&mut r.invalid_rows, |e| e.row);
        first_listed(&mut r.cms_failures, |e| e.row);
        r.succeeded = self.counts.succeeded;
        r.failed = self.counts.failed;
        r.invalid = self.counts.invalid;
        r.rows = r.succeeded + r.failed + r.invalid;
        r.failure_reasons = self.failure_reasons.sorted();
        r.invalid_reasons = self.invalid_reasons.sorted();
        r.duration_secs = duration_secs;
        self.report
    }
}
