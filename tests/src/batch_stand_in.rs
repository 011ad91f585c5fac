//! Local stand-ins for the Gemini Batch Mode and OpenAI Batch APIs, answering in their wire formats:
//! file upload (Gemini's resumable protocol, OpenAI's multipart `purpose=batch`), batch creation,
//! polling through each state, listing, and results files of JSONL lines matched by key. What they
//! do with each request line is scripted by the line's row: refuse it, fail it, or leave it without a
//! result (as an expired batch does). A creation can be made to answer late (after the batch exists),
//! and a whole batch to end expired. Both also answer synchronous image calls (`generateContent`,
//! `/v1/images/generations`), for rows that go the synchronous way.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

/// What the stand-in does; rows are the request lines' keys (`key` / `custom_id`).
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Rows answered with a refusal (a safety block).
    pub refuse: HashSet<u64>,
    /// Rows answered with a retryable error.
    pub fail: HashSet<u64>,
    /// Rows left without a result (expired before they ran).
    pub expire: HashSet<u64>,
    /// Polls a batch stays in each state before the next.
    pub polls_per_state: u32,
    /// The first creation answers after this long (the batch is created at once).
    pub slow_first_create: Option<Duration>,
    /// Every batch ends expired, with results only for rows not in `expire`.
    pub expire_batches: bool,
    /// The API key callers must send; `test-key` when `None`.
    pub api_key: Option<String>,
}

