//! OpenAI Images `POST /v1/images/generations` for gpt-image models (`data[].b64_json`).
//!
//! Rows with reference images go to `POST /v1/images/edits` as multipart (`image[]` parts, downloaded
//! from their http(s) URLs). Errors come as `{"error": {"message", "type", "code"}}`; a moderation
//! refusal is a 400 with code `moderation_blocked`.

use serde_json::json;

use super::fetch::fetch_references;
use super::http::{ApiEndpoint, first_data_image, read_response};
use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage, Usage};
use crate::domain::template::ImageSize;

/// The public endpoint; `IMAGEPIPE_OPENAI_BASE_URL` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";
/// The provider\'s name in the catalog and on the command line.
pub const NAME: &str = "openai";

/// An OpenAI Images client.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    api: ApiEndpoint,
}

impl super::HttpProvider for OpenAiProvider {
    fn from_endpoint(api: ApiEndpoint) -> Self {
        Self { api }
    }
}

impl OpenAiProvider {
    /// Sends with the key and the request's timeout, and reads `data[0]`.
    async fn send(
        &self,
        post: reqwest::RequestBuilder,
        request: &ImageRequest,
    ) -> Result<ProviderImage, ProviderError> {
        let response = post
            .bearer_auth(self.api.api_key())
            .timeout(request.timeout)
            .send()
            .await;
        let text = read_response(NAME, response, self.api.api_key()).await?;
        self.image_of(&text, request.timeout).await
    }

    /// The image of an `ImagesResponse` body (a call's answer or a batch result line's `body`).
    pub(super) async fn image_of(
        &self,
        text: &str,
        timeout: std::time::Duration,
    ) -> Result<ProviderImage, ProviderError> {
        let bytes = first_data_image(&self.api.fetch, NAME, text, timeout).await?;
        let usage: Option<serde_json::Value> = serde_json::from_str(text).ok();
        let tokens = |field: &str| usage.as_ref()?.pointer(&format!("/usage/{field}"))?.as_u64();
        Ok(ProviderImage {
            bytes,
            reported_cost_usd: None,
            request_id: None,
            usage: Usage {
                input_tokens: tokens("input_tokens"),
                output_tokens: tokens("output_tokens"),
                credits: None,
            },
        })
    }

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
        let references = fetch_references(&self.api.fetch, &request.references, request.timeout).await?;
        for (i, (bytes, mime)) in references.into_iter().enumerate() {
            let ext = mime.rsplit('/').next().unwrap_or("png");
            let part = reqwest::multipart::Part::bytes(Vec::from(bytes))
                .file_name(format!("reference-{i}.{ext}"))
                .mime_str(&mime)
                .map_err(|e| ProviderError::Rejected {
                    message: format!("openai: reference {}: {e}", i + 1),
                })?;
            form = form.part("image[]", part);
        }
        let post = self.api.client.post(self.api.url("/v1/images/edits")).multipart(form);
        self.send(post, request).await
    }
}

/// The `/v1/images/generations` body for `request` (also a batch input line's `body`).
pub(super) fn generation_body(request: &ImageRequest) -> serde_json::Value {
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
    body
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
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        if !request.references.is_empty() {
            return self.edit(request).await;
        }
        let post = (self.api.client.post(self.api.url("/v1/images/generations"))).json(&generation_body(request));
        self.send(post, request).await
    }

    fn name(&self) -> &str {
        NAME
    }
}
