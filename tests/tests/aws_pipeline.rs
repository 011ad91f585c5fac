//! The serverless pipeline end to end at the handler level: S3 upload → splitter → jobs queue →
//! generator → events queue (+ jobs DLQ) → finalizer, on the local AWS emulator, with the CMS and
//! Slack as local HTTP servers. Queues are driven like the Lambda event source mapping: receive a
//! batch, call the handler, delete what it did not report as failed.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::QueueAttributeName;
use imagepipe::adapters::http_publish::{HttpCms, SlackWebhook, http_client};
use imagepipe::domain::locations::Locations;
use imagepipe::domain::report::RunReport;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::rows::InvalidRow;
use imagepipe::drivers::config::Config;
use imagepipe::drivers::lambda::AwsClients;
use imagepipe::ports::ledger::{Advance, Checkpoint, RunLedger, RunRecord, SplitTotals};
use imagepipe::providers::ProviderError;
use imagepipe::providers::testing::{Script, ScriptedProvider};
use imagepipe::usecase::deliver::Providers;
use imagepipe::usecase::record::Recorder;
use lambda_runtime::{Context, LambdaEvent};
use wiremock::matchers::{header, method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CMS_TOKEN: &str = "cms-secret-token";
const MAX_RECEIVE_COUNT: u32 = 3;

struct Stack {
    clients: AwsClients,
    bucket: String,
    jobs: String,
    jobs_dlq: String,
    events: String,
    split_queue: String,
    splitter: splitter::handler::Deps,
    generator: generator::handler::Deps,
    finalizer: finalizer::handler::Deps,
    provider: Arc<ScriptedProvider>,
    cms: MockServer,
    slack: MockServer,
}

impl Stack {
    async fn new(provider: ScriptedProvider, extra: &[(&str, &str)]) -> Self {
        let clients = support::clients();
        let bucket = support::bucket(&clients).await;
        let (jobs, jobs_dlq) = support::queue_with_dlq(&clients, "jobs", MAX_RECEIVE_COUNT).await;
        // Failed finalizer records come back after a second, not the default 30.
        let events = support::queue(
            &clients,
            "events",
            HashMap::from([(QueueAttributeName::VisibilityTimeout, "1".into())]),
        )
        .await;
        let split_queue = support::queue(&clients, "split", HashMap::new()).await;
        let table = support::table(&clients).await;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("IMAGEPIPE_BUCKET".into(), bucket.clone()),
            ("LEDGER_TABLE".into(), table),
            ("JOBS_QUEUE_URL".into(), jobs.clone()),
            ("EVENTS_QUEUE_URL".into(), events.clone()),
            ("SPLIT_QUEUE_URL".into(), split_queue.clone()),
            ("JOBS_MAX_RECEIVE_COUNT".into(), MAX_RECEIVE_COUNT.to_string()),
        ]);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        let provider = Arc::new(provider);
        let mut generator = generator::handler::Deps::new(&clients, config.clone()).unwrap();
        generator.generator.providers = Providers::with(provider.clone());
        generator.generator.backoff = RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::ZERO,
            cap: Duration::ZERO,
        };
        let (cms, slack) = (MockServer::start().await, MockServer::start().await);
        let client = http_client(Duration::from_secs(5));
        let finalizer = finalizer::handler::Deps {
            recorder: Recorder {
                ledger: imagepipe::drivers::lambda::ledger(&clients, &config),
                store: imagepipe::adapters::s3_store::S3ObjectStore::new(clients.s3.clone(), &bucket),
                cms: Some(HttpCms::new(client.clone(), &cms.uri(), CMS_TOKEN)),
                notifier: Some(SlackWebhook::new(
                    client,
                    &format!("{}/services/T0/B0/secret", slack.uri()),
                )),
                locations: Locations::bucket(&bucket, Some("https://cdn.example.test".into())),
                links: Some(Arc::new(imagepipe::adapters::s3_store::S3Signer::new(
                    clients.s3.clone(),
                    Duration::from_secs(3600),
                ))),
                cms_max_attempts: 3,
                notify_retry: RetryPolicy {
                    max_attempts: 2,
                    base: Duration::from_millis(10),
                    cap: Duration::from_millis(10),
                },
                notify_best_effort: false,
                silence: config.reconcile_silence,
                max_run_cost_usd: config.max_run_cost_usd,
            },
        };
        Self {
            splitter: splitter::handler::Deps::new(&clients, config).unwrap(),
            clients,
            bucket,
            jobs,
            jobs_dlq,
            events,
            split_queue,
            generator,
            finalizer,
            provider,
            cms,
            slack,
        }
    }

    async fn upload(&self, key: &str, csv: &str) -> serde_json::Value {
        let put = self
            .clients
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(csv.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
        let mut event: serde_json::Value = serde_json::from_str(include_str!("../../events/s3-put.json")).unwrap();
        let object = &mut event["Records"][0]["s3"];
        object["bucket"]["name"] = self.bucket.clone().into();
        object["object"]["key"] = key.replace('/', "%2F").replace(' ', "+").into();
        object["object"]["eTag"] = put.e_tag().unwrap().trim_matches('"').into();
        event
    }

    async fn split(&self, event: serde_json::Value) -> Vec<splitter::handler::Outcome> {
        let outcomes = splitter::handler::handle(&self.splitter, LambdaEvent::new(event, context()))
            .await
            .unwrap();
        serde_json::from_value(outcomes).unwrap()
    }

    /// One splitter invocation on the continuations queued; false when there were none.
    async fn continue_once(&self) -> bool {
        let event = support::receive(&self.clients, &self.split_queue).await;
        if event.records.is_empty() {
            return false;
        }
        let response = self
            .invoke_sqs(&event, |e| splitter::handler::handle(&self.splitter, e))
            .await;
        support::delete_except(&self.clients, &self.split_queue, &event, &failed_ids(&response)).await;
        true
    }

    async fn invoke_sqs<F, Fut>(&self, event: &SqsEvent, handler: F) -> aws_lambda_events::event::sqs::SqsBatchResponse
    where
        F: FnOnce(LambdaEvent<serde_json::Value>) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, lambda_runtime::Error>>,
    {
        let payload = serde_json::to_value(event).unwrap();
        serde_json::from_value(handler(LambdaEvent::new(payload, context())).await.unwrap()).unwrap()
    }

    /// One generator invocation on what the jobs queue holds; false when it was empty.
    async fn generate_once(&self) -> bool {
        let event = support::receive(&self.clients, &self.jobs).await;
        if event.records.is_empty() {
            return false;
        }
        let response = generator::handler::handle(&self.generator, LambdaEvent::new(event.clone(), context()))
            .await
            .unwrap();
        support::delete_except(&self.clients, &self.jobs, &event, &failed_ids(&response)).await;
        true
    }

    /// One finalizer invocation per queue it consumes; false when both were empty.
    async fn finalize_once(&self) -> bool {
        let mut worked = false;
        for url in [&self.events, &self.jobs_dlq] {
            let event: SqsEvent = support::receive(&self.clients, url).await;
            if event.records.is_empty() {
                continue;
            }
            worked = true;
            let response = self
                .invoke_sqs(&event, |e| finalizer::handler::handle(&self.finalizer, e))
                .await;
            support::delete_except(&self.clients, url, &event, &failed_ids(&response)).await;
        }
        worked
    }

    /// Runs one generator and `finalizers` concurrent finalizers until every queue is empty.
    async fn drain(&self, finalizers: usize) {
        let started = Instant::now();
        let mut idle_rounds = 0;
        while idle_rounds < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the pipeline did not drain"
            );
            let finalizing = futures::future::join_all((0..finalizers).map(|_| self.finalize_once()));
            let (continued, generated, finalized) =
                tokio::join!(self.continue_once(), self.generate_once(), finalizing);
            let busy = continued || generated || finalized.contains(&true);
            let queued = support::depth(&self.clients, &self.jobs).await
                + support::depth(&self.clients, &self.split_queue).await
                + support::depth(&self.clients, &self.events).await
                + support::depth(&self.clients, &self.jobs_dlq).await;
            idle_rounds = if busy || queued > 0 { 0 } else { idle_rounds + 1 };
            if !busy {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn report(&self, run_id: &str) -> RunReport {
        serde_json::from_str(&self.object(&format!("runs/{run_id}/report.json")).await).unwrap()
    }

    async fn object(&self, key: &str) -> String {
        let object = self
            .clients
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key} is missing: {e:?}"));
        String::from_utf8(object.body.collect().await.unwrap().into_bytes().to_vec()).unwrap()
    }

    async fn images(&self) -> Vec<String> {
        let listed = self
            .clients
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix("images/")
            .send()
            .await
            .unwrap();
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    async fn slack_texts(&self) -> Vec<String> {
        support::slack_texts(&self.slack).await
    }

    async fn cms_patches(&self) -> Vec<String> {
        let requests = self.cms.received_requests().await.unwrap_or_default();
        requests.iter().map(|r| r.url.path().to_owned()).collect()
    }
}

fn context() -> Context {
    let mut context = Context::default();
    context.deadline = imagepipe::domain::events::now_ms() + 120_000;
    context
}

fn failed_ids(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

async fn cms_accepts(cms: &MockServer) {
    Mock::given(method("PATCH"))
        .and(path_regex("^/api/products/SKU-[0-9]+$"))
        .and(header("authorization", format!("Bearer {CMS_TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200))
        .mount(cms)
        .await;
}

async fn slack_accepts(slack: &MockServer) {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(slack)
        .await;
}

#[tokio::test]
async fn a_clean_csv_becomes_stored_images_cms_updates_and_one_completion_message() {
    // The three functions' metrics, recorded in this process as each function records them.
    static METRICS: std::sync::OnceLock<imagepipe::ports::metrics::Emf> = std::sync::OnceLock::new();
    let metrics = METRICS.get_or_init(|| imagepipe::ports::metrics::Emf::install("pipeline-test").unwrap());
    let stack = Stack::new(ScriptedProvider::default(), &[]).await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;

    let event = stack
        .upload(
            "incoming/product_hero/spring launch.csv",
            include_str!("../../events/products.csv"),
        )
        .await;
    let split = stack.split(event.clone()).await;
    assert_eq!(
        (split[0].jobs_sent, split[0].invalid_rows, split[0].duplicate),
        (5, 0, false)
    );
    stack.drain(1).await;

    let run_id = &split[0].run_id;
    let report = stack.report(run_id).await;
    assert_eq!(
        (report.rows, report.succeeded, report.failed, report.invalid),
        (5, 5, 0, 0)
    );
    assert_eq!((report.template.as_str(), report.cms_updated), ("product_hero", 5));
    assert_eq!(
        report.source,
        format!("s3://{}/incoming/product_hero/spring launch.csv", stack.bucket)
    );
    let mut images = stack.images().await;
    images.sort();
    assert_eq!(
        images,
        (1001..=1005)
            .map(|n| format!("images/product_hero/SKU-{n}.png"))
            .collect::<Vec<_>>()
    );
    let head = stack
        .clients
        .s3
        .head_object()
        .bucket(&stack.bucket)
        .key(&images[0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (head.content_type(), head.cache_control()),
        (Some("image/png"), Some("public, max-age=31536000"))
    );
    let metadata = head.metadata().unwrap();
    assert_eq!(metadata.get("run-id"), Some(run_id));
    assert_eq!(metadata.get("prompt-sha256").map(String::len), Some(64));
    let mut patched = stack.cms_patches().await;
    patched.sort();
    assert_eq!(
        patched,
        (1001..=1005)
            .map(|n| format!("/api/products/SKU-{n}"))
            .collect::<Vec<_>>()
    );
    let texts = stack.slack_texts().await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[0].contains("started: 5 images"), "{}", texts[0]);
    assert!(texts[1].contains("5/5 succeeded, 0 failed, 0 invalid"), "{}", texts[1]);
    assert!(texts.iter().all(|t| !t.contains("secret")));
    let page = stack.object(&format!("runs/{run_id}/report.html")).await;
    assert_eq!(
        page.matches("<img loading=\"lazy\" src=\"https://cdn.example.test/images/product_hero/SKU-")
            .count(),
        5
    );
    assert!(page.contains("img-src https://cdn.example.test;"), "{page}");
    assert!(
        page.contains(&format!("/runs/{run_id}/results.csv?")),
        "results.csv is presigned"
    );
    let link = texts[1].lines().last().unwrap().strip_prefix("Report: ").unwrap();
    assert!(
        link.contains(&format!("/runs/{run_id}/report.html?")) && link.contains("X-Amz-Signature="),
        "{link}"
    );

    // The same S3 event again (at-least-once delivery) starts nothing new.
    let again = stack.split(event).await;
    assert!(again[0].duplicate);
    assert_eq!(again[0].run_id, *run_id);
    stack.drain(1).await;
    assert_eq!(stack.provider.total_calls(), 5);
    assert_eq!(stack.slack_texts().await.len(), 2);
    let mut emf = Vec::new();
    metrics.flush(&mut emf).unwrap();
    let recorded = imagepipe_tests::emf::metrics(&String::from_utf8(emf).unwrap()).unwrap();
    let total = |name: &str| -> f64 {
        let of_run = |m: &&imagepipe_tests::emf::Metric| {
            m.name == name && m.dimensions.contains(&("template".into(), "product_hero".into()))
        };
        recorded.iter().filter(of_run).flat_map(|m| m.values.iter()).sum()
    };
    // Other tests of this binary may add to the same series while this one runs.
    assert!(total("JobsSent") >= 5.0, "{recorded:?}");
    assert!(total("ImagesSucceeded") >= 5.0, "{recorded:?}");
    assert!(total("RunsCompleted") >= 1.0, "{recorded:?}");
    assert!(recorded.iter().all(|m| m.namespace == "imagepipe"));
}

#[tokio::test]
async fn faults_leave_every_row_exactly_one_outcome_no_second_charge_and_one_completion() {
    let provider = ScriptedProvider::default()
        .on(
            "Trail running shoe",
            Script::FailTimes(
                1,
                ProviderError::RateLimited {
                    retry_after: Some(Duration::ZERO),
                    message: "429 Too Many Requests".into(),
                },
            ),
        )
        .on(
            "Leather weekender",
            Script::Always(ProviderError::Unavailable {
                message: "HTTP 503".into(),
            }),
        )
        .on(
            "Ceramic pour-over",
            Script::Always(ProviderError::Rejected {
                message: "safety system refused".into(),
            }),
        );
    // A short provider timeout keeps the lease short: the duplicate delivery checks back after it.
    let stack = Stack::new(provider, &[("PROVIDER_TIMEOUT_SECS", "1")]).await;
    // The CMS is down for its first two requests.
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html>maintenance</html>"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&stack.cms)
        .await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;

    let event = stack
        .upload(
            "incoming/product_hero/errors.csv",
            include_str!("../../events/products-with-errors.csv"),
        )
        .await;
    let split = stack.split(event).await;
    assert_eq!((split[0].jobs_sent, split[0].invalid_rows), (5, 3));
    // Before any generator runs: one job is delivered twice, one dies (as if its generator crashed on every delivery).
    let mut seen = 0;
    while seen < 5 {
        let batch = support::receive(&stack.clients, &stack.jobs).await;
        for record in &batch.records {
            seen += 1;
            let body = record.body.clone().unwrap();
            let target = if body.contains("Merino") {
                &stack.jobs_dlq
            } else {
                &stack.jobs
            };
            stack
                .clients
                .sqs
                .send_message()
                .queue_url(target)
                .message_body(&body)
                .send()
                .await
                .unwrap();
            if body.contains("Bluetooth") {
                stack
                    .clients
                    .sqs
                    .send_message()
                    .queue_url(&stack.jobs)
                    .message_body(&body)
                    .send()
                    .await
                    .unwrap();
            }
        }
        support::delete_except(&stack.clients, &stack.jobs, &batch, &[]).await;
    }
    stack.drain(2).await;

    let report = stack.report(&split[0].run_id).await;
    assert_eq!(
        (report.rows, report.succeeded, report.failed, report.invalid),
        (8, 2, 3, 3)
    );
    let reasons: Vec<(u64, &str)> = report.failures.iter().map(|f| (f.row, f.reason.as_str())).collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons[0].1.contains("HTTP 503") && reasons[0].1.contains("gave up after 3 attempts"),
        "{reasons:?}"
    );
    assert!(reasons[1].1.contains("safety system refused"), "{reasons:?}");
    assert!(reasons[2].1.contains("dead-letter queue"), "{reasons:?}");
    assert_eq!(
        (report.cms_updated, report.cms_failures.len()),
        (2, 0),
        "the CMS outage was ridden out"
    );
    // Paid once per image: the 429 row twice (one refused call), the duplicate delivery not at all.
    assert_eq!(stack.provider.calls_for("Bluetooth speaker"), 1);
    assert_eq!(stack.provider.calls_for("Trail running shoe"), 2);
    assert_eq!(stack.provider.calls_for("Leather weekender"), MAX_RECEIVE_COUNT);
    assert_eq!(stack.provider.calls_for("Ceramic pour-over"), 1);
    assert_eq!(stack.provider.calls_for("Merino"), 0);
    let completions: Vec<String> = stack
        .slack_texts()
        .await
        .into_iter()
        .filter(|t| t.contains("finished"))
        .collect();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert!(
        completions[0].contains("2/8 succeeded, 3 failed, 3 invalid"),
        "{}",
        completions[0]
    );
    assert!(completions[0].contains("row 7 invalid"), "{}", completions[0]);
}

#[tokio::test]
async fn a_run_over_budget_sends_no_job_and_is_reported_as_rejected() {
    let stack = Stack::new(ScriptedProvider::default(), &[("MAX_RUN_COST_USD", "0.10")]).await;
    slack_accepts(&stack.slack).await;
    let event = stack
        .upload(
            "incoming/product_hero/big.csv",
            include_str!("../../events/products.csv"),
        )
        .await;
    let split = stack.split(event).await;
    assert_eq!(split[0].jobs_sent, 0);
    assert!(
        split[0]
            .rejected
            .as_deref()
            .unwrap()
            .contains("over the run budget of $0.10"),
        "{split:?}"
    );
    assert_eq!(support::depth(&stack.clients, &stack.jobs).await, 0);
    stack.drain(1).await;
    let report = stack.report(&split[0].run_id).await;
    assert_eq!((report.rows, report.succeeded, report.failed), (5, 0, 5));
    assert!(report.rejected.is_some());
    assert_eq!(stack.provider.total_calls(), 0);
    let texts = stack.slack_texts().await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("Rejected, nothing generated: estimated cost"),
        "{}",
        texts[0]
    );
}

#[tokio::test]
async fn a_scheduled_run_names_its_csv_template_and_model_and_unknown_templates_are_reported() {
    let stack = Stack::new(ScriptedProvider::default(), &[]).await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    stack
        .upload("catalog/products.csv", include_str!("../../events/products.csv"))
        .await;
    let scheduled = serde_json::json!({
        "csv": format!("s3://{}/catalog/products.csv", stack.bucket),
        "template": "product",
        "model": "placeholder",
    });
    let split = stack.split(scheduled).await;
    assert_eq!(split[0].jobs_sent, 5);
    // No template in the key or the event: the run is rejected with a reason the user sees.
    let event = stack.upload("incoming/loose.csv", "sku,name\nA,b\n").await;
    let rejected = stack.split(event).await;
    assert!(
        rejected[0].rejected.as_deref().unwrap().starts_with("no template"),
        "{rejected:?}"
    );
    stack.drain(1).await;

    let report = stack.report(&split[0].run_id).await;
    assert_eq!(
        (report.template.as_str(), report.model.as_str(), report.succeeded),
        ("product", "placeholder", 5)
    );
    assert!(stack.images().await.iter().all(|k| k.starts_with("images/product/")));
    let texts = stack.slack_texts().await;
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Rejected, nothing generated: no template")),
        "{texts:?}"
    );
}

#[tokio::test]
async fn a_csv_over_the_row_limit_is_refused_with_a_message_before_any_job() {
    let stack = Stack::new(ScriptedProvider::default(), &[("MAX_ROWS_PER_RUN", "4")]).await;
    slack_accepts(&stack.slack).await;
    let event = stack
        .upload(
            "incoming/product_hero/big.csv",
            include_str!("../../events/products.csv"),
        )
        .await;
    let split = stack.split(event).await;
    assert_eq!(split[0].jobs_sent, 0);
    let reason = split[0].rejected.as_deref().unwrap();
    assert!(
        reason.contains("has 5 rows; one run takes at most 4 (MAX_ROWS_PER_RUN)"),
        "{reason}"
    );
    stack.drain(1).await;
    assert_eq!(stack.report(&split[0].run_id).await.failed, 5);
}

#[tokio::test]
async fn the_sample_finalizer_batch_records_each_outcome_once_and_completes_its_run() {
    let stack = Stack::new(ScriptedProvider::default(), &[]).await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    let run_id = "run-5f0c2a1d9e8b7c6a";
    let ledger = &stack.finalizer.recorder.ledger;
    let run = RunRecord::new(
        run_id,
        "s3://imagepipe-example/incoming/product/p.csv",
        "e",
        "product",
        "placeholder",
        "placeholder",
        imagepipe::domain::events::now_ms(),
    );
    ledger.create_run(&run).await.unwrap();
    let invalid = InvalidRow {
        row: 4,
        reason: "column \"color\" is empty".into(),
    };
    ledger.record_invalid(run_id, &[invalid]).await.unwrap();
    let totals = SplitTotals {
        rows: 4,
        header_bytes: 20,
        awaited: 3,
        invalid: 1,
        estimated_cost_usd: 0.0,
        rejected: None,
    };
    ledger.set_totals(run_id, &totals).await.unwrap();
    let start = Checkpoint::default();
    let split = Advance {
        from: start,
        to: Checkpoint { sent: 3, ..start },
        finished: true,
    };
    assert!(ledger.advance(run_id, split).await.unwrap());
    let event: SqsEvent = serde_json::from_str(include_str!("../../events/sqs-events.json")).unwrap();
    for _ in 0..2 {
        // Delivered twice: the second delivery changes nothing.
        let response = stack
            .invoke_sqs(&event, |e| finalizer::handler::handle(&stack.finalizer, e))
            .await;
        assert!(response.batch_item_failures.is_empty());
    }
    let report = stack.report(run_id).await;
    assert_eq!(
        (report.rows, report.succeeded, report.failed, report.invalid),
        (4, 1, 2, 1)
    );
    assert!(
        report.failures[1].reason.contains("dead-letter queue"),
        "{:?}",
        report.failures
    );
    assert_eq!(stack.cms_patches().await, vec!["/api/products/SKU-1001"]);
    let texts = stack.slack_texts().await;
    assert_eq!(texts.iter().filter(|t| t.contains("finished")).count(), 1, "{texts:?}");
}

#[tokio::test]
async fn refused_credentials_halt_the_run_across_generators_and_the_rest_is_not_attempted() {
    let unauthorized = ProviderError::Unauthorized {
        message: "HTTP 401: API key not valid".into(),
    };
    let stack = Stack::new(
        ScriptedProvider::default().on("Product", Script::Always(unauthorized)),
        &[],
    )
    .await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    let mut csv = String::from("sku,name,color\n");
    for n in 1..=120 {
        csv.push_str(&format!("SKU-{n},Product {n},red\n"));
    }
    let event = stack.upload("incoming/product/many.csv", &csv).await;
    let split = stack.split(event).await;
    assert_eq!(split[0].jobs_sent, 120);
    stack.drain(3).await;

    let report = stack.report(&split[0].run_id).await;
    assert_eq!((report.rows, report.succeeded, report.failed), (120, 0, 120));
    let calls = stack.provider.total_calls();
    assert!(
        calls <= 30,
        "the provider was called {calls} times after the first refusal"
    );
    assert!(
        report
            .stopped
            .as_deref()
            .unwrap_or_default()
            .contains("refused the credentials"),
        "{report:?}"
    );
    let not_attempted = report
        .failure_reasons
        .iter()
        .find(|r| r.reason.starts_with("not attempted"))
        .unwrap();
    assert_eq!(not_attempted.rows, 120 - u64::from(calls));
    let texts = stack.slack_texts().await;
    let finished: Vec<&String> = texts.iter().filter(|t| t.contains("finished")).collect();
    assert_eq!(finished.len(), 1, "{texts:?}");
    assert!(
        finished[0].contains("Stopped: provider refused the credentials"),
        "{finished:?}"
    );
}

#[tokio::test]
async fn the_deployments_own_templates_and_models_drive_a_run_and_a_broken_file_rejects_it_with_its_line() {
    let stack = Stack::new(ScriptedProvider::default(), &[]).await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    let put = |key: &'static str, text: &'static str| {
        let s3 = stack.clients.s3.clone();
        let bucket = stack.bucket.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(text.as_bytes().to_vec().into())
                .send()
                .await
                .unwrap();
        }
    };
    put(
        "config/templates.toml",
        "[templates.house]\nprompt = \"House style shot of {name}\"\nmodel = \"house-model\"\nkey = \"{sku}\"\n",
    )
    .await;
    put(
        "config/models.toml",
        "prices_as_of = \"2026-12-01\"\n[models.house-model]\nprovider = \"placeholder\"\n\
         provider_model = \"placeholder\"\nprice_per_image = 0.25\n",
    )
    .await;
    let event = stack
        .upload("incoming/house/items.csv", "sku,name\nSKU-1,Lamp\nSKU-2,Chair\n")
        .await;
    let split = stack.split(event).await;
    assert_eq!((split[0].jobs_sent, split[0].rejected.as_deref()), (2, None));
    // Editing the files mid-run changes nothing for the run.
    put(
        "config/templates.toml",
        "[templates.house]\nprompt = \"Changed {name}\"\nmodel = \"m\"\nkey = \"{sku}\"\n",
    )
    .await;
    stack.drain(1).await;
    let report = stack.report(&split[0].run_id).await;
    assert_eq!((report.succeeded, report.model.as_str()), (2, "house-model"));
    assert_eq!(report.estimated_cost_usd, 0.5);
    assert_eq!(stack.provider.calls_for("House style shot of "), 2);

    put(
        "config/templates.toml",
        "[templates.house]\nprompt = \"x {name}\"\nkey = \n",
    )
    .await;
    let event = stack.upload("incoming/house/more.csv", "sku,name\nSKU-3,Desk\n").await;
    let rejected = stack.split(event).await;
    let reason = rejected[0].rejected.as_deref().unwrap();
    assert!(
        reason.contains("config/templates.toml") && reason.contains("line 3"),
        "{reason}"
    );
    stack.drain(1).await;
    let texts = stack.slack_texts().await;
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Rejected") && t.contains("config/templates.toml")),
        "{texts:?}"
    );
}

