//! The Gemini provider against a local server answering in the Generative Language API's format.

use std::time::Duration;

use base64::Engine;
use imagepipe::adapters::http_publish::http_client;
use imagepipe::domain::template::ImageSize;
use imagepipe::providers::HttpProvider;
use imagepipe::providers::gemini::GeminiProvider;
use imagepipe::providers::placeholder::render_png;
use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const MODEL_PATH: &str = "/v1beta/models/gemini-3.1-flash-image-preview:generateContent";

fn request() -> ImageRequest {
    ImageRequest {
        provider_model: "gemini-3.1-flash-image-preview".into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: "A red mug".into(),
        size: ImageSize {
            width: 1536,
            height: 864,
        },
        references: vec![],
        seed: 1,
        timeout: Duration::from_millis(500),
    }
}

async fn answer(server: &MockServer, response: ResponseTemplate) -> Result<bytes::Bytes, ProviderError> {
    Mock::given(method("POST"))
        .and(path(MODEL_PATH))
        .respond_with(response)
        .mount(server)
        .await;
    let provider = GeminiProvider::new(http_client(Duration::from_secs(5)), &server.uri(), "test-key");
    provider.generate(&request()).await.map(|image| image.bytes)
}

fn image_response() -> serde_json::Value {
    let png = render_png(64, 36, b"seed").unwrap();
    json!({
        "candidates": [{ "content": { "role": "model", "parts": [
            { "text": "Here is your image" },
            { "inlineData": { "mimeType": "image/png", "data": base64::engine::general_purpose::STANDARD.encode(&png) } }
        ]}, "finishReason": "STOP" }],
        "usageMetadata": { "promptTokenCount": 8, "candidatesTokenCount": 1290 },
        "responseId": "resp-123"
    })
}

fn api_error(code: u16, status: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(code)
        .set_body_json(json!({ "error": { "code": code, "message": message, "status": status } }))
}

#[tokio::test]
async fn success_sends_the_documented_request_and_returns_the_inline_image() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MODEL_PATH))
        .and(header("x-goog-api-key", "test-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(image_response()))
        .expect(1)
        .mount(&server)
        .await;
    let provider = GeminiProvider::new(http_client(Duration::from_secs(5)), &server.uri(), "test-key");
    let image = provider.generate(&request()).await.unwrap();

    assert!(image.bytes.starts_with(b"\x89PNG"));
    assert_eq!(image.request_id.as_deref(), Some("resp-123"));
    assert_eq!(
        (image.usage.input_tokens, image.usage.output_tokens),
        (Some(8), Some(1290))
    );
    // 1,290 output tokens at nano-banana's token price is its list price per image, to the cent.
    let cost = imagepipe::domain::catalog::Catalog::builtin()
        .model("nano-banana")
        .unwrap()
        .cost_of(&image.usage);
    assert!((cost - 0.0387).abs() < 1e-4, "{cost}");
    let sent: serde_json::Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "A red mug");
    assert_eq!(sent["generationConfig"]["responseModalities"], json!(["IMAGE"]));
    assert_eq!(
        sent["generationConfig"]["imageConfig"],
        json!({ "aspectRatio": "16:9", "imageSize": "2K" })
    );
}

#[tokio::test]
async fn rate_limits_are_retryable_with_the_servers_retry_after() {
    let server = MockServer::start().await;
    let response = api_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded").insert_header("retry-after", "30");
    let error = answer(&server, response).await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
            message: "gemini HTTP 429: RESOURCE_EXHAUSTED: Quota exceeded".into()
        }
    );
}

/// Which way a failure must go: retry, fail the row, or stop the run.
type Decision = fn(&ProviderError) -> bool;

#[tokio::test]
async fn each_failure_shape_gets_the_right_decision() {
    let png = render_png(8, 8, b"x").unwrap();
    let cases: Vec<(ResponseTemplate, Decision, &str)> = vec![
        (
            api_error(503, "UNAVAILABLE", "The model is overloaded"),
            ProviderError::is_retryable,
            "overloaded",
        ),
        (
            api_error(500, "INTERNAL", "Internal error"),
            ProviderError::is_retryable,
            "HTTP 500",
        ),
        (
            api_error(400, "INVALID_ARGUMENT", "Unsupported aspect ratio"),
            |e| !e.is_retryable(),
            "INVALID_ARGUMENT",
        ),
        (
            api_error(401, "UNAUTHENTICATED", "API key not valid"),
            ProviderError::stops_run,
            "API key not valid",
        ),
        (
            api_error(403, "PERMISSION_DENIED", "denied"),
            ProviderError::stops_run,
            "PERMISSION_DENIED",
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({ "promptFeedback": { "blockReason": "PROHIBITED_CONTENT" } })),
            |e| !e.is_retryable(),
            "blocked the prompt: PROHIBITED_CONTENT",
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({ "candidates": [{ "finishReason": "NO_IMAGE", "content": { "parts": [] } }] })),
            |e| !e.is_retryable(),
            "no image (finishReason NO_IMAGE)",
        ),
        (
            ResponseTemplate::new(200).set_body_string("{\"candidates\": [tru"),
            ProviderError::is_retryable,
            "malformed",
        ),
        (
            ResponseTemplate::new(502).set_body_string("<!DOCTYPE html><html><body>Bad Gateway</body></html>"),
            ProviderError::is_retryable,
            "an HTML page",
        ),
        (
            ResponseTemplate::new(200)
                .set_body_raw(png, "image/png")
                .set_delay(Duration::from_secs(2)),
            ProviderError::is_retryable,
            "timed out",
        ),
    ];
    for (response, decision, text) in cases {
        let server = MockServer::start().await;
        let error = answer(&server, response).await.unwrap_err();
        assert!(decision(&error), "wrong decision for {error:?}");
        assert!(error.to_string().contains(text), "{error} should contain {text}");
        assert!(!error.to_string().contains("test-key"));
    }
}
