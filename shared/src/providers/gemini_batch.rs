//! Gemini Batch Mode: the request lines go up through the Files API (resumable upload), the batch is
//! created with `POST /v1beta/models/{model}:batchGenerateContent`, polled with
//! `GET /v1beta/batches/{id}` (an Operation whose `metadata.state` is `BATCH_STATE_*`), and its
//! results file is read from `GET /download/v1beta/{file}:download?alt=media`, one
//! `{"key", "response" | "error"}` line per request. Large inline image batches are known to become
//! unreadable (503 on get), so requests always go in a file.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::batch_http::{BatchClient, Lines, Listing, checked_id, opened, read_json, row_of};
use super::gemini::{GeminiProvider, NAME, image_of};
use super::http::snippet;
use super::{ImageRequest, ProviderError};
use crate::ports::batch::{BatchApi, BatchResult, BatchState, BatchStatus};

/// The Gemini batch client.
pub type GeminiBatch = BatchClient<GeminiProvider>;

impl GeminiBatch {
    async fn read(&self, request: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let key = self.api.api_key();
        read_json(
            NAME,
            request
                .header("x-goog-api-key", key)
                .timeout(self.call_time)
                .send()
                .await,
            key,
        )
        .await
    }

    /// Files API resumable upload: a start request returns the upload URL, which takes the bytes.
    async fn upload(&self, name: &str, lines: String) -> Result<String, ProviderError> {
        let start = self
            .api
            .client
            .post(self.api.url("/upload/v1beta/files"))
            .header("x-goog-api-key", self.api.api_key())
            .header("X-Goog-Upload-Protocol", "resumable")
            .header("X-Goog-Upload-Command", "start")
            .header("X-Goog-Upload-Header-Content-Length", lines.len().to_string())
            .header("X-Goog-Upload-Header-Content-Type", "application/jsonl")
            .timeout(self.call_time)
            .json(&json!({ "file": { "display_name": name } }))
            .send()
            .await
            .map_err(|e| super::http::transport_error(NAME, e))?;
        let upload_url = start
            .headers()
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let start = opened(NAME, Ok(start), self.api.api_key()).await?;
        drop(start);
        let upload_url = upload_url.ok_or_else(|| ProviderError::Unavailable {
            message: "gemini upload start answered without an x-goog-upload-url".into(),
        })?;
        // The key goes only to the API's own origin.
        if !upload_url.starts_with(&format!("{}/", self.api.url(""))) {
            return Err(ProviderError::Rejected {
                message: "gemini upload URL is on another origin; not followed".into(),
            });
        }
        let bytes = lines.len();
        let upload = self
            .api
            .client
            .post(&upload_url)
            .header("Content-Length", bytes.to_string())
            .header("X-Goog-Upload-Offset", "0")
            .header("X-Goog-Upload-Command", "upload, finalize")
            .body(lines);
        let file = self.read(upload).await?;
        let name = file.pointer("/file/name").and_then(Value::as_str).unwrap_or_default();
        Ok(checked_id(NAME, name, "files/")?.to_owned())
    }
}

/// `BATCH_STATE_*` (or the SDKs' `JOB_STATE_*` spelling) to a state.
fn state_of(text: &str) -> BatchState {
    match text.rsplit('_').next().unwrap_or_default() {
        "SUCCEEDED" => BatchState::Succeeded,
        "FAILED" => BatchState::Failed,
        "CANCELLED" => BatchState::Cancelled,
        "EXPIRED" => BatchState::Expired,
        "RUNNING" => BatchState::Running,
        _ => BatchState::Pending,
    }
}

/// A `batchStats` count: int64 sent as a string, and left out when zero.
fn count(v: &Value, field: &str) -> Option<u64> {
    let stats = v.pointer("/metadata/batchStats")?;
    let value = stats.get(field);
    match value {
        Some(Value::String(s)) => s.parse().ok(),
        Some(n) => n.as_u64(),
        None => Some(0),
    }
}

/// A google.rpc.Status on one request: retrying it synchronously may help unless the request itself was refused.
fn status_error(error: &Value) -> ProviderError {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = format!(
        "gemini batch request failed ({code}): {}",
        error.get("message").and_then(Value::as_str).unwrap_or("no message")
    );
    match code {
        // RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ABORTED, CANCELLED
        8 | 14 | 4 | 13 | 10 | 1 => ProviderError::Unavailable { message },
        _ => ProviderError::Rejected { message },
    }
}

/// One line of a results file.
fn result_of(line: &[u8]) -> Result<BatchResult, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("gemini result line is not JSON: {e}"))?;
    let row = row_of(NAME, v.get("key").and_then(Value::as_str))?;
    let image = match (v.get("response"), v.get("error")) {
        (_, Some(error)) if !error.is_null() => Err(status_error(error)),
        (Some(response), _) => image_of(response),
        _ => Err(ProviderError::Unavailable {
            message: "gemini result line has neither a response nor an error".into(),
        }),
    };
    Ok(BatchResult { row, image })
}

