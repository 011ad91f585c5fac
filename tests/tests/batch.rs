//! Batch mode against local stand-ins of the Gemini and OpenAI batch APIs: the clients' wire
//! format, and local runs end to end (chunks, polling, failed and expired rows, a creation that
//! answers too late, a run stopped and picked up again without a second batch).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use imagepipe::adapters::http_publish::http_client;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::report::RunReport;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::template::{Mode, TemplateSet};
use imagepipe::drivers::local::{CancellationToken, LocalBatch, LocalRun, Publishing, RunError};
use imagepipe::ports::batch::{BatchApi, BatchState};
use imagepipe::providers::gemini::GeminiProvider;
use imagepipe::providers::gemini_batch::GeminiBatch;
use imagepipe::providers::openai::OpenAiProvider;
use imagepipe::providers::openai_batch::OpenAiBatch;
use imagepipe::providers::{HttpProvider, ImageProvider, ImageRequest};
use imagepipe_tests::batch_stand_in::{self, Script, StandIn};

fn csv(rows: u64) -> String {
    let mut text = String::from("sku,name,color\n");
    for row in 1..=rows {
        text.push_str(&format!("SKU-{row},mug {row},red\n"));
    }
    text
}

fn request(prompt: &str) -> ImageRequest {
    ImageRequest {
        provider_model: "gemini-2.5-flash-image".into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: prompt.into(),
        size: imagepipe::domain::template::ImageSize::parse("1024x1024").unwrap(),
        references: vec![],
        seed: 1,
        timeout: Duration::from_secs(5),
    }
}

fn gemini_api(stand_in: &StandIn) -> GeminiBatch {
    GeminiBatch::new(http_client(Duration::from_secs(30)), &stand_in.uri(), "test-key")
}

fn openai_api(stand_in: &StandIn) -> OpenAiBatch {
    OpenAiBatch::new(http_client(Duration::from_secs(30)), &stand_in.uri(), "test-key")
}

