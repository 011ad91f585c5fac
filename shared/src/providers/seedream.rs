//! ByteDance Seedream on BytePlus ModelArk: `POST /api/v3/images/generations` (Bearer `ARK_API_KEY`).
//!
//! Sends `model`, `prompt`, `size` (`WIDTHxHEIGHT`), `seed`, `watermark: false`,
//! `response_format: b64_json` and reference URLs as `image`; reads `data[0].b64_json` or downloads
//! `data[0].url` (which expires). Errors: `{"error": {"code", "message"}}`; sensitive-content codes are 400s.

use serde_json::json;

use super::http::{ApiEndpoint, first_data_image, read_response};
use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage};

/// The public endpoint; `IMAGEPIPE_ARK_BASE_URL` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://ark.ap-southeast.bytepluses.com";
/// The provider\'s name in the catalog and on the command line.
pub const NAME: &str = "seedream";

/// A ModelArk client.
#[derive(Debug, Clone)]
pub struct SeedreamProvider {
    api: ApiEndpoint,
}

impl super::HttpProvider for SeedreamProvider {
    fn from_endpoint(api: ApiEndpoint) -> Self {
        Self { api }
    }
}

#[async_trait::async_trait]
impl ImageProvider for SeedreamProvider {
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let mut body = json!({
            "model": request.provider_model,
            "prompt": request.prompt,
            "size": request.size.to_string(),
            "seed": request.seed,
            "watermark": false,
            "response_format": "b64_json",
        });
        if let Some(other) = request
            .references
            .iter()
            .find(|r| !r.starts_with("http://") && !r.starts_with("https://"))
        {
            // ModelArk fetches references itself, so they must be URLs it can reach.
            return Err(ProviderError::Rejected {
                message: format!(
                    "seedream: reference {} must be an http(s) URL",
                    crate::domain::redact::display_url(other)
                ),
            });
        }
        if !request.references.is_empty() {
            body["image"] = json!(request.references);
        }
        let url = self.api.url("/api/v3/images/generations");
        let response = self
            .api
            .client
            .post(&url)
            .bearer_auth(self.api.api_key())
            .timeout(request.timeout)
            .json(&body)
            .send()
            .await;
        let text = read_response(NAME, response, self.api.api_key()).await?;
        let bytes = first_data_image(&self.api.fetch, NAME, &text, request.timeout).await?;
        Ok(ProviderImage {
            bytes,
            reported_cost_usd: None,
            request_id: None,
            usage: Default::default(),
        })
    }

    fn name(&self) -> &str {
        NAME
    }
}
