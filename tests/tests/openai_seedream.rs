//! The OpenAI Images and Seedream (ModelArk) providers against local servers in their wire formats.

use std::time::Duration;

use base64::Engine;
use imagepipe::adapters::http_publish::http_client;
use imagepipe::adapters::net::{AllowList, FetchClient};
use imagepipe::domain::template::ImageSize;
use imagepipe::providers::HttpProvider;
use imagepipe::providers::openai::OpenAiProvider;
use imagepipe::providers::placeholder::render_png;
use imagepipe::providers::seedream::SeedreamProvider;
use imagepipe::providers::{ImageProvider, ImageRequest, ProviderError};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn request(model: &str, references: Vec<String>) -> ImageRequest {
    ImageRequest {
        provider_model: model.into(),
        quality: Some("medium".into()),
        key: "product/SKU-1".into(),
        prompt: "A red mug".into(),
        size: ImageSize {
            width: 1536,
            height: 1024,
        },
        references,
        seed: 42,
        timeout: Duration::from_millis(500),
    }
}

fn b64_png() -> String {
    base64::engine::general_purpose::STANDARD.encode(render_png(16, 16, b"x").unwrap())
}

/// Downloads may reach the loopback stand-in (internal addresses are refused otherwise).
fn loopback_fetch() -> FetchClient {
    FetchClient::new(AllowList::parse("127.0.0.1").unwrap())
}

fn openai(server: &MockServer) -> OpenAiProvider {
    OpenAiProvider::from_endpoint(
        imagepipe::providers::http::ApiEndpoint::new(http_client(Duration::from_secs(5)), &server.uri(), "sk-test")
            .with_fetch(loopback_fetch()),
    )
}

fn seedream(server: &MockServer) -> SeedreamProvider {
    SeedreamProvider::from_endpoint(
        imagepipe::providers::http::ApiEndpoint::new(http_client(Duration::from_secs(5)), &server.uri(), "ark-test")
            .with_fetch(loopback_fetch()),
    )
}

async fn sent_body(server: &MockServer) -> serde_json::Value {
    serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap()
}

#[tokio::test]
async fn openai_sends_model_size_quality_and_reads_b64_json() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", "Bearer sk-test"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "created": 1, "data": [{ "b64_json": b64_png() }] })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let image = openai(&server).generate(&request("gpt-image-1", vec![])).await.unwrap();

    assert!(image.bytes.starts_with(b"\x89PNG"));
    let body = sent_body(&server).await;
    assert_eq!(
        (
            body["model"].as_str(),
            body["size"].as_str(),
            body["quality"].as_str(),
            body["output_format"].as_str()
        ),
        (Some("gpt-image-1"), Some("1536x1024"), Some("medium"), Some("png"))
    );
}

#[tokio::test]
async fn seedream_sends_its_fields_and_reads_b64_or_downloads_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/signed/image.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(render_png(8, 8, b"u").unwrap(), "image/png"))
        .mount(&server)
        .await;
    let url_answer = json!({ "model": "seedream-5-0-260128", "data": [{ "url": format!("{}/signed/image.png", server.uri()), "size": "8x8" }] });
    Mock::given(method("POST"))
        .and(path("/api/v3/images/generations"))
        .and(header("authorization", "Bearer ark-test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(url_answer))
        .mount(&server)
        .await;
    let refs = vec!["https://example.com/ref.png".to_owned()];
    let image = seedream(&server)
        .generate(&request("seedream-5-0-260128", refs))
        .await
        .unwrap();

    assert!(image.bytes.starts_with(b"\x89PNG"));
    let body = sent_body(&server).await;
    assert_eq!(body["size"], "1536x1024");
    assert_eq!(
        (body["seed"].as_u64(), body["watermark"].as_bool()),
        (Some(42), Some(false))
    );
    assert_eq!(body["response_format"], "b64_json");
    assert_eq!(body["image"], json!(["https://example.com/ref.png"]));

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "data": [{ "b64_json": b64_png() }] })))
        .mount(&server)
        .await;
    assert!(
        seedream(&server)
            .generate(&request("m", vec![]))
            .await
            .unwrap()
            .bytes
            .starts_with(b"\x89PNG")
    );
}

