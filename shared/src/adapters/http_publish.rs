//! The HTTP adapters of the CMS and notifier ports: a `PATCH` per image to the team's CMS, and
//! Slack incoming-webhook messages. Secrets (token, webhook URL) never appear in errors or logs.

use std::time::Duration;

use serde_json::json;

use crate::domain::redact::{Secret, redact};
use crate::ports::publish::{Cms, Notifier, PublishError};

/// By default `PATCH {base}/api/products/{sku}` with `{"image_url": …}` and a Bearer token; method,
/// path and body are configurable for other CMSs.
#[derive(Debug, Clone)]
pub struct HttpCms {
    client: reqwest::Client,
    base_url: String,
    token: Secret,
    method: reqwest::Method,
    /// With `{sku}`.
    path: String,
    /// JSON with `{sku}` and `{image_url}`, filled in JSON-escaped.
    body: String,
}

/// A CMS base URL must be an absolute http(s) URL without userinfo (the token is the one credential sent).
pub fn check_base_url(base: &str) -> Result<(), String> {
    let shown = crate::domain::redact::display_url(base);
    let url = reqwest::Url::parse(base).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!("{shown:?} must be an absolute http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?} must not carry a user name or password (the token is the credential)"
        ));
    }
    Ok(())
}

/// `base` without `user:pass@`: with it, requests would carry Basic credentials next to the Bearer token.
fn without_userinfo(base: &str) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => base.to_owned(),
    }
}

impl HttpCms {
    pub fn new(client: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self {
            client,
            base_url: without_userinfo(base_url).trim_end_matches('/').to_owned(),
            token: Secret::new(token),
            method: reqwest::Method::PATCH,
            path: "/api/products/{sku}".into(),
            body: r#"{"image_url": "{image_url}"}"#.into(),
        }
    }

    /// Another request shape: `method`, a `path` with `{sku}`, a JSON `body` with `{sku}` and `{image_url}`.
    pub fn with_request(mut self, method: &str, path: &str, body: &str) -> Result<Self, String> {
        self.method = reqwest::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("CMS_METHOD {method:?} is not an HTTP method"))?;
        let probe = fill(body, "sku", "url");
        serde_json::from_str::<serde_json::Value>(&probe)
            .map_err(|e| format!("CMS_BODY is not a JSON template: {e}"))?;
        self.path = path.to_owned();
        self.body = body.to_owned();
        Ok(self)
    }
}

/// `template` with `{sku}` and `{image_url}` replaced by JSON-escaped values.
fn fill(template: &str, sku: &str, image_url: &str) -> String {
    let escape = |v: &str| {
        serde_json::to_string(v)
            .map(|q| q[1..q.len() - 1].to_owned())
            .unwrap_or_default()
    };
    template
        .replace("{sku}", &escape(sku))
        .replace("{image_url}", &escape(image_url))
}

/// `id` as one URL path segment: everything but RFC 3986's unreserved characters percent-encoded.
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Cms for HttpCms {
    #[tracing::instrument(skip(self, image_url))]
    async fn update_image(&self, sku: &str, image_url: &str) -> Result<(), PublishError> {
        let url = format!("{}{}", self.base_url, self.path.replace("{sku}", &path_segment(sku)));
        let response = self
            .client
            .request(self.method.clone(), &url)
            .bearer_auth(self.token.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(fill(&self.body, sku, image_url))
            .send()
            .await;
        check(response, "CMS", &[self.token.expose()]).await
    }
}

/// A Slack incoming webhook.
#[derive(Debug, Clone)]
pub struct SlackWebhook {
    client: reqwest::Client,
    /// The webhook URL is the credential.
    url: Secret,
}

impl SlackWebhook {
    pub fn new(client: reqwest::Client, url: &str) -> Self {
        Self {
            client,
            url: Secret::new(url),
        }
    }
}

impl Notifier for SlackWebhook {
    #[tracing::instrument(skip_all)]
    async fn post(&self, text: &str) -> Result<(), PublishError> {
        let body = json!({
            "text": text,
            "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": text } }],
        });
        let response = self.client.post(self.url.expose()).json(&body).send().await;
        check(response, "Slack", &[self.url.expose()]).await
    }
}

/// One HTTP client for every credentialed adapter (provider, CMS, Slack), with connect and request
/// timeouts; it follows no redirect to another origin and sends no `Referer`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    crate::adapters::net::credential_client(timeout)
}

/// Error bodies are read only this far; the message quotes less.
const MAX_ERROR_BODY_BYTES: usize = 4096;

/// The outcome of a call; `secrets` (and the environment's) are redacted from a quoted error body.
async fn check(
    response: Result<reqwest::Response, reqwest::Error>,
    service: &str,
    secrets: &[&str],
) -> Result<(), PublishError> {
    let response = response.map_err(|e| PublishError {
        retryable: true,
        // without_url: the URL may carry a secret (a Slack webhook is one).
        message: format!("{service} unreachable: {}", e.without_url()),
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = crate::adapters::net::read_prefix(response, MAX_ERROR_BODY_BYTES).await;
    let snippet: String = redact(&body, secrets).chars().take(200).collect();
    Err(PublishError {
        retryable: status.as_u16() == 429 || status.is_server_error(),
        message: format!("{service} answered HTTP {}: {}", status.as_u16(), snippet.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug_output() {
        let client = reqwest::Client::new();
        let cms = HttpCms::new(client.clone(), "https://cms.example.com", "cms-token-123");
        let slack = SlackWebhook::new(client.clone(), "https://hooks.slack.com/services/T/B/hook-secret");
        let api = crate::providers::http::ApiEndpoint::new(client, "https://api.example.com", "api-key-456");
        let shown = format!("{cms:?} {slack:?} {api:?}");
        for secret in ["cms-token-123", "hook-secret", "api-key-456"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("https://cms.example.com") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_cms_id_is_one_path_segment() {
        assert_eq!(path_segment("SKU-1_a.b~c"), "SKU-1_a.b~c");
        assert_eq!(path_segment("p/17 x?"), "p%2F17%20x%3F");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
