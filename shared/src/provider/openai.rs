//! OpenAI Images `POST /v1/images/generations` for gpt-image models (`data[].b64_json`).
//!
//! Rows with reference images go to `POST /v1/images/edits` as multipart (`image[]` parts, downloaded
//! from their http(s) URLs). Errors come as `{"error": {"message", "type", "code"}}`; a moderation
//! refusal is a 400 with code `moderation_blocked`.

use serde_json::json;

use super::http::{fetch_reference, first_data_image, read_response};
use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage, ProviderSetupError};
use crate::template::ImageSize;

/// The public endpoint; `IMAGEPIPE_OPENAI_BASE_URL` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";

/// An OpenAI Images client.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    base_url: String,
    api_key: String,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl OpenAiProvider {
    pub fn new(client: reqwest::Client, base_url: &str, api_key: &str) -> Self {
        Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
        }
    }

    /// From `OPENAI_API_KEY` and, optionally, `IMAGEPIPE_OPENAI_BASE_URL`.
    pub fn from_env(client: reqwest::Client) -> Result<Self, ProviderSetupError> {
        let key = super::env_key("openai", "OPENAI_API_KEY")?;
        let base = std::env::var("IMAGEPIPE_OPENAI_BASE_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        Ok(Self::new(client, &base, &key))
    }
}

impl OpenAiProvider {
    /// `/v1/images/edits`: the prompt applied to the reference images, sent as multipart.
    async fn edit(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let mut form = reqwest::multipart::Form::new()
            .text("model", request.provider_model.clone())
            .text("prompt", request.prompt.clone())
            .text("size", openai_size(request.size))
            .text("output_format", "png")
            .text("n", "1");
        if let Some(quality) = &request.quality {
            form = form.text("quality", quality.clone());
        }
        for (i, url) in request.references.iter().enumerate() {
            let (bytes, mime) = fetch_reference(&self.client, url, request.timeout).await?;
            let ext = mime.rsplit('/').next().unwrap_or("png");
            let part = reqwest::multipart::Part::bytes(bytes.to_vec())
                .file_name(format!("reference-{i}.{ext}"))
                .mime_str(&mime)
                .map_err(|e| ProviderError::Rejected {
                    message: format!("openai: reference {url}: {e}"),
                })?;
            form = form.part("image[]", part);
        }
        let url = format!("{}/v1/images/edits", self.base_url);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.api_key)
            .timeout(request.timeout)
            .multipart(form)
            .send()
            .await;
        let text = read_response("openai", response).await?;
        let bytes = first_data_image(&self.client, "openai", &text, request.timeout).await?;
        Ok(ProviderImage {
            bytes,
            reported_cost_usd: None,
            request_id: None,
        })
    }
}

/// gpt-image sizes: the one nearest the requested aspect ratio.
pub fn openai_size(size: ImageSize) -> &'static str {
    let ratio = f64::from(size.width) / f64::from(size.height);
    if ratio > 1.2 {
        "1536x1024"
    } else if ratio < 1.0 / 1.2 {
        "1024x1536"
    } else {
        "1024x1024"
    }
}

#[async_trait::async_trait]
impl ImageProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    #[tracing::instrument(skip_all, fields(model = %request.provider_model))]
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        if !request.references.is_empty() {
            return self.edit(request).await;
        }
        let mut body = json!({
            "model": request.provider_model,
            "prompt": request.prompt,
            "size": openai_size(request.size),
            "output_format": "png",
            "n": 1,
        });
        if let Some(quality) = &request.quality {
            body["quality"] = json!(quality);
        }
        let url = format!("{}/v1/images/generations", self.base_url);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.api_key)
            .timeout(request.timeout)
            .json(&body)
            .send()
            .await;
        let text = read_response("openai", response).await?;
        let bytes = first_data_image(&self.client, "openai", &text, request.timeout).await?;
        Ok(ProviderImage {
            bytes,
            reported_cost_usd: None,
            request_id: None,
        })
    }
}