#[async_trait::async_trait]
impl BatchApi for GeminiBatch {
    fn name(&self) -> &str {
        NAME
    }

    async fn line(&self, row: u64, request: &ImageRequest) -> Result<String, ProviderError> {
        let body = self.sync.body(request).await?;
        Ok(json!({ "key": row.to_string(), "request": body }).to_string())
    }

    async fn create(&self, provider_model: &str, name: &str, lines: String) -> Result<String, ProviderError> {
        let file = self.upload(name, lines).await?;
        let url = self
            .api
            .url(&format!("/v1beta/models/{provider_model}:batchGenerateContent"));
        let body = json!({ "batch": { "display_name": name, "input_config": { "file_name": file } } });
        let created = self.read(self.api.client.post(url).json(&body)).await?;
        let id = created.get("name").and_then(Value::as_str).unwrap_or_default();
        Ok(checked_id(NAME, id, "batches/")?.to_owned())
    }

    async fn find(&self, name: &str) -> Result<Option<String>, ProviderError> {
        let listing = Listing {
            provider: NAME,
            path: "/v1beta/batches",
            size_param: "pageSize",
            cursor_param: "pageToken",
            items: "operations",
            name_at: "/metadata/displayName",
            id_field: "name",
            id_prefix: "batches/",
            next: |page| {
                let token = page.get("nextPageToken").and_then(Value::as_str);
                token.filter(|t| !t.is_empty()).map(str::to_owned)
            },
        };
        self.find_listed(&listing, name, |request, key| request.header("x-goog-api-key", key))
            .await
    }

    async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let id = checked_id(NAME, id, "batches/")?;
        let v = self
            .read(self.api.client.get(self.api.url(&format!("/v1beta/{id}"))))
            .await?;
        let state = match v.pointer("/metadata/state").and_then(Value::as_str) {
            Some(state) => state_of(state),
            // A finished operation that names no state failed as a whole (its `error` says why).
            None if v.get("done") == Some(&Value::Bool(true)) => BatchState::Failed,
            None => BatchState::Pending,
        };
        let file = ["/response/responsesFile", "/metadata/output/responsesFile"]
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_str));
        // A batch said to have succeeded before its file is named is read at the next poll.
        let state = match (state, file) {
            (BatchState::Succeeded, None) => BatchState::Running,
            (state, _) => state,
        };
        let message = v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned);
        Ok(BatchStatus {
            state,
            total: count(&v, "requestCount"),
            done: count(&v, "successfulRequestCount"),
            failed: count(&v, "failedRequestCount"),
            results: file.map(str::to_owned).into_iter().collect(),
            message,
        })
    }

    async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let id = checked_id(NAME, id, "batches/")?;
        let url = self.api.url(&format!("/v1beta/{id}:cancel"));
        self.read(self.api.client.post(url).json(&json!({}))).await.map(|_| ())
    }

    async fn results(&self, status: &BatchStatus, results: mpsc::Sender<BatchResult>) -> Result<(), ProviderError> {
        for file in &status.results {
            let file = checked_id(NAME, file, "files/")?;
            let url = self.api.url(&format!("/download/v1beta/{file}:download?alt=media"));
            let response = self
                .api
                .client
                .get(url)
                .header("x-goog-api-key", self.api.api_key())
                .send()
                .await;
            let mut lines = Lines::new(NAME, opened(NAME, response, self.api.api_key()).await?);
            while let Some(line) = lines.next_line().await? {
                match result_of(&line) {
                    Ok(result) => {
                        if results.send(result).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, line = %snippet(&String::from_utf8_lossy(&line)), "result line skipped")
                    }
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
    fn states_in_either_spelling() {
        assert_eq!(state_of("BATCH_STATE_SUCCEEDED"), BatchState::Succeeded);
        assert_eq!(state_of("JOB_STATE_EXPIRED"), BatchState::Expired);
        assert_eq!(state_of("BATCH_STATE_PENDING"), BatchState::Pending);
        assert_eq!(state_of("BATCH_STATE_RUNNING"), BatchState::Running);
    }

    #[test]
    fn result_lines_name_their_row_and_an_error_says_whether_to_retry() {
        let failed = result_of(br#"{"key":"7","error":{"code":13,"message":"internal"}}"#).unwrap();
        assert_eq!(failed.row, 7);
        assert!(failed.image.unwrap_err().is_retryable());
        let refused = result_of(br#"{"key":"8","response":{"promptFeedback":{"blockReason":"SAFETY"}}}"#).unwrap();
        assert!(!refused.image.unwrap_err().is_retryable());
        assert!(result_of(br#"{"response":{}}"#).is_err());
    }
}
