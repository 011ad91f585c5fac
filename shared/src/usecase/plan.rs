//! Plan: read the whole CSV once, validate every row, and price the run before anything is generated.

use std::io::Read;

use serde::Serialize;

use super::Error;
use crate::domain::aws_cost::{AwsCost, AwsUsage, aws_cost};
use crate::domain::catalog::{COST_TABLE_SIZES, Catalog, CostLine};
use crate::domain::rows::{CsvError, InvalidRow, RowOutcome, RowReader};
use crate::domain::template::{ImageSize, Mode, Template};
use crate::usecase::batch::batch_refusal;

/// How many rendered prompts a plan shows.
pub const SAMPLE_PROMPTS: usize = 3;

/// What a run of this CSV would do and cost.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub file: String,
    pub template: String,
    pub model: String,
    pub provider: String,
    pub size: ImageSize,
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    pub invalid_rows: Vec<InvalidRow>,
    pub sample_prompts: Vec<String>,
    /// Synchronous calls, or the provider's batch API (`price_per_image` is then its batch price).
    pub mode: Mode,
    pub price_per_image: f64,
    pub estimated_cost_usd: f64,
    /// The same images through synchronous calls, and through the batch API where the model has one.
    pub sync_cost_usd: f64,
    pub batch_cost_usd: Option<f64>,
    pub prices_as_of: String,
    /// Provider cost of this run's valid rows on every catalog model.
    pub cost_for_this_run: Vec<CostLine>,
    /// The chosen model's cost at 100 / 1,000 / 10,000 / 100,000 images.
    pub cost_at_scale: Vec<(u64, f64)>,
    /// What AWS itself charges on the serverless path, for this run and at 1,000 / 100,000 images.
    pub aws_cost: Vec<AwsCost>,
    /// The assumptions behind `aws_cost`.
    pub aws_usage: AwsUsage,
}

/// Reads `input` (named `file`) with `template`, pricing it for `model` (default: the template's).
pub fn plan_csv<R: Read>(
    input: R,
    file: &str,
    template: &Template,
    model: Option<&str>,
    catalog: &Catalog,
) -> Result<Plan, Error> {
    let model = model.unwrap_or(&template.model);
    let info = catalog.model(model)?;
    if template.mode.is_batch()
        && let Some(refusal) = batch_refusal(model, info, None, catalog)
    {
        return Err(Error::Input(refusal));
    }
    let price = match template.mode {
        Mode::Batch => info.batch_price_per_image.unwrap_or(info.price_per_image),
        Mode::Sync => info.price_per_image,
    };
    let mut reader = RowReader::open(input, file, template)?;
    let (mut valid, mut invalid_rows, mut sample_prompts) = (0u64, Vec::new(), Vec::new());
    while let Some(outcome) = reader.next_row() {
        match outcome? {
            RowOutcome::Valid(row) => {
                valid += 1;
                if sample_prompts.len() < SAMPLE_PROMPTS {
                    sample_prompts.push(row.prompt);
                }
            }
            RowOutcome::Invalid(row) => invalid_rows.push(row),
        }
    }
    let rows = reader.rows_read();
    if rows == 0 {
        return Err(CsvError::NoRows { file: file.to_owned() }.into());
    }
    Ok(Plan {
        file: file.to_owned(),
        template: template.name.clone(),
        model: model.to_owned(),
        provider: info.provider.clone(),
        size: template.size,
        rows,
        valid,
        invalid: invalid_rows.len() as u64,
        invalid_rows,
        sample_prompts,
        mode: template.mode,
        price_per_image: price,
        estimated_cost_usd: price * valid as f64,
        sync_cost_usd: info.price_per_image * valid as f64,
        batch_cost_usd: info.batch_price_per_image.map(|p| p * valid as f64),
        prices_as_of: catalog.prices_as_of.clone(),
        cost_for_this_run: catalog.cost_table(valid),
        cost_at_scale: COST_TABLE_SIZES.iter().map(|&n| (n, price * n as f64)).collect(),
        aws_cost: [valid, 1_000, 100_000]
            .iter()
            .map(|&n| aws_cost(n, &AwsUsage::default(), &catalog.aws))
            .collect(),
        aws_usage: AwsUsage::default(),
    })
}