#[tokio::test]
async fn a_redrive_sends_only_the_failed_rows_again_and_completes_the_run_once_more() {
    let flaky = ProviderError::Unavailable {
        message: "HTTP 503".into(),
    };
    // Fails every delivery of the first run (3), then recovers.
    let stack = Stack::new(
        ScriptedProvider::default().on("Linen shirt", Script::FailTimes(3, flaky)),
        &[],
    )
    .await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    let csv = "sku,name,color\nSKU-1,Linen shirt,white\nSKU-2,Wool coat,grey\nSKU-3,Silk scarf,red\n";
    let event = stack.upload("incoming/product/redrive.csv", csv).await;
    let split = stack.split(event).await;
    stack.drain(1).await;
    let run_id = &split[0].run_id;
    let report = stack.report(run_id).await;
    assert_eq!((report.succeeded, report.failed), (2, 1));
    assert!(
        report.failures[0].reason.contains("gave up after 3 attempts"),
        "{:?}",
        report.failures
    );

    let ledger = &stack.finalizer.recorder.ledger;
    let rows = imagepipe::usecase::redrive::failed_rows(ledger, run_id, false)
        .await
        .unwrap();
    assert_eq!(rows, vec![1]);
    let run = ledger.run(run_id).await.unwrap().unwrap();
    let source = imagepipe::adapters::s3_store::S3Csv::of_run(stack.clients.s3.clone(), &run).unwrap();
    let jobs = imagepipe::adapters::sqs_queue::SqsQueue::new(stack.clients.sqs.clone(), &stack.jobs);
    let sent = imagepipe::usecase::redrive::redrive(ledger, &jobs, &run, &source, &rows)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    stack.drain(1).await;

    let report = stack.report(run_id).await;
    assert_eq!((report.succeeded, report.failed, report.redrives), (3, 0, 1));
    assert_eq!(
        stack.provider.calls_for("Wool coat"),
        1,
        "images already made are not paid again"
    );
    assert_eq!(stack.provider.calls_for("Linen shirt"), 4);
    let texts = stack.slack_texts().await;
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains(&format!("`{run_id}` finished")))
            .count(),
        1
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains(&format!("`{run_id}` redrive finished")))
            .count(),
        1,
        "{texts:?}"
    );
}

#[tokio::test]
async fn a_csv_uploaded_with_a_model_in_its_metadata_runs_on_that_model() {
    let stack = Stack::new(ScriptedProvider::default(), &[]).await;
    cms_accepts(&stack.cms).await;
    slack_accepts(&stack.slack).await;
    let mut event = stack
        .upload("incoming/product/chosen.csv", "sku,name,color\nSKU-1,Mug,red\n")
        .await;
    // What `imagepipe submit --model` does: the model rides along in the object's metadata.
    let put = stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.bucket)
        .key("incoming/product/chosen.csv")
        .metadata("imagepipe-model", "gpt-image-1-low")
        .body(b"sku,name,color\nSKU-1,Mug,red\n".to_vec().into())
        .send()
        .await
        .unwrap();
    event["Records"][0]["s3"]["object"]["eTag"] = put.e_tag().unwrap().trim_matches('"').into();
    let split = stack.split(event).await;
    stack.drain(1).await;
    let report = stack.report(&split[0].run_id).await;
    assert_eq!((report.model.as_str(), report.succeeded), ("gpt-image-1-low", 1));
}
