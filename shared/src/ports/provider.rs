//! The image-provider port: what to generate, what comes back, how a call fails.

use std::time::Duration;

use bytes::Bytes;

use crate::domain::template::ImageSize;

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

/// Why a provider could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderSetupError {
    #[error(
        "provider {provider} needs credentials: set {variable} (for an offline run without credentials, \
         use --provider placeholder)"
    )]
    MissingCredentials { provider: String, variable: String },
    #[error("unknown provider {name:?}; known providers: {}", crate::providers::registry::names().join(", "))]
    Unknown { name: String },
}
