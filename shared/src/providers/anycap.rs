//! The AnyCap CLI as a provider: `anycap image generate --prompt … --model … -o PATH`, which prints
//! `{"status":"success","local_path":…,"credits_used":…,"request_id":…}` on stdout.
//! Reference images go in as `--mode image-to-image --param images=URL[,URL…]`.

use std::path::PathBuf;
use std::process::Stdio;

use bytes::Bytes;
use serde_json::Value;

use super::{ImageProvider, ImageRequest, ProviderError, ProviderImage, Usage};

/// Runs the AnyCap binary from `IMAGEPIPE_ANYCAP_BIN`, else `anycap` on `PATH`.
/// The provider's name in the catalog and on the command line.
pub const NAME: &str = "anycap";

#[derive(Debug, Clone)]
pub struct AnyCapProvider {
    binary: PathBuf,
}

impl AnyCapProvider {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self { binary: binary.into() }
    }

    pub fn from_env() -> Self {
        Self::new(std::env::var_os("IMAGEPIPE_ANYCAP_BIN").map_or_else(|| PathBuf::from("anycap"), PathBuf::from))
    }
}

#[async_trait::async_trait]
impl ImageProvider for AnyCapProvider {
    async fn generate(&self, request: &ImageRequest) -> Result<ProviderImage, ProviderError> {
        let dir = tempfile_dir()?;
        let target = dir.join("image");
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args([
                "image",
                "generate",
                "--prompt",
                &request.prompt,
                "--model",
                &request.provider_model,
                "-o",
            ])
            .arg(&target)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !request.references.is_empty() {
            command.args([
                "--mode",
                "image-to-image",
                "--param",
                &format!("images={}", request.references.join(",")),
            ]);
        }
        let run = tokio::time::timeout(request.timeout, command.output()).await;
        let result = match run {
            Err(_) => Err(ProviderError::Unavailable {
                message: format!("anycap timed out after {:?}", request.timeout),
            }),
            Ok(Err(e)) => Err(ProviderError::Rejected {
                message: format!(
                    "cannot run {} ({e}); install AnyCap or set IMAGEPIPE_ANYCAP_BIN",
                    self.binary.display()
                ),
            }),
            Ok(Ok(output)) => read_output(&output.stdout, &output.stderr, output.status.success()).await,
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    fn name(&self) -> &str {
        NAME
    }
}

fn tempfile_dir() -> Result<PathBuf, ProviderError> {
    let dir = std::env::temp_dir().join(format!("imagepipe-anycap-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(|e| ProviderError::Unavailable {
        message: format!("no temp dir: {e}"),
    })?;
    Ok(dir)
}

async fn read_output(stdout: &[u8], stderr: &[u8], exited_ok: bool) -> Result<ProviderImage, ProviderError> {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let status = parsed.as_ref().and_then(|v| v.get("status")).and_then(Value::as_str);
    if !exited_ok || status != Some("success") {
        let said = parsed
            .as_ref()
            .and_then(|v| v.get("error").or_else(|| v.get("message")))
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(stderr).trim().chars().take(300).collect());
        return Err(classify(&said));
    }
    let path = parsed
        .as_ref()
        .and_then(|v| v.get("local_path"))
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Rejected {
            message: "anycap reported success without a local_path".into(),
        })?;
    let unreadable = |e: std::io::Error| ProviderError::Rejected {
        message: format!("anycap output {path} unreadable: {e}"),
    };
    let size = tokio::fs::metadata(path).await.map_err(unreadable)?.len();
    if size > super::http::MAX_IMAGE_BYTES as u64 {
        return Err(ProviderError::Rejected {
            message: format!(
                "anycap output {path} is {size} bytes, over {} bytes",
                super::http::MAX_IMAGE_BYTES
            ),
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(unreadable)?;
    let request_id = parsed
        .as_ref()
        .and_then(|v| v.get("request_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let credits = parsed
        .as_ref()
        .and_then(|v| v.get("credits_used"))
        .and_then(Value::as_f64);
    Ok(ProviderImage {
        bytes: Bytes::from(bytes),
        reported_cost_usd: None,
        request_id,
        usage: Usage {
            credits,
            ..Usage::default()
        },
    })
}

/// AnyCap reports failures as text: sort them by what they say.
fn classify(said: &str) -> ProviderError {
    let lower = said.to_lowercase();
    let message = format!("anycap: {said}");
    if ["unauthorized", "login", "api key", "forbidden"]
        .iter()
        .any(|w| lower.contains(w))
    {
        ProviderError::Unauthorized { message }
    } else if ["rate limit", "429", "too many requests", "quota"]
        .iter()
        .any(|w| lower.contains(w))
    {
        ProviderError::RateLimited {
            retry_after: None,
            message,
        }
    } else if [
        "timeout",
        "timed out",
        "unavailable",
        "overloaded",
        "503",
        "502",
        "500",
        "network",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        ProviderError::Unavailable { message }
    } else {
        ProviderError::Rejected { message }
    }
}