impl Script {
    /// Rows refused, failed and left expired; each batch a poll in each state.
    pub fn rows(refuse: &[u64], fail: &[u64], expire: &[u64]) -> Self {
        Self {
            refuse: refuse.iter().copied().collect(),
            fail: fail.iter().copied().collect(),
            expire: expire.iter().copied().collect(),
            polls_per_state: 1,
            ..Self::default()
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    id: String,
    name: String,
    model: String,
    input: String,
    polls: u32,
    cancelled: bool,
    /// Results, once finished: (success lines, error lines).
    results: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    files: BTreeMap<String, String>,
    batches: Vec<Batch>,
    created: usize,
    sync_calls: usize,
}

/// A running stand-in: its address, and what it was asked.
#[derive(Clone)]
pub struct StandIn {
    uri: String,
    /// The server, when the stand-in has its own.
    _server: Option<Arc<MockServer>>,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    pub fn uri(&self) -> String {
        self.uri.clone()
    }

    /// Batches created (each one paid for).
    pub fn batches_created(&self) -> usize {
        self.lock().created
    }

    /// Requests the batches held, in all.
    pub fn batched_requests(&self) -> usize {
        self.lock().batches.iter().map(|b| b.input.lines().count()).sum()
    }

    /// The batches' names (display names or metadata).
    pub fn batch_names(&self) -> Vec<String> {
        self.lock().batches.iter().map(|b| b.name.clone()).collect()
    }

    /// Synchronous image calls made.
    pub fn sync_calls(&self) -> usize {
        self.lock().sync_calls
    }

    /// The request lines of every batch.
    pub fn input_lines(&self) -> Vec<Value> {
        let state = self.lock();
        (state.batches.iter())
            .flat_map(|b| {
                b.input
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A PNG that differs by row.
pub fn png_for(row: u64) -> String {
    let png = imagepipe::providers::placeholder::render_png(64, 64, &row.to_le_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn row_of(key: &str) -> u64 {
    key.parse().unwrap_or(0)
}

struct Handler {
    state: Arc<Mutex<State>>,
    uri: String,
    api: Api,
}

#[derive(Clone, Copy)]
enum Api {
    Gemini,
    OpenAi,
}

impl Handler {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the Gemini stand-in.
pub async fn gemini(script: Script) -> StandIn {
    start(script, Api::Gemini).await
}

/// Starts the OpenAI stand-in.
pub async fn openai(script: Script) -> StandIn {
    start(script, Api::OpenAi).await
}

async fn start(script: Script, api: Api) -> StandIn {
    let server = MockServer::start().await;
    let mut stand_in = mount(&server, matchers::path_regex("^/"), script, api).await;
    stand_in._server = Some(Arc::new(server));
    stand_in
}

/// The Gemini batch endpoints (upload, create, get, list, download) on a server that answers the
/// synchronous calls itself.
pub async fn mount_gemini(server: &MockServer, script: Script) -> StandIn {
    let batch_paths =
        r"^/(upload/v1beta/files|v1beta/batches.*|v1beta/models/[^/]+:batchGenerateContent|download/v1beta/.*)$";
    mount(server, matchers::path_regex(batch_paths), script, Api::Gemini).await
}

async fn mount(server: &MockServer, paths: matchers::PathRegexMatcher, script: Script, api: Api) -> StandIn {
    let state = Arc::new(Mutex::new(State {
        script,
        ..State::default()
    }));
    let handler = Handler {
        state: state.clone(),
        uri: server.uri(),
        api,
    };
    Mock::given(paths)
        .respond_with(handler)
        .with_priority(1)
        .mount(server)
        .await;
    StandIn {
        uri: server.uri(),
        _server: None,
        state,
    }
}

impl Respond for Handler {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = self.lock().script.api_key.clone().unwrap_or_else(|| "test-key".into());
        let authorised = match self.api {
            Api::Gemini => request.headers.get("x-goog-api-key").is_some_and(|k| k == key.as_str()),
            Api::OpenAi => {
                (request.headers.get("authorization")).is_some_and(|k| k == format!("Bearer {key}").as_str())
            }
        };
        let path = request.url.path().to_owned();
        let upload_session =
            path.starts_with("/upload/") && request.url.query().is_some_and(|q| q.contains("upload_id"));
        if !authorised && !upload_session {
            return error(401, "UNAUTHENTICATED", "API key not valid");
        }
        match self.api {
            Api::Gemini => self.gemini(request, &path),
            Api::OpenAi => self.openai(request, &path),
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({ "error": { "code": status, "message": message, "status": code, "type": code } }))
}

fn not_found() -> ResponseTemplate {
    error(404, "NOT_FOUND", "no such resource")
}

impl Handler {
    /// Moves a batch on one poll; returns its state name in the API's spelling.
    fn advance(&self, index: usize) -> (&'static str, Option<(String, String)>) {
        let mut state = self.lock();
        let script = state.script.clone();
        let batch = &mut state.batches[index];
        batch.polls += 1;
        if batch.cancelled {
            return ("cancelled", None);
        }
        let step = batch.polls / script.polls_per_state.max(1);
        if step < 2 {
            return (if step == 0 { "pending" } else { "running" }, None);
        }
        if batch.results.is_none() {
            batch.results = Some(self.results_of(batch, &script));
        }
        let finished = if script.expire_batches { "expired" } else { "succeeded" };
        (finished, batch.results.clone())
    }

    fn results_of(&self, batch: &Batch, script: &Script) -> (String, String) {
        let (mut ok, mut errors) = (Vec::new(), Vec::new());
        for line in batch.input.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            let key = match self.api {
                Api::Gemini => v["key"].as_str().unwrap_or_default().to_owned(),
                Api::OpenAi => v["custom_id"].as_str().unwrap_or_default().to_owned(),
            };
            let row = row_of(&key);
            if script.expire.contains(&row) {
                if let Api::OpenAi = self.api {
                    errors.push(json!({"id": format!("batch_req_{row}"), "custom_id": key, "response": null,
                        "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}));
                }
                continue;
            }
            let line = match self.api {
                Api::Gemini if script.refuse.contains(&row) => {
                    json!({"key": key, "response": {"promptFeedback": {"blockReason": "SAFETY"}}})
                }
                Api::Gemini if script.fail.contains(&row) => {
                    json!({"key": key, "error": {"code": 13, "message": "Internal error encountered."}})
                }
                Api::Gemini => json!({"key": key, "response": {
                    "candidates": [{"content": {"role": "model", "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": png_for(row)}}]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1290},
                    "modelVersion": batch.model}}),
                Api::OpenAi if script.refuse.contains(&row) => {
                    json!({"id": format!("batch_req_{row}"), "custom_id": key, "response": {"status_code": 400, "request_id": "req_x",
                        "body": {"error": {"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error", "param": null, "code": "moderation_blocked"}}}, "error": null})
                }
                Api::OpenAi if script.fail.contains(&row) => {
                    json!({"id": format!("batch_req_{row}"), "custom_id": key, "response": {"status_code": 500, "request_id": "req_x",
                        "body": {"error": {"message": "The server had an error processing your request.", "type": "server_error", "param": null, "code": null}}}, "error": null})
                }
                Api::OpenAi => {
                    json!({"id": format!("batch_req_{row}"), "custom_id": key, "response": {"status_code": 200,
                    "request_id": format!("req_{row}"), "body": {"created": 1_713_833_628, "data": [{"b64_json": png_for(row)}],
                    "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}}}, "error": null})
                }
            };
            let failed =
                matches!(self.api, Api::OpenAi) && (script.refuse.contains(&row) || script.fail.contains(&row));
            if failed { errors.push(line) } else { ok.push(line) }
        }
        if let Api::OpenAi = self.api {
            // Output order is not input order.
            ok.reverse();
        }
        let join = |lines: Vec<Value>| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        (join(ok), join(errors))
    }

    /// The new batch's index and how late to answer; `None` when the input file is unknown.
    fn create(&self, name: String, model: String, file: &str) -> Option<(usize, Option<Duration>)> {
        let mut state = self.lock();
        let input = state.files.get(file).cloned()?;
        let index = state.batches.len();
        let id = match self.api {
            Api::Gemini => format!("batches/b{index}x{}", state.created),
            Api::OpenAi => format!("batch_{index}x{}", state.created),
        };
        state.batches.push(Batch {
            id,
            name,
            model,
            input,
            ..Batch::default()
        });
        state.created += 1;
        let delay = if state.created == 1 {
            state.script.slow_first_create
        } else {
            None
        };
        Some((index, delay))
    }

    fn gemini(&self, request: &Request, path: &str) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let command = request
            .headers
            .get("x-goog-upload-command")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if path == "/upload/v1beta/files" && command == "start" {
            let mut state = self.lock();
            let id = format!("in{}", state.files.len());
            state.files.insert(format!("files/{id}"), String::new());
            let url = format!(
                "{}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable",
                self.uri
            );
            return ResponseTemplate::new(200).insert_header("x-goog-upload-url", url.as_str());
        }
        if path == "/upload/v1beta/files" && command.contains("finalize") {
            let id = request
                .url
                .query_pairs()
                .find(|(k, _)| k == "upload_id")
                .map(|(_, v)| v.into_owned());
            let name = format!("files/{}", id.unwrap_or_default());
            let text = String::from_utf8_lossy(&request.body).into_owned();
            let size = text.len();
            self.lock().files.insert(name.clone(), text);
            return ResponseTemplate::new(200).set_body_json(json!({"file": {"name": name, "mimeType": "application/jsonl",
                "sizeBytes": size.to_string(), "state": "ACTIVE", "source": "UPLOADED", "uri": format!("{}/v1beta/{name}", self.uri)}}));
        }
        if let Some(rest) = path.strip_prefix("/v1beta/models/") {
            let (model, method) = rest.split_once(':').unwrap_or((rest, ""));
            if method == "generateContent" {
                self.lock().sync_calls += 1;
                return ResponseTemplate::new(200).set_body_json(json!({"candidates": [{"content": {"parts": [
                    {"inlineData": {"mimeType": "image/png", "data": png_for(0)}}]}, "finishReason": "STOP"}]}));
            }
            let name = body
                .pointer("/batch/display_name")
                .or(body.pointer("/batch/displayName"));
            let file = body
                .pointer("/batch/input_config/file_name")
                .or(body.pointer("/batch/inputConfig/fileName"));
            let (Some(name), Some(file)) = (name.and_then(Value::as_str), file.and_then(Value::as_str)) else {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "batch.display_name and batch.input_config.file_name are required",
                );
            };
            return match self.create(name.to_owned(), model.to_owned(), file) {
                None => error(400, "INVALID_ARGUMENT", "input file not found"),
                Some((index, delay)) => {
                    let operation = self.gemini_operation(index, "BATCH_STATE_PENDING", None);
                    let answer = ResponseTemplate::new(200).set_body_json(operation);
                    match delay {
                        Some(delay) => answer.set_delay(delay),
                        None => answer,
                    }
                }
            };
        }
        if let Some(id) = path.strip_prefix("/v1beta/").and_then(|p| p.strip_suffix(":cancel")) {
            let mut state = self.lock();
            let Some(batch) = state.batches.iter_mut().find(|b| b.id == id) else {
                return not_found();
            };
            batch.cancelled = true;
            return ResponseTemplate::new(200).set_body_json(json!({}));
        }
        if path == "/v1beta/batches" {
            let operations: Vec<Value> = {
                let count = self.lock().batches.len();
                (0..count)
                    .rev()
                    .map(|i| self.gemini_operation(i, "BATCH_STATE_RUNNING", None))
                    .collect()
            };
            return ResponseTemplate::new(200).set_body_json(json!({ "operations": operations }));
        }
        if let Some(id) = path.strip_prefix("/v1beta/") {
            let index = self.lock().batches.iter().position(|b| b.id == id);
            let Some(index) = index else { return not_found() };
            let (state, results) = self.advance(index);
            let file = results.map(|_| format!("files/batch-{}", id.trim_start_matches("batches/")));
            let spelled = format!("BATCH_STATE_{}", state.to_uppercase());
            return ResponseTemplate::new(200).set_body_json(self.gemini_operation(index, &spelled, file));
        }
        if let Some(file) = path.strip_prefix("/download/v1beta/files/batch-") {
            let id = format!("batches/{}", file.trim_end_matches(":download"));
            let state = self.lock();
            let Some(batch) = state.batches.iter().find(|b| b.id == id) else {
                return not_found();
            };
            let (ok, _) = batch.results.clone().unwrap_or_default();
            return ResponseTemplate::new(200).set_body_string(ok);
        }
        not_found()
    }

    fn gemini_operation(&self, index: usize, state: &str, file: Option<String>) -> Value {
        let guard = self.lock();
        let batch = &guard.batches[index];
        let count = batch.input.lines().count();
        let mut operation = json!({
            "name": batch.id,
            "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "model": format!("models/{}", batch.model), "displayName": batch.name,
                "batchStats": {"requestCount": count.to_string()}, "state": state, "name": batch.id},
        });
        if let Some(file) = file {
            operation["done"] = json!(true);
            operation["metadata"]["output"] = json!({"responsesFile": file});
            operation["response"] = json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                "responsesFile": file});
            operation["metadata"]["batchStats"]["successfulRequestCount"] = json!(count.to_string());
        }
        operation
    }

    fn openai(&self, request: &Request, path: &str) -> ResponseTemplate {
        if path == "/v1/images/generations" {
            self.lock().sync_calls += 1;
            return ResponseTemplate::new(200)
                .set_body_json(json!({"created": 1_713_833_628, "data": [{"b64_json": png_for(0)}]}));
        }
        if path == "/v1/files" && request.method.as_str() == "POST" {
            let Some(text) = multipart_file(request) else {
                return error(400, "invalid_request_error", "'file' is a required property");
            };
            let mut state = self.lock();
            let id = format!("file-in{}", state.files.len());
            let size = text.len();
            state.files.insert(id.clone(), text);
            return ResponseTemplate::new(200).set_body_json(json!({"id": id, "object": "file", "bytes": size,
                "created_at": 1_714_508_499, "filename": "batch.jsonl", "purpose": "batch"}));
        }
        if path == "/v1/batches" && request.method.as_str() == "POST" {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
            if body["endpoint"] != "/v1/images/generations" || body["completion_window"] != "24h" {
                return error(
                    400,
                    "invalid_request_error",
                    "endpoint and completion_window are required",
                );
            }
            let name = body
                .pointer("/metadata/imagepipe_batch")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let file = body["input_file_id"].as_str().unwrap_or_default();
            return match self.create(name.to_owned(), "gpt-image-1".into(), file) {
                None => error(400, "invalid_request_error", "input file not found"),
                Some((index, delay)) => {
                    let answer = ResponseTemplate::new(200).set_body_json(self.openai_batch(index, "validating", None));
                    match delay {
                        Some(delay) => answer.set_delay(delay),
                        None => answer,
                    }
                }
            };
        }
        if path == "/v1/batches" {
            let count = self.lock().batches.len();
            let data: Vec<Value> = (0..count)
                .rev()
                .map(|i| self.openai_batch(i, "in_progress", None))
                .collect();
            return ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": data,
                "first_id": data.first().map(|b| b["id"].clone()), "last_id": data.last().map(|b| b["id"].clone()), "has_more": false}));
        }
        if let Some(id) = path
            .strip_prefix("/v1/batches/")
            .and_then(|p| p.strip_suffix("/cancel"))
        {
            let index = {
                let mut state = self.lock();
                let Some(index) = state.batches.iter().position(|b| b.id == id) else {
                    return not_found();
                };
                state.batches[index].cancelled = true;
                index
            };
            return ResponseTemplate::new(200).set_body_json(self.openai_batch(index, "cancelling", None));
        }
        if let Some(id) = path.strip_prefix("/v1/batches/") {
            let index = self.lock().batches.iter().position(|b| b.id == id);
            let Some(index) = index else { return not_found() };
            let (state, results) = self.advance(index);
            let status = match state {
                "pending" => "validating",
                "running" => "in_progress",
                "succeeded" => "completed",
                other => other,
            };
            return ResponseTemplate::new(200).set_body_json(self.openai_batch(index, status, results));
        }
        if let Some(file) = path.strip_prefix("/v1/files/").and_then(|p| p.strip_suffix("/content")) {
            let state = self.lock();
            let found = state.batches.iter().find_map(|b| {
                let (ok, errors) = b.results.clone()?;
                if file == format!("file-out-{}", b.id) {
                    Some(ok)
                } else if file == format!("file-err-{}", b.id) {
                    Some(errors)
                } else {
                    None
                }
            });
            return match found {
                Some(text) => ResponseTemplate::new(200).set_body_string(text),
                None => not_found(),
            };
        }
        not_found()
    }

    fn openai_batch(&self, index: usize, status: &str, results: Option<(String, String)>) -> Value {
        let guard = self.lock();
        let batch = &guard.batches[index];
        let total = batch.input.lines().count();
        let (output, errors, failed) = match &results {
            Some((_, errors)) if !errors.is_empty() => (
                json!(format!("file-out-{}", batch.id)),
                json!(format!("file-err-{}", batch.id)),
                errors.lines().count(),
            ),
            Some(_) => (json!(format!("file-out-{}", batch.id)), json!(""), 0),
            None => (Value::Null, Value::Null, 0),
        };
        json!({"id": batch.id, "object": "batch", "endpoint": "/v1/images/generations", "errors": null,
            "input_file_id": "file-in", "completion_window": "24h", "status": status,
            "output_file_id": output, "error_file_id": errors, "created_at": 1_714_508_499,
            "request_counts": {"total": total, "completed": if results.is_some() { total - failed } else { 0 }, "failed": failed},
            "metadata": {"imagepipe_batch": batch.name}})
    }
}

/// The `file` part of a multipart/form-data body.
fn multipart_file(request: &Request) -> Option<String> {
    let content_type = request.headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let body = String::from_utf8_lossy(&request.body).into_owned();
    let purpose_batch = body.contains("name=\"purpose\"\r\n\r\nbatch\r\n");
    body.split(&format!("--{boundary}"))
        .find(|part| part.contains("name=\"file\"") && purpose_batch)
        .and_then(|part| part.split_once("\r\n\r\n"))
        .map(|(_, content)| content.trim_end_matches("\r\n").to_owned())
}
