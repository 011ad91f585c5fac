//! What a run costs on AWS itself (Lambda, SQS, S3, DynamoDB, CloudWatch Logs), next to the
//! provider's bill.
//!
//! Request counts per image are those of this code (see each constant); durations come from a few
//! parameters a team can change (memory, batch size, provider latency). Prices live in the catalog.

use serde::{Deserialize, Serialize};

/// AWS list prices (us-east-1, arm64 Lambda), dated with the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsPrices {
    pub lambda_gb_second: f64,
    pub lambda_per_million_requests: f64,
    pub sqs_per_million_requests: f64,
    /// PUT, COPY, POST and LIST requests.
    pub s3_per_thousand_puts: f64,
    pub s3_per_thousand_gets: f64,
    /// On-demand write request units.
    pub dynamodb_per_million_writes: f64,
    /// On-demand read request units.
    pub dynamodb_per_million_reads: f64,
    pub logs_per_gb_ingested: f64,
}

/// How the stack runs: the template's defaults, and a typical provider latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AwsUsage {
    pub generator_memory_mb: u32,
    /// Jobs per generator invocation; they wait on the provider concurrently.
    pub generator_batch: u32,
    /// Seconds a provider takes per image (the generator's duration is mostly this wait).
    pub provider_latency_secs: f64,
    pub finalizer_memory_mb: u32,
    /// Seconds per finalizer invocation of 10 events (CMS calls and S3 writes, concurrent).
    pub finalizer_secs_per_batch: f64,
    pub splitter_memory_mb: u32,
    /// Seconds of splitter time per CSV row (measured: see BENCHMARKS.md).
    pub splitter_secs_per_row: f64,
    /// JSON log bytes per image across the three functions.
    pub log_bytes_per_image: f64,
}

impl Default for AwsUsage {
    fn default() -> Self {
        Self {
            generator_memory_mb: 512,
            generator_batch: 5,
            provider_latency_secs: 10.0,
            finalizer_memory_mb: 256,
            finalizer_secs_per_batch: 0.5,
            splitter_memory_mb: 512,
            splitter_secs_per_row: 0.000_2,
            log_bytes_per_image: 1_500.0,
        }
    }
}

/// SQS requests per image: 0.1 SendMessageBatch (splitter); the generator's event source mapping
/// receives and deletes in batches (2 / batch); one SendMessage of the outcome event; the
/// finalizer's mapping receives and deletes in batches of 10 (0.2).
const SQS_REQUESTS_FIXED: f64 = 0.1 + 1.0 + 0.2;
/// S3 PUT-class requests per image: the LIST that looks for an existing image, the generation
/// lease, the image.
const S3_PUTS_PER_IMAGE: f64 = 1.0 + 1.0 + 1.0;
/// S3 GETs per image: none on the common path (the run's state is in the ledger).
const S3_GETS_PER_IMAGE: f64 = 0.0;
/// DynamoDB write units per image: the outcome item in a transaction (2 units), and per finalizer
/// batch of 10 the run record's counters in the same transaction (2) and the completion claim's
/// conditional update (1).
const DYNAMODB_WRITES_PER_IMAGE: f64 = 2.0 + 0.3;
/// DynamoDB read units per image: the consistent check for an already recorded row (1), and the
/// report's Query (items of ~0.5 KB, 4 KB per unit).
const DYNAMODB_READS_PER_IMAGE: f64 = 1.0 + 0.125;

/// AWS cost of `images` images, in USD, by service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AwsCost {
    pub images: u64,
    pub lambda_usd: f64,
    pub sqs_usd: f64,
    pub s3_usd: f64,
    pub dynamodb_usd: f64,
    pub logs_usd: f64,
    pub total_usd: f64,
}

/// The AWS cost of a run of `images` images.
pub fn aws_cost(images: u64, usage: &AwsUsage, prices: &AwsPrices) -> AwsCost {
    let n = images as f64;
    let gb = |mb: u32| f64::from(mb) / 1024.0;
    let batch = f64::from(usage.generator_batch.max(1));
    let gb_seconds = n * gb(usage.generator_memory_mb) * usage.provider_latency_secs / batch
        + n / 10.0 * gb(usage.finalizer_memory_mb) * usage.finalizer_secs_per_batch
        + n * gb(usage.splitter_memory_mb) * usage.splitter_secs_per_row;
    let invocations = n / batch + n / 10.0 + 1.0;
    let lambda_usd = gb_seconds * prices.lambda_gb_second + invocations * prices.lambda_per_million_requests / 1e6;
    let sqs_usd = n * (SQS_REQUESTS_FIXED + 2.0 / batch) * prices.sqs_per_million_requests / 1e6;
    let s3_usd =
        n * (S3_PUTS_PER_IMAGE * prices.s3_per_thousand_puts + S3_GETS_PER_IMAGE * prices.s3_per_thousand_gets) / 1e3;
    let dynamodb_usd = n
        * (DYNAMODB_WRITES_PER_IMAGE * prices.dynamodb_per_million_writes
            + DYNAMODB_READS_PER_IMAGE * prices.dynamodb_per_million_reads)
        / 1e6;
    let logs_usd = n * usage.log_bytes_per_image / 1e9 * prices.logs_per_gb_ingested;
    AwsCost {
        images,
        lambda_usd,
        sqs_usd,
        s3_usd,
        dynamodb_usd,
        logs_usd,
        total_usd: lambda_usd + sqs_usd + s3_usd + dynamodb_usd + logs_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_costs_cents_per_thousand_images_and_scales_linearly() {
        let prices = crate::domain::catalog::Catalog::builtin().aws;
        let thousand = aws_cost(1_000, &AwsUsage::default(), &prices);
        assert!((0.01..0.10).contains(&thousand.total_usd), "{thousand:?}");
        let hundred_thousand = aws_cost(100_000, &AwsUsage::default(), &prices);
        assert!((hundred_thousand.total_usd / thousand.total_usd - 100.0).abs() < 0.5);
        let slow = AwsUsage {
            provider_latency_secs: 20.0,
            ..AwsUsage::default()
        };
        assert!(aws_cost(1_000, &slow, &prices).lambda_usd > thousand.lambda_usd * 1.9);
    }
}
