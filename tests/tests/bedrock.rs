//! The Bedrock provider against a local endpoint answering InvokeModel in its REST-JSON format.

use std::time::Duration;

use aws_sdk_bedrockruntime::config::{Credentials, Region};
use imagepipe::domain::template::ImageSize;
use imagepipe::providers::bedrock::BedrockProvider;
use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn provider(server: &MockServer) -> BedrockProvider {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
        .endpoint_url(server.uri())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "secret", None, None, "test"))
        .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
        .build();
    BedrockProvider::new(aws_sdk_bedrockruntime::Client::from_conf(config))
}

fn request(model: &str) -> ImageRequest {
    ImageRequest {
        provider_model: model.into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: "A red mug".into(),
        size: ImageSize {
            width: 1000,
            height: 1000,
        },
        references: vec![],
        seed: 5,
        timeout: Duration::from_millis(800),
    }
}

fn aws_error(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-amzn-errortype", kind)
        .set_body_json(serde_json::json!({ "message": message }))
}

/// Which way a failure must go: retry, fail the row, or stop the run.
type Decision = fn(&ProviderError) -> bool;

#[tokio::test]
async fn invoke_model_errors_and_bodies_get_the_right_decision() {
    let cases: Vec<(ResponseTemplate, Decision, &str)> = vec![
        (
            aws_error(429, "ThrottlingException", "Too many requests"),
            |e| matches!(e, ProviderError::RateLimited { .. }),
            "Too many requests",
        ),
        (
            aws_error(503, "ServiceUnavailableException", "try later"),
            ProviderError::is_retryable,
            "try later",
        ),
        (
            aws_error(
                400,
                "ValidationException",
                "This request has been blocked by our content filters.",
            ),
            |e| !e.is_retryable(),
            "content filters",
        ),
        (
            aws_error(403, "AccessDeniedException", "not authorized to invoke"),
            ProviderError::stops_run,
            "not authorized",
        ),
        (
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "images": [], "error": null })),
            |e| !e.is_retryable(),
            "no image",
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "images": ["x"], "finish_reasons": ["Filter reason: prompt"] })),
            |e| !e.is_retryable(),
            "Filter reason",
        ),
        (
            ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
            ProviderError::is_retryable,
            "malformed",
        ),
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
            ProviderError::is_retryable,
            "timed out",
        ),
    ];
    for (response, decision, text) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(response).mount(&server).await;
        let error = provider(&server)
            .generate(&request("amazon.nova-canvas-v1:0"))
            .await
            .unwrap_err();
        assert!(decision(&error), "wrong decision for {error:?}");
        assert!(error.to_string().contains(text), "{error} should contain {text}");
    }
}

#[tokio::test]
async fn titan_sizes_are_rounded_and_stability_gets_its_own_body() {
    let server = MockServer::start().await;
    let png = imagepipe::providers::placeholder::render_png(8, 8, b"s").unwrap();
    let ok =
        serde_json::json!({ "images": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png)] });
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok))
        .mount(&server)
        .await;
    let bedrock = provider(&server);
    bedrock
        .generate(&request("amazon.titan-image-generator-v2:0"))
        .await
        .unwrap();
    bedrock.generate(&request("stability.sd3-5-large-v1:0")).await.unwrap();

    let sent = server.received_requests().await.unwrap();
    let body = |i: usize| serde_json::from_slice::<serde_json::Value>(&sent[i].body).unwrap();
    assert_eq!(body(0)["imageGenerationConfig"]["width"], 992);
    assert_eq!(
        (body(1)["prompt"].as_str(), body(1)["aspect_ratio"].as_str()),
        (Some("A red mug"), Some("1:1"))
    );
    assert!(
        sent[0]
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256")
    );
}
