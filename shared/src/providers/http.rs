//! What every HTTP provider shares: body limits, mapping transport errors and HTTP statuses to
//! retry decisions, `Retry-After` parsing, and the endpoint (client, base URL, key).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ProviderError;
use crate::adapters::net::{FetchClient, FetchError, read_limited, read_prefix};
use crate::domain::redact::{Secret, redact};

/// Largest image a provider returns: 4096×4096 RGB stored uncompressed (a PNG cannot be much larger).
pub const MAX_IMAGE_BYTES: usize = 48 * 1024 * 1024;
/// Largest provider answer: the largest image base64-encoded (4/3 larger) plus 1 MiB of JSON around it.
pub const MAX_RESPONSE_BYTES: usize = MAX_IMAGE_BYTES / 3 * 4 + 1024 * 1024;
/// An error answer is read only this far: every API's error message fits.
pub const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A transport failure (connect, timeout, reset): worth retrying. The URL is left out of the message.
pub fn transport_error(provider: &str, error: reqwest::Error) -> ProviderError {
    let what = if error.is_timeout() { "timed out" } else { "unreachable" };
    ProviderError::Unavailable {
        message: format!("{provider} {what}: {}", error.without_url()),
    }
}

/// Maps an unsuccessful HTTP status and its (already extracted) message to a decision.
pub fn status_error(provider: &str, status: u16, headers: &HeaderMap, message: &str) -> ProviderError {
    let message = format!("{provider} HTTP {status}: {message}");
    match status {
        429 => ProviderError::RateLimited {
            retry_after: retry_after(headers),
            message,
        },
        401 | 403 => ProviderError::Unauthorized { message },
        300..=399 => ProviderError::Rejected {
            message: format!("{message} (a redirect to another origin is not followed: the key stays with its API)"),
        },
        408 | 500..=599 => ProviderError::Unavailable { message },
        _ => ProviderError::Rejected { message },
    }
}

/// The first 300 characters of a body, for error messages; HTML pages are named, not quoted.
pub fn snippet(body: &str) -> String {
    if crate::domain::image_format::looks_like_html(body) {
        return "an HTML page instead of JSON".to_owned();
    }
    body.trim_start().chars().take(300).collect()
}

/// The `{"error": {"message", "code"|"type"|"status"}}` shape most image APIs answer errors with.
pub fn json_error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let Some(message) = error.and_then(|e| e.get("message")).and_then(serde_json::Value::as_str) else {
        return snippet(body);
    };
    let code = ["code", "status", "type"]
        .iter()
        .find_map(|k| error?.get(*k)?.as_str().map(str::to_owned));
    match code {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    }
}

/// The first image of an OpenAI-style `{"data": [{"b64_json"} | {"url"}]}` body; a URL is downloaded.
pub async fn first_data_image(
    fetch: &FetchClient,
    provider: &str,
    body: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, ProviderError> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| ProviderError::Unavailable {
        message: format!("{provider} returned a malformed response: {}", snippet(body)),
    })?;
    let item = v.pointer("/data/0");
    if let Some(b64) = item.and_then(|i| i.get("b64_json")).and_then(serde_json::Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ProviderError::Rejected {
                message: format!("{provider} image is not valid base64: {e}"),
            })?;
        return Ok(bytes::Bytes::from(bytes));
    }
    if let Some(url) = item.and_then(|i| i.get("url")).and_then(serde_json::Value::as_str) {
        // Provider URLs expire: download at once; a failed download is retried with the whole call.
        return download_image(fetch, provider, url, timeout).await;
    }
    let said = item
        .and_then(|i| i.get("error"))
        .map(|e| e.to_string())
        .unwrap_or_default();
    Err(ProviderError::Rejected {
        message: format!("{provider} returned no image {said}").trim_end().to_owned(),
    })
}

/// Downloads an image a provider points at (a URL that expires), as a data URL: public addresses only.
async fn download_image(
    fetch: &FetchClient,
    provider: &str,
    url: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, ProviderError> {
    let failed = |e: FetchError| match e {
        FetchError::Transport { .. } => ProviderError::Unavailable {
            message: format!("{provider} image URL unreachable: {e}"),
        },
        refused_or_large => ProviderError::Rejected {
            message: format!("{provider} image URL: {refused_or_large}"),
        },
    };
    let response = fetch.get(url, timeout).await.map_err(failed)?;
    if !response.status().is_success() {
        return Err(ProviderError::Unavailable {
            message: format!("{provider} image URL answered HTTP {}", response.status().as_u16()),
        });
    }
    read_limited(response, MAX_IMAGE_BYTES).await.map_err(failed)
}

/// Reads a response: the body (up to [`MAX_RESPONSE_BYTES`]) on success, a decision on failure.
/// Secrets (`key` and those of the environment) are redacted from error messages.
pub async fn read_response(
    provider: &str,
    response: Result<reqwest::Response, reqwest::Error>,
    key: &str,
) -> Result<String, ProviderError> {
    let response = response.map_err(|e| transport_error(provider, e))?;
    let (status, headers) = (response.status(), response.headers().clone());
    if !status.is_success() {
        let text = read_prefix(response, MAX_ERROR_BODY_BYTES).await;
        let message = redact(&json_error_message(&text), &[key]);
        return Err(status_error(provider, status.as_u16(), &headers, &message));
    }
    match read_limited(response, MAX_RESPONSE_BYTES).await {
        // Without a copy when the body is UTF-8 (it is JSON): answers can be tens of MiB.
        Ok(body) => {
            Ok(String::from_utf8(Vec::from(body))
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
        }
        Err(FetchError::TooLarge { limit }) => Err(ProviderError::Rejected {
            message: format!("{provider} answer is larger than {limit} bytes; not read"),
        }),
        Err(e) => Err(ProviderError::Unavailable {
            message: format!("{provider} answer interrupted: {e}"),
        }),
    }
}

/// An HTTP API reached with an API key: the shared client, the base URL, and the key (never printed).
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    pub client: reqwest::Client,
    /// For reference images and download URLs: public addresses only.
    pub fetch: FetchClient,
    base_url: String,
    api_key: Secret,
}

impl ApiEndpoint {
    pub fn new(client: reqwest::Client, base_url: &str, api_key: &str) -> Self {
        Self {
            client,
            fetch: FetchClient::from_env(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: Secret::new(api_key),
        }
    }

    /// Downloads (references, image URLs) through `fetch` instead of the environment's allow list.
    pub fn with_fetch(mut self, fetch: FetchClient) -> Self {
        self.fetch = fetch;
        self
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn api_key(&self) -> &str {
        self.api_key.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_map_to_decisions() {
        let h = HeaderMap::new();
        assert!(status_error("p", 429, &h, "").is_retryable());
        assert!(status_error("p", 503, &h, "").is_retryable());
        assert!(status_error("p", 401, &h, "").stops_run());
        assert!(!status_error("p", 400, &h, "").is_retryable());
    }
}
