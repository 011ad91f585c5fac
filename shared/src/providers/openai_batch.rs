//! OpenAI Batch API for `/v1/images/generations`: the request lines go up as a file
//! (`POST /v1/files`, `purpose=batch`), the batch is created with `POST /v1/batches`
//! (`completion_window: 24h`, the name in `metadata`), polled with `GET /v1/batches/{id}`
//! (`validating … in_progress … finalizing … completed | failed | expired | cancelled`), and its
//! `output_file_id` and `error_file_id` are read from `GET /v1/files/{id}/content`. Output lines come
//! in any order: each is matched by its `custom_id`, which is the row.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::batch_http::{BatchClient, Lines, Listing, checked_id, opened, read_json, row_of};
use super::http::{json_error_message, snippet, status_error};
use super::openai::{NAME, OpenAiProvider, generation_body};
use super::{ImageRequest, ProviderError};
use crate::ports::batch::{BatchApi, BatchResult, BatchState, BatchStatus};

/// The metadata key carrying the batch's name (OpenAI batches have no display name).
const NAME_KEY: &str = "imagepipe_batch";
/// How long a result line's image may take to decode (it is base64 in the line, never a URL).
const DECODE_TIME: Duration = Duration::from_secs(60);

/// The OpenAI batch client.
pub type OpenAiBatch = BatchClient<OpenAiProvider>;

impl OpenAiBatch {
    async fn read(&self, request: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let key = self.api.api_key();
        read_json(NAME, request.bearer_auth(key).timeout(self.call_time).send().await, key).await
    }

    async fn upload(&self, name: &str, lines: String) -> Result<String, ProviderError> {
        let file = reqwest::multipart::Part::bytes(lines.into_bytes())
            .file_name(format!("{name}.jsonl"))
            .mime_str("application/jsonl")
            .map_err(|e| ProviderError::Rejected {
                message: format!("openai batch file: {e}"),
            })?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", file);
        let uploaded = self
            .read(self.api.client.post(self.api.url("/v1/files")).multipart(form))
            .await?;
        let id = uploaded.get("id").and_then(Value::as_str).unwrap_or_default();
        Ok(checked_id(NAME, id, "")?.to_owned())
    }

    /// One result line's image: the `ImagesResponse` of a 200, else the API's error.
    async fn image_of(&self, v: &Value) -> Result<crate::providers::ProviderImage, ProviderError> {
        if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            let code = error.get("code").and_then(Value::as_str).unwrap_or("error");
            let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
            // Expired, cancelled or timed-out requests were never run: the synchronous path may do them.
            return Err(ProviderError::Unavailable {
                message: format!("openai batch request {code}: {message}"),
            });
        }
        let status = v.pointer("/response/status_code").and_then(Value::as_u64).unwrap_or(0);
        let body = v.pointer("/response/body").map(Value::to_string).unwrap_or_default();
        if status != 200 {
            let headers = reqwest::header::HeaderMap::new();
            return Err(status_error(NAME, status as u16, &headers, &json_error_message(&body)));
        }
        self.sync.image_of(&body, DECODE_TIME).await
    }
}

fn state_of(text: &str) -> BatchState {
    match text {
        "in_progress" | "finalizing" | "cancelling" => BatchState::Running,
        "completed" => BatchState::Succeeded,
        "failed" => BatchState::Failed,
        "expired" => BatchState::Expired,
        "cancelled" => BatchState::Cancelled,
        _ => BatchState::Pending,
    }
}

#[async_trait::async_trait]
impl BatchApi for OpenAiBatch {
    fn name(&self) -> &str {
        NAME
    }

    async fn line(&self, row: u64, request: &ImageRequest) -> Result<String, ProviderError> {
        if !request.references.is_empty() {
            // Edits with reference images are multipart uploads: they go the synchronous way.
            return Err(ProviderError::Unavailable {
                message: "openai batch takes no reference images; the row goes the synchronous way".into(),
            });
        }
        let line = json!({
            "custom_id": row.to_string(),
            "method": "POST",
            "url": "/v1/images/generations",
            "body": generation_body(request),
        });
        Ok(line.to_string())
    }