/// Collects every result of a final batch.
async fn results(api: &dyn BatchApi, id: &str) -> (BatchState, Vec<(u64, Result<usize, String>)>) {
    let status = loop {
        let status = api.status(id).await.unwrap();
        if status.state.is_final() {
            break status;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reading = api.results(&status, tx);
    let collecting = async {
        let mut all = Vec::new();
        while let Some(result) = rx.recv().await {
            all.push((
                result.row,
                result.image.map(|i| i.bytes.len()).map_err(|e| e.to_string()),
            ));
        }
        all
    };
    let (read, mut all) = tokio::join!(reading, collecting);
    read.unwrap();
    all.sort_by_key(|(row, _)| *row);
    (status.state, all)
}

/// Creates a batch called `imagepipe-run-0` of `rows` requests for `model`.
async fn submitted(api: &dyn BatchApi, rows: u64, model: &str, quality: Option<&str>) -> String {
    let mut lines = String::new();
    for row in 1..=rows {
        let mut request = request(&format!("mug {row}"));
        request.provider_model = model.into();
        request.quality = quality.map(str::to_owned);
        lines.push_str(&api.line(row, &request).await.unwrap());
        lines.push('\n');
    }
    api.create(model, "imagepipe-run-0", lines).await.unwrap()
}

#[tokio::test]
async fn gemini_batches_go_up_as_a_file_and_results_are_matched_by_key() {
    let script = Script::rows(&[2], &[3], &[]);
    let stand_in = batch_stand_in::gemini(script).await;
    let api = gemini_api(&stand_in);
    let id = submitted(&api, 4, "gemini-2.5-flash-image", None).await;
    assert!(id.starts_with("batches/"), "{id}");
    let sent = stand_in.input_lines();
    assert_eq!(sent[0]["key"], "1");
    assert_eq!(sent[0]["request"]["generationConfig"]["responseModalities"][0], "IMAGE");
    assert_eq!(sent[0]["request"]["contents"][0]["parts"][0]["text"], "mug 1");
    assert_eq!(api.find("imagepipe-run-0").await.unwrap(), Some(id.clone()));
    assert_eq!(api.find("imagepipe-run-9").await.unwrap(), None);
    let (state, all) = results(&api, &id).await;
    assert_eq!(state, BatchState::Succeeded);
    assert_eq!(all.len(), 4);
    assert!(all[0].1.is_ok() && all[3].1.is_ok());
    let refused = all[1].1.as_ref().unwrap_err();
    assert!(refused.contains("blocked the prompt: SAFETY"), "{refused}");
    let failed = all[2].1.as_ref().unwrap_err();
    assert!(failed.contains("(13): Internal error"), "{failed}");
}

#[tokio::test]
async fn openai_batches_read_output_and_error_files_in_any_order() {
    let script = Script::rows(&[2], &[], &[4]);
    let stand_in = batch_stand_in::openai(script).await;
    let api = openai_api(&stand_in);
    let id = submitted(&api, 5, "gpt-image-1", Some("medium")).await;
    let sent = stand_in.input_lines();
    assert_eq!(
        (&sent[0]["custom_id"], &sent[0]["method"], &sent[0]["url"]),
        (&"1".into(), &"POST".into(), &"/v1/images/generations".into())
    );
    assert_eq!(sent[0]["body"]["model"], "gpt-image-1");
    assert_eq!(sent[0]["body"]["quality"], "medium");
    assert_eq!(api.find("imagepipe-run-0").await.unwrap(), Some(id.clone()));
    let (state, all) = results(&api, &id).await;
    assert_eq!(state, BatchState::Succeeded);
    assert_eq!(all.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(all[0].1.is_ok() && all[2].1.is_ok() && all[4].1.is_ok());
    assert!(all[1].1.as_ref().unwrap_err().contains("HTTP 400: moderation_blocked"));
    assert!(all[3].1.as_ref().unwrap_err().contains("batch_expired"));
    let with_reference = ImageRequest {
        references: vec!["https://cdn.example.com/a.png".into()],
        ..request("x")
    };
    assert!(
        api.line(9, &with_reference).await.is_err(),
        "edits go the synchronous way"
    );
}

fn batch_run(dir: &Path, rows: u64, stand_in: &StandIn, api: Arc<dyn BatchApi>, retry_failed: bool) -> LocalRun {
    let path = dir.join("in.csv");
    std::fs::write(&path, csv(rows)).unwrap();
    let mut template = TemplateSet::builtin().get("product").unwrap().clone();
    template.mode = Mode::Batch;
    let sync: Arc<dyn ImageProvider> = match api.name() {
        "openai" => Arc::new(OpenAiProvider::new(
            http_client(Duration::from_secs(30)),
            &stand_in.uri(),
            "test-key",
        )),
        _ => Arc::new(GeminiProvider::new(
            http_client(Duration::from_secs(30)),
            &stand_in.uri(),
            "test-key",
        )),
    };
    LocalRun {
        csv: path,
        model: Some(
            if api.name() == "openai" {
                "gpt-image-1"
            } else {
                "nano-banana"
            }
            .into(),
        ),
        template,
        catalog: Catalog::builtin(),
        provider: sync,
        signer: None,
        out_dir: dir.join("out"),
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(20),
        },
        timeout: Duration::from_secs(5),
        publish: Publishing::default(),
        batch: Some(LocalBatch {
            api,
            poll_every: Duration::from_millis(50),
            retry_failed,
            requests: 4,
            progress: Arc::new(|_| {}),
        }),
    }
}

async fn finished(run: &LocalRun) -> RunReport {
    tokio::time::timeout(Duration::from_secs(60), run.run(|_| {}))
        .await
        .expect("the run ends")
        .expect("the run finishes")
}

#[tokio::test]
async fn a_batch_run_makes_every_image_at_the_batch_price_in_chunks() {
    let stand_in = batch_stand_in::gemini(Script {
        polls_per_state: 2,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = batch_run(dir.path(), 10, &stand_in, Arc::new(gemini_api(&stand_in)), true);
    let report = finished(&run).await;
    assert_eq!((report.rows, report.succeeded, report.failed), (10, 10, 0));
    // 10 rows, 4 requests a batch: 3 batches, named by run and chunk; no synchronous call.
    assert_eq!(
        (
            stand_in.batches_created(),
            stand_in.batched_requests(),
            stand_in.sync_calls()
        ),
        (3, 10, 0)
    );
    let names = stand_in.batch_names();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&format!("imagepipe-{}-", report.run_id))),
        "{names:?}"
    );
    assert!(
        (report.actual_cost_usd - 10.0 * 0.0195).abs() < 1e-9,
        "{}",
        report.actual_cost_usd
    );
    assert_eq!(report.mode, Mode::Batch);
    assert!((report.sync_cost_usd.unwrap() - 10.0 * 0.039).abs() < 1e-9);
    assert!(
        (report.estimated_cost_usd - 10.0 * 0.0195).abs() < 1e-9,
        "estimated at the batch price"
    );
    let page = std::fs::read_to_string(dir.path().join(format!("out/runs/{}/report.html", report.run_id))).unwrap();
    assert!(
        page.contains("with synchronous calls") && page.contains("$0.3900"),
        "the page shows both prices"
    );
    let images = std::fs::read_dir(dir.path().join("out/images/product"))
        .unwrap()
        .count();
    assert_eq!(images, 10);
    let done = std::fs::read_dir(dir.path().join(format!("out/runs/{}/batches/done", report.run_id)))
        .unwrap()
        .count();
    assert_eq!(done, 3, "each chunk's record is kept with the run");
}

#[tokio::test]
async fn rows_a_batch_failed_or_let_expire_go_the_synchronous_way_and_refusals_fail() {
    let stand_in = batch_stand_in::openai(Script::rows(&[1], &[2], &[3])).await;
    let dir = tempfile::tempdir().unwrap();
    let run = batch_run(dir.path(), 6, &stand_in, Arc::new(openai_api(&stand_in)), true);
    let report = finished(&run).await;
    assert_eq!((report.succeeded, report.failed), (5, 1), "{:?}", report.failures);
    assert!(
        report.failures[0].reason.contains("moderation_blocked"),
        "{:?}",
        report.failures
    );
    assert_eq!(stand_in.sync_calls(), 2, "rows 2 (failed) and 3 (expired), once each");
}

#[tokio::test]
async fn with_retries_off_failed_and_expired_rows_fail_with_the_providers_reason() {
    let stand_in = batch_stand_in::gemini(Script::rows(&[], &[2], &[3])).await;
    let dir = tempfile::tempdir().unwrap();
    let run = batch_run(dir.path(), 4, &stand_in, Arc::new(gemini_api(&stand_in)), false);
    let report = finished(&run).await;
    assert_eq!((report.succeeded, report.failed), (2, 2));
    let reasons: Vec<&str> = report.failures.iter().map(|f| f.reason.as_str()).collect();
    assert!(
        reasons[0].contains("gemini batch request failed (13): Internal error"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("without a result for this row"), "{reasons:?}");
    assert_eq!(stand_in.sync_calls(), 0);
}

#[tokio::test]
async fn an_expired_batch_sends_its_rows_the_synchronous_way_once() {
    let stand_in = batch_stand_in::gemini(Script {
        expire_batches: true,
        ..Script::rows(&[], &[], &[2, 3])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = batch_run(dir.path(), 4, &stand_in, Arc::new(gemini_api(&stand_in)), true);
    let report = finished(&run).await;
    assert_eq!((report.succeeded, report.failed), (4, 0));
    assert_eq!(stand_in.sync_calls(), 2, "only the rows the batch did not make");
    // Two at the batch price, two at the synchronous price.
    assert!(
        (report.actual_cost_usd - (2.0 * 0.0195 + 2.0 * 0.039)).abs() < 0.002,
        "{}",
        report.actual_cost_usd
    );
}

#[tokio::test]
async fn a_creation_answered_too_late_is_found_not_created_again() {
    let stand_in = batch_stand_in::gemini(Script {
        slow_first_create: Some(Duration::from_secs(3)),
        polls_per_state: 1,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let api = gemini_api(&stand_in).with_call_time(Duration::from_millis(500));
    let run = batch_run(dir.path(), 3, &stand_in, Arc::new(api), true);
    let report = finished(&run).await;
    assert_eq!(report.succeeded, 3);
    assert_eq!(
        stand_in.batches_created(),
        1,
        "the timed-out creation was looked up, not repeated"
    );
}

#[tokio::test]
async fn a_stopped_batch_run_is_picked_up_again_without_submitting_twice() {
    let stand_in = batch_stand_in::gemini(Script {
        polls_per_state: 4,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = batch_run(dir.path(), 6, &stand_in, Arc::new(gemini_api(&stand_in)), true);
    let interrupt = CancellationToken::new();
    let stop = interrupt.clone();
    let watched = stand_in.clone();
    tokio::spawn(async move {
        while watched.batches_created() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    });
    let first = run.run_until(|_| {}, &interrupt).await;
    assert!(matches!(first, Err(RunError::Paused { .. })), "{first:?}");
    assert_eq!(stand_in.batches_created(), 2);
    let report = finished(&run).await;
    assert_eq!((report.succeeded, report.failed), (6, 0));
    assert_eq!(
        stand_in.batches_created(),
        2,
        "the second run picked up the batches of the first"
    );
    // Picked up again once more: every chunk is done; outcomes come from the stored images.
    let again = finished(&run).await;
    assert_eq!((again.succeeded, again.failed, again.actual_cost_usd), (6, 0, 0.0));
    assert_eq!((stand_in.batches_created(), stand_in.sync_calls()), (2, 0));
}

#[tokio::test]
async fn a_model_without_a_batch_price_is_refused_before_anything_is_sent() {
    let stand_in = batch_stand_in::gemini(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = batch_run(dir.path(), 2, &stand_in, Arc::new(gemini_api(&stand_in)), true);
    run.model = Some("seedream-4".into());
    let error = run.run(|_| {}).await.unwrap_err().to_string();
    assert!(error.contains("\"seedream-4\" has no batch price"), "{error}");
    assert!(error.contains("nano-banana"), "{error}");
    assert_eq!(stand_in.batches_created(), 0);
}

#[tokio::test]
async fn results_are_read_line_by_line_across_reads_whatever_the_line_ends() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let line = |row: u64| {
        serde_json::json!({"key": row.to_string(), "response": {"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": batch_stand_in::png_for(row)}}]}}]}})
        .to_string()
    };
    // Blank lines, CRLF-free JSONL, a last line without its end, and a line larger than a read.
    let big = "x".repeat(300_000);
    let body = format!(
        "{}\n\n{}\n{{\"key\":\"3\",\"error\":{{\"code\":3,\"message\":\"{big}\"}}}}\n{}",
        line(1),
        line(2),
        line(4)
    );
    Mock::given(path("/download/v1beta/files/batch-x:download"))
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .mount(&server)
        .await;
    let api = GeminiBatch::new(http_client(Duration::from_secs(30)), &server.uri(), "test-key");
    let status = imagepipe::ports::batch::BatchStatus {
        state: BatchState::Succeeded,
        total: None,
        done: None,
        failed: None,
        results: vec!["files/batch-x".into()],
        message: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reading = tokio::spawn(async move { api.results(&status, tx).await });
    let mut rows = Vec::new();
    while let Some(result) = rx.recv().await {
        rows.push((result.row, result.image.is_ok()));
    }
    reading.await.unwrap().unwrap();
    assert_eq!(rows, vec![(1, true), (2, true), (3, false), (4, true)]);
}

#[tokio::test]
async fn a_batch_is_cancelled_through_each_api() {
    let gemini = batch_stand_in::gemini(Script::rows(&[], &[], &[])).await;
    let api = gemini_api(&gemini);
    let id = submitted(&api, 2, "gemini-2.5-flash-image", None).await;
    api.cancel(&id).await.unwrap();
    assert_eq!(api.status(&id).await.unwrap().state, BatchState::Cancelled);
    let openai = batch_stand_in::openai(Script::rows(&[], &[], &[])).await;
    let api = openai_api(&openai);
    let id = submitted(&api, 2, "gpt-image-1", None).await;
    api.cancel(&id).await.unwrap();
    assert_eq!(api.status(&id).await.unwrap().state, BatchState::Cancelled);
}
