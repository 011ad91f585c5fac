//! Google Gemini (Generative Language API) `generateContent` for the Nano Banana image models.
//!
//! Request: `POST {base}/v1beta/models/{model}:generateContent`, header `x-goog-api-key`, text and
//! reference images as `parts`, `generationConfig.imageConfig` for aspect ratio (and `imageSize`
//! on Gemini 3 models). Response: the image is an `inlineData` part of `candidates[0]`; refusals come
//! as `promptFeedback.blockReason` or a `finishReason` such as `IMAGE_SAFETY`; errors as
//! `{"error": {"code", "message", "status"}}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Value, json};

use super::fetch::fetch_references;
use super::http::{ApiEndpoint, read_response, snippet};
use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage, Usage};
use crate::domain::template::ImageSize;

/// The public endpoint; `IMAGEPIPE_GEMINI_BASE_URL` overrides it.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// The provider\'s name in the catalog and on the command line.
pub const NAME: &str = "gemini";

/// Aspect ratios the image models accept.
const ASPECT_RATIOS: [(&str, f64); 10] = [
    ("1:1", 1.0),
    ("2:3", 2.0 / 3.0),
    ("3:2", 1.5),
    ("3:4", 0.75),
    ("4:3", 4.0 / 3.0),
    ("4:5", 0.8),
    ("5:4", 1.25),
    ("9:16", 9.0 / 16.0),
    ("16:9", 16.0 / 9.0),
    ("21:9", 21.0 / 9.0),
];

/// A Gemini API client.
#[derive(Debug, Clone)]
pub struct GeminiProvider {
    api: ApiEndpoint,
}

impl super::HttpProvider for GeminiProvider {
    fn from_endpoint(api: ApiEndpoint) -> Self {
        Self { api }
    }
}

impl GeminiProvider {
    /// The `GenerateContentRequest` for `request` (also a batch input line's `request`).
    pub(super) async fn body(&self, request: &ImageRequest) -> Result<Value, ProviderError> {
        let mut parts = vec![json!({ "text": request.prompt })];
        for (bytes, mime) in fetch_references(&self.api.fetch, &request.references, request.timeout).await? {
            parts.push(json!({ "inline_data": { "mime_type": mime, "data": BASE64.encode(&bytes) } }));
        }
        let mut image_config = json!({ "aspectRatio": aspect_ratio(request.size) });
        if request.provider_model.starts_with("gemini-3") {
            image_config["imageSize"] = json!(image_size(request.size));
        }
        Ok(json!({
            "contents": [{ "role": "user", "parts": parts }],
            "generationConfig": { "responseModalities": ["IMAGE"], "imageConfig": image_config },
        }))
    }
}

/// The supported aspect ratio nearest to the requested size.
pub fn aspect_ratio(size: ImageSize) -> &'static str {
    let wanted = f64::from(size.width) / f64::from(size.height);
    ASPECT_RATIOS
        .iter()
        .min_by(|a, b| (a.1 - wanted).abs().total_cmp(&(b.1 - wanted).abs()))
        .map_or("1:1", |r| r.0)
}

fn image_size(size: ImageSize) -> &'static str {
    match size.width.max(size.height) {
        0..=1024 => "1K",
        1025..=2048 => "2K",
        _ => "4K",
    }
}

#[async_trait::async_trait]
impl ImageProvider for GeminiProvider {
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let url = self
            .api
            .url(&format!("/v1beta/models/{}:generateContent", request.provider_model));
        let body = self.body(request).await?;
        let response = self
            .api
            .client
            .post(&url)
            .header("x-goog-api-key", self.api.api_key())
            .timeout(request.timeout)
            .json(&body)
            .send()
            .await;
        parse_image(&read_response(NAME, response, self.api.api_key()).await?)
    }

    fn name(&self) -> &str {
        NAME
    }
}

/// Extracts the image from a `generateContent` response, or says why there is none.
fn parse_image(body: &str) -> Result<ProviderImage, ProviderError> {
    let v: Value = serde_json::from_str(body).map_err(|_| ProviderError::Unavailable {
        message: format!("gemini returned a malformed response: {}", snippet(body)),
    })?;
    image_of(&v)
}

/// The image of a parsed `GenerateContentResponse` (a call's answer or a batch result's `response`).
pub(super) fn image_of(v: &Value) -> Result<ProviderImage, ProviderError> {
    if let Some(reason) = v.pointer("/promptFeedback/blockReason").and_then(Value::as_str) {
        return Err(ProviderError::Rejected {
            message: format!("gemini blocked the prompt: {reason}"),
        });
    }
    let candidate = v.pointer("/candidates/0");
    let parts = candidate
        .and_then(|c| c.pointer("/content/parts"))
        .and_then(Value::as_array);
    let inline = parts
        .into_iter()
        .flatten()
        .find_map(|p| p.get("inlineData").or_else(|| p.get("inline_data")));
    let Some(data) = inline.and_then(|d| d.get("data")).and_then(Value::as_str) else {
        let finish = candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
            .unwrap_or("none");
        let said: Vec<&str> = parts
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        return Err(ProviderError::Rejected {
            message: format!(
                "gemini returned no image (finishReason {finish}){}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.join(" "))
                }
            ),
        });
    };
    let bytes = BASE64.decode(data).map_err(|e| ProviderError::Rejected {
        message: format!("gemini image is not valid base64: {e}"),
    })?;
    Ok(ProviderImage {
        bytes: Bytes::from(bytes),
        reported_cost_usd: None,
        request_id: v.get("responseId").and_then(Value::as_str).map(str::to_owned),
        usage: gemini_usage(v),
    })
}

/// `usageMetadata`: thinking tokens are billed as output, like the image's own tokens.
fn gemini_usage(v: &Value) -> Usage {
    let count = |field: &str| v.pointer(&format!("/usageMetadata/{field}")).and_then(Value::as_u64);
    let output = match (count("candidatesTokenCount"), count("thoughtsTokenCount")) {
        (None, None) => None,
        (candidates, thoughts) => Some(candidates.unwrap_or(0) + thoughts.unwrap_or(0)),
    };
    Usage {
        input_tokens: count("promptTokenCount"),
        output_tokens: output,
        credits: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_nearest_supported_aspect_ratio() {
        let size = |width, height| ImageSize { width, height };
        assert_eq!(aspect_ratio(size(1024, 1024)), "1:1");
        assert_eq!(aspect_ratio(size(1536, 864)), "16:9");
        assert_eq!(aspect_ratio(size(768, 1024)), "3:4");
        assert_eq!(image_size(size(1536, 864)), "2K");
    }

    #[test]
    fn refusals_and_empty_answers_are_permanent() {
        let blocked = parse_image(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#).unwrap_err();
        assert_eq!(
            blocked,
            ProviderError::Rejected {
                message: "gemini blocked the prompt: SAFETY".into()
            }
        );
        let no_image =
            parse_image(r#"{"candidates":[{"finishReason":"IMAGE_SAFETY","content":{"parts":[{"text":"I can't"}]}}]}"#);
        assert!(
            no_image
                .unwrap_err()
                .to_string()
                .contains("no image (finishReason IMAGE_SAFETY): I can't")
        );
        assert!(parse_image("<html>oops</html>").unwrap_err().is_retryable());
    }
}