/// Which way a failure must go: retry, fail the row, or stop the run.
type Decision = fn(&ProviderError) -> bool;

#[tokio::test]
async fn failures_of_both_providers_get_the_right_decision() {
    let api_error = |status: u16, code: &str, message: &str| {
        ResponseTemplate::new(status)
            .set_body_json(json!({ "error": { "code": code, "message": message, "type": "x" } }))
    };
    let cases: Vec<(ResponseTemplate, Decision, &str)> = vec![
        (
            api_error(429, "rate_limit_exceeded", "slow down").insert_header("retry-after", "12"),
            |e| e.retry_after() == Some(Duration::from_secs(12)),
            "slow down",
        ),
        (
            api_error(500, "server_error", "oops"),
            ProviderError::is_retryable,
            "HTTP 500",
        ),
        (
            api_error(
                400,
                "moderation_blocked",
                "Your request was rejected by the safety system",
            ),
            |e| !e.is_retryable(),
            "moderation_blocked",
        ),
        (
            api_error(400, "InputTextSensitiveContentDetected", "sensitive"),
            |e| !e.is_retryable(),
            "InputTextSensitiveContentDetected",
        ),
        (
            api_error(401, "invalid_api_key", "Incorrect API key"),
            ProviderError::stops_run,
            "Incorrect API key",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({ "data": [] })),
            |e| !e.is_retryable(),
            "returned no image",
        ),
        (
            ResponseTemplate::new(200).set_body_string("<html><body>maintenance</body></html>"),
            ProviderError::is_retryable,
            "an HTML page",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({ "data": [{ "b64_json": "@@@" }] })),
            |e| !e.is_retryable(),
            "not valid base64",
        ),
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(2)),
            ProviderError::is_retryable,
            "timed out",
        ),
    ];
    for (response, decision, text) in cases {
        for provider in ["openai", "seedream"] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(response.clone())
                .mount(&server)
                .await;
            let result = match provider {
                "openai" => openai(&server).generate(&request("gpt-image-1", vec![])).await,
                _ => {
                    seedream(&server)
                        .generate(&request("seedream-4-0-250828", vec![]))
                        .await
                }
            };
            let error = result.unwrap_err();
            assert!(decision(&error), "{provider}: wrong decision for {error:?}");
            assert!(
                error.to_string().contains(text),
                "{provider}: {error} should contain {text}"
            );
            assert!(!error.to_string().contains("-test"), "{provider} leaked its key");
        }
    }
}

#[tokio::test]
async fn openai_rows_with_reference_images_go_to_edits_as_multipart() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/ref.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(render_png(8, 8, b"r").unwrap(), "image/png"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/edits"))
        .and(header("authorization", "Bearer sk-test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "data": [{ "b64_json": b64_png() }] })))
        .expect(1)
        .mount(&server)
        .await;
    let refs = vec![format!("{}/ref.png", server.uri())];
    let image = openai(&server).generate(&request("gpt-image-1", refs)).await.unwrap();

    assert!(image.bytes.starts_with(b"\x89PNG"));
    let edit = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/v1/images/edits")
        .unwrap();
    let content_type = edit.headers.get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(content_type.starts_with("multipart/form-data"), "{content_type}");
    let body = String::from_utf8_lossy(&edit.body);
    for field in [
        "name=\"model\"",
        "name=\"prompt\"",
        "name=\"image[]\"; filename=\"reference-0.png\"",
        "A red mug",
    ] {
        assert!(body.contains(field), "multipart body lacks {field}");
    }
}

#[tokio::test]
async fn seedream_refuses_references_it_cannot_fetch_without_a_call() {
    let server = MockServer::start().await;
    let error = seedream(&server)
        .generate(&request("m", vec!["s3://bucket/ref.png".into()]))
        .await
        .unwrap_err();
    assert!(!error.is_retryable() && error.to_string().contains("must be an http(s) URL"));
    assert!(server.received_requests().await.unwrap().is_empty());
}
