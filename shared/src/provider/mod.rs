//! The image-provider port, its errors, and the providers imagepipe ships.

pub mod anycap;
pub mod bedrock;
pub mod fetch;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod placeholder;
pub mod seedream;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::time::Duration;

use bytes::Bytes;

use crate::template::ImageSize;

/// What to generate: everything a provider needs, already rendered from the row.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The id the provider's API expects (e.g. `gemini-3.1-flash-image-preview`).
    pub provider_model: String,
    /// Quality tier, for providers that take one.
    pub quality: Option<String>,
    /// The row's job key (`<template>/<sku>`); only the offline placeholder uses it (it draws it).
    pub key: String,
    pub prompt: String,
    pub size: ImageSize,
    /// Reference images for image-to-image: http(s) URLs (`s3://` URIs arrive presigned).
    pub references: Vec<String>,
    /// Stable per row, so a retried request asks for the same image.
    pub seed: u64,
    /// How long the provider may take, already fitted inside the caller's deadline.
    pub timeout: Duration,
}

/// Image bytes as the provider returned them.
#[derive(Debug, Clone)]
pub struct ProviderImage {
    pub bytes: Bytes,
    /// Cost the provider reported for this call, when it reports one.
    pub reported_cost_usd: Option<f64>,
    /// The provider's id for the request, for support tickets.
    pub request_id: Option<String>,
    /// What the provider says the call used, where it says so.
    pub usage: Usage,
}

/// Usage a provider reports with an image: tokens (Gemini `usageMetadata`, OpenAI `usage`) or
/// credits (AnyCap `credits_used`). Turned into dollars with the catalog's token prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<f64>,
}

/// How a provider call failed, and so what to do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 429 or a quota message: retry after `retry_after` (or a backoff when absent).
    #[error("rate limited: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 5xx, overloaded, connection failure or timeout: retry with backoff.
    #[error("provider unavailable: {message}")]
    Unavailable { message: String },
    /// The provider refused this request (content policy, invalid parameter, no image): do not retry.
    #[error("rejected by provider: {message}")]
    Rejected { message: String },
    /// 401/403: the credentials are wrong; every further call would fail the same way.
    #[error("provider refused the credentials: {message}")]
    Unauthorized { message: String },
}

impl ProviderError {
    /// Whether trying the same request again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable { .. })
    }

    /// Whether the whole run should stop starting new calls.
    pub fn stops_run(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The image-provider port. Object-safe: the provider is chosen at run time from the catalog.
#[async_trait::async_trait]
pub trait ImageProvider: Send + Sync {
    /// Short name used in reports and logs (`gemini`, `placeholder`, …).
    fn name(&self) -> &str;

    /// Generates one image.
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError>;
}

/// Turns an `s3://bucket/key` reference into an https URL any provider can fetch (a presigned GET).
#[async_trait::async_trait]
pub trait ReferenceSigner: Send + Sync {
    async fn sign(&self, uri: &str) -> Result<String, String>;
}

/// The references of a request with every `s3://` URI signed; a reason when one cannot be.
pub async fn sign_references(
    references: &[String],
    signer: Option<&dyn ReferenceSigner>,
) -> Result<Vec<String>, String> {
    let mut signed = Vec::with_capacity(references.len());
    for reference in references {
        if !reference.starts_with("s3://") {
            signed.push(reference.clone());
            continue;
        }
        let Some(signer) = signer else {
            return Err(format!(
                "reference {}: s3:// references need AWS credentials (none configured)",
                crate::redact::display_url(reference)
            ));
        };
        signed.push(
            signer
                .sign(reference)
                .await
                .map_err(|e| format!("reference {}: {e}", crate::redact::display_url(reference)))?,
        );
    }
    Ok(signed)
}

/// Buckets `s3://` references may name: the deployment's own (`IMAGEPIPE_BUCKET`) and those listed in
/// `IMAGEPIPE_REFERENCE_BUCKETS` (comma-separated; `*` allows every bucket the credentials can read).
/// A row cannot make imagepipe presign, and hand a provider, objects of any other bucket.
pub fn reference_buckets_from_env() -> Vec<String> {
    ["IMAGEPIPE_BUCKET", "IMAGEPIPE_REFERENCE_BUCKETS"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .flat_map(|value| value.split(',').map(|b| b.trim().to_owned()).collect::<Vec<_>>())
        .filter(|b| !b.is_empty())
        .collect()
}

/// Refuses `s3://` references to buckets not in `allowed`.
pub fn check_reference_buckets(references: &[String], allowed: &[String]) -> Result<(), String> {
    for reference in references {
        let Some(rest) = reference.strip_prefix("s3://") else {
            continue;
        };
        let bucket = rest.split('/').next().unwrap_or_default();
        if !allowed.iter().any(|b| b == "*" || b == bucket) {
            return Err(format!(
                "reference {}: bucket {bucket:?} is not one references may come from (IMAGEPIPE_REFERENCE_BUCKETS)",
                crate::redact::display_url(reference)
            ));
        }
    }
    Ok(())
}

/// Why a provider could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderSetupError {
    #[error(
        "provider {provider} needs credentials: set {variable} (for an offline run without credentials, \
         use --provider placeholder)"
    )]
    MissingCredentials { provider: String, variable: String },
    #[error("unknown provider {name:?}; known providers: {}", KNOWN_PROVIDERS.join(", "))]
    Unknown { name: String },
}

/// Every provider name `--provider` accepts.
pub const KNOWN_PROVIDERS: [&str; 6] = ["placeholder", "gemini", "openai", "seedream", "anycap", "bedrock"];

/// Builds the provider called `name` from the environment.
pub async fn from_env(name: &str) -> Result<std::sync::Arc<dyn ImageProvider>, ProviderSetupError> {
    // Per-request timeouts are set on each call; this is only the outer bound.
    let client = || crate::publish::http_client(std::time::Duration::from_secs(900));
    Ok(match name {
        "placeholder" => std::sync::Arc::new(placeholder::PlaceholderProvider),
        "gemini" => std::sync::Arc::new(gemini::GeminiProvider::from_env(client())?),
        "openai" => std::sync::Arc::new(openai::OpenAiProvider::from_env(client())?),
        "seedream" => std::sync::Arc::new(seedream::SeedreamProvider::from_env(client())?),
        "anycap" => std::sync::Arc::new(anycap::AnyCapProvider::from_env()),
        "bedrock" => std::sync::Arc::new(bedrock::BedrockProvider::from_env().await?),
        other => return Err(ProviderSetupError::Unknown { name: other.to_owned() }),
    })
}

/// A required, non-empty API key from `variable`.
fn env_key(provider: &str, variable: &str) -> Result<String, ProviderSetupError> {
    crate::config::secret(variable).ok_or_else(|| ProviderSetupError::MissingCredentials {
        provider: provider.to_owned(),
        variable: variable.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_references_are_limited_to_the_allowed_buckets() {
        let refs = |r: &str| vec!["https://cdn.example.com/a.png".to_owned(), r.to_owned()];
        let allowed = vec!["imagepipe-prod".to_owned()];
        assert_eq!(
            check_reference_buckets(&refs("s3://imagepipe-prod/refs/a.png"), &allowed),
            Ok(())
        );
        let error = check_reference_buckets(&refs("s3://payroll/2026.png"), &allowed).unwrap_err();
        assert!(
            error.contains("bucket \"payroll\" is not one references may come from"),
            "{error}"
        );
        assert_eq!(
            check_reference_buckets(&refs("s3://payroll/x"), &["*".to_owned()]),
            Ok(())
        );
    }
}