    async fn create(&self, _provider_model: &str, name: &str, lines: String) -> Result<String, ProviderError> {
        let file = self.upload(name, lines).await?;
        let body = json!({
            "input_file_id": file,
            "endpoint": "/v1/images/generations",
            "completion_window": "24h",
            "metadata": { NAME_KEY: name },
        });
        let created = self
            .read(self.api.client.post(self.api.url("/v1/batches")).json(&body))
            .await?;
        let id = created.get("id").and_then(Value::as_str).unwrap_or_default();
        Ok(checked_id(NAME, id, "")?.to_owned())
    }

    async fn find(&self, name: &str) -> Result<Option<String>, ProviderError> {
        let name_at = format!("/metadata/{NAME_KEY}");
        let listing = Listing {
            provider: NAME,
            path: "/v1/batches",
            size_param: "limit",
            cursor_param: "after",
            items: "data",
            name_at: &name_at,
            id_field: "id",
            id_prefix: "",
            next: |page| match page.get("has_more").and_then(Value::as_bool) {
                Some(true) => page.get("last_id").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            },
        };
        self.find_listed(&listing, name, |request, key| request.bearer_auth(key))
            .await
    }

    async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let id = checked_id(NAME, id, "")?;
        let v = self
            .read(self.api.client.get(self.api.url(&format!("/v1/batches/{id}"))))
            .await?;
        let count = |field: &str| v.pointer(&format!("/request_counts/{field}")).and_then(Value::as_u64);
        // A clean batch may name its error file as "".
        let files = ["output_file_id", "error_file_id"]
            .iter()
            .filter_map(|f| v.get(*f).and_then(Value::as_str).filter(|id| !id.is_empty()))
            .map(str::to_owned)
            .collect();
        let message = v
            .pointer("/errors/data")
            .and_then(Value::as_array)
            .map(|errors| {
                let said: Vec<&str> = errors.iter().filter_map(|e| e.get("message")?.as_str()).collect();
                said.join("; ")
            })
            .filter(|m| !m.is_empty());
        Ok(BatchStatus {
            state: state_of(v.get("status").and_then(Value::as_str).unwrap_or_default()),
            total: count("total"),
            done: count("completed"),
            failed: count("failed"),
            results: files,
            message,
        })
    }

    async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let id = checked_id(NAME, id, "")?;
        let url = self.api.url(&format!("/v1/batches/{id}/cancel"));
        self.read(self.api.client.post(url)).await.map(|_| ())
    }

    async fn results(&self, status: &BatchStatus, results: mpsc::Sender<BatchResult>) -> Result<(), ProviderError> {
        for file in &status.results {
            let file = checked_id(NAME, file, "")?;
            let url = self.api.url(&format!("/v1/files/{file}/content"));
            let response = self.api.client.get(url).bearer_auth(self.api.api_key()).send().await;
            let mut lines = Lines::new(NAME, opened(NAME, response, self.api.api_key()).await?);
            while let Some(line) = lines.next_line().await? {
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    tracing::warn!(line = %snippet(&String::from_utf8_lossy(&line)), "result line is not JSON; skipped");
                    continue;
                };
                let row = match row_of(NAME, v.get("custom_id").and_then(Value::as_str)) {
                    Ok(row) => row,
                    Err(e) => {
                        tracing::warn!(error = %e, "result line skipped");
                        continue;
                    }
                };
                let image = self.image_of(&v).await;
                if results.send(BatchResult { row, image }).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_state() {
        assert_eq!(state_of("validating"), BatchState::Pending);
        assert_eq!(state_of("finalizing"), BatchState::Running);
        assert_eq!(state_of("completed"), BatchState::Succeeded);
        assert_eq!(state_of("expired"), BatchState::Expired);
    }
}
