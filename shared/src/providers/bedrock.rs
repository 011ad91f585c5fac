//! Amazon Bedrock `InvokeModel` (IAM credentials, no API key): Nova Canvas and Titan Image v2
//! `TEXT_IMAGE` bodies, and Stability bodies; every family answers `{"images": [base64, …]}`.
//! The endpoint follows the SDK's standard settings (`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, region).

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage, ProviderSetupError};
use crate::domain::template::ImageSize;

/// A Bedrock Runtime client. The SDK's own retries are off: imagepipe's retry policy decides.
/// The provider's name in the catalog and on the command line.
pub const NAME: &str = "bedrock";

#[derive(Debug, Clone)]
pub struct BedrockProvider {
    client: Client,
}

impl BedrockProvider {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// From the standard AWS configuration chain (env, profile, instance role); fails at once when
    /// no credentials can be found, rather than failing every row.
    pub async fn from_env() -> Result<Self, ProviderSetupError> {
        use aws_sdk_bedrockruntime::config::ProvideCredentials;
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await;
        let found = match config.credentials_provider() {
            Some(provider) => provider.provide_credentials().await.is_ok(),
            None => false,
        };
        if !found {
            return Err(ProviderSetupError::MissingCredentials {
                provider: "bedrock".into(),
                variable: "AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role)".into(),
            });
        }
        Ok(Self::new(Client::new(&config)))
    }
}

/// The request body for the model family of `request.provider_model`.
pub fn invoke_body(request: &ImageRequest) -> Value {
    if request.provider_model.starts_with("stability.") {
        return json!({
            "prompt": request.prompt,
            "aspect_ratio": super::gemini::aspect_ratio(request.size),
            "output_format": "png",
            "seed": request.seed % 4_294_967_295,
        });
    }
    let size = multiple_of_16(request.size);
    json!({
        "taskType": "TEXT_IMAGE",
        "textToImageParams": { "text": request.prompt },
        "imageGenerationConfig": {
            "numberOfImages": 1,
            "width": size.width,
            "height": size.height,
            "quality": request.quality.as_deref().unwrap_or("standard"),
            "seed": request.seed % 2_147_483_647,
        },
    })
}

/// Nova Canvas and Titan take sides in multiples of 16 from 320 to 4096.
fn multiple_of_16(size: ImageSize) -> ImageSize {
    let side = |s: u32| (s.clamp(320, 4096) / 16) * 16;
    ImageSize {
        width: side(size.width),
        height: side(size.height),
    }
}

#[async_trait::async_trait]
impl ImageProvider for BedrockProvider {
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let body = serde_json::to_vec(&invoke_body(request)).unwrap_or_default();
        let call = self
            .client
            .invoke_model()
            .model_id(&request.provider_model)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body))
            .send();
        let output = match tokio::time::timeout(request.timeout, call).await {
            Err(_) => {
                return Err(ProviderError::Unavailable {
                    message: format!("bedrock timed out after {:?}", request.timeout),
                });
            }
            Ok(result) => result.map_err(decide)?,
        };
        let request_id = None;
        parse_images(output.body.as_ref()).map(|bytes| ProviderImage {
            bytes,
            reported_cost_usd: None,
            request_id,
            usage: Default::default(),
        })
    }

    fn name(&self) -> &str {
        NAME
    }
}

fn decide(error: SdkError<InvokeModelError>) -> ProviderError {
    let SdkError::ServiceError(service) = &error else {
        return ProviderError::Unavailable {
            message: format!(
                "bedrock unreachable: {}",
                aws_sdk_bedrockruntime::error::DisplayErrorContext(&error)
            ),
        };
    };
    let err = service.err();
    let message = format!("bedrock: {}", aws_sdk_bedrockruntime::error::DisplayErrorContext(err));
    match err {
        InvokeModelError::ThrottlingException(_) | InvokeModelError::ServiceQuotaExceededException(_) => {
            ProviderError::RateLimited {
                retry_after: None,
                message,
            }
        }
        InvokeModelError::AccessDeniedException(_) => ProviderError::Unauthorized { message },
        InvokeModelError::InternalServerException(_)
        | InvokeModelError::ServiceUnavailableException(_)
        | InvokeModelError::ModelTimeoutException(_)
        | InvokeModelError::ModelNotReadyException(_) => ProviderError::Unavailable { message },
        _ if service.raw().status().as_u16() >= 500 => ProviderError::Unavailable { message },
        _ => ProviderError::Rejected { message },
    }
}

fn parse_images(body: &[u8]) -> Result<Bytes, ProviderError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| ProviderError::Unavailable {
        message: "bedrock returned a malformed response".into(),
    })?;
    if let Some(error) = v.get("error").and_then(Value::as_str) {
        return Err(ProviderError::Rejected {
            message: format!("bedrock: {error}"),
        });
    }
    if let Some(reason) = v.pointer("/finish_reasons/0").and_then(Value::as_str) {
        return Err(ProviderError::Rejected {
            message: format!("bedrock: {reason}"),
        });
    }
    let b64 = v
        .pointer("/images/0")
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Rejected {
            message: "bedrock returned no image (no images[] in the response)".into(),
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Rejected {
            message: format!("bedrock image is not valid base64: {e}"),
        })
}
