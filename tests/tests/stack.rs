//! The strongest test: `infra/template.yaml` itself, deployed as a stack into the local AWS emulator
//! (ministack runs CloudFormation with the SAM transform, the functions' `bootstrap` binaries as host
//! processes under a real Lambda Runtime API, S3 → Lambda notifications, SQS event source mappings
//! with `ReportBatchItemFailures`, and EventBridge schedules). The functions talk to local stand-ins
//! for Gemini, the CMS and Slack. CSVs are uploaded with the S3 API, and the test waits for the runs'
//! reports and checks the invariants on what the stack produced. On failure it prints the functions'
//! CloudWatch logs. The stand-in refuses one product and fails another once, but only for the
//! `product` template: the clean upload (`product_hero`) must succeed whole. Splits go on in
//! continuations (3 rows per splitter invocation), and one run's completion message first meets a
//! Slack that never answers: the reconciler's schedule completes it with one message.
//!
//! The emulator's known gaps are tested at the handler level instead (tests/tests/aws_pipeline.rs):
//! it enforces no IAM policy, ignores the arm64 architecture (bootstraps are built for this host),
//! drops EventBridge → Lambda failures, and deletes a whole batch for a bogus batch item id.

mod support;

use imagepipe_tests::batch_stand_in::{self, Script};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use imagepipe::domain::report::RunReport;
use wiremock::matchers::{body_string_contains, method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const FUNCTIONS: [&str; 3] = ["splitter", "generator", "finalizer"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Builds the three functions for this host and stages them where the template's `CodeUri`s point.
fn stage() -> tempfile::TempDir {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args([
            "build",
            "--package",
            "imagepipe-cli",
            "--package",
            "splitter",
            "--package",
            "generator",
            "--package",
            "finalizer",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the functions failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    let stage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stage.path().join("infra")).unwrap();
    std::fs::copy(
        workspace().join("infra/template.yaml"),
        stage.path().join("infra/template.yaml"),
    )
    .unwrap();
    for function in FUNCTIONS {
        let dir = stage.path().join("target/lambda").join(function);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(target.join("debug").join(function), dir.join("bootstrap")).unwrap();
    }
    stage
}

/// The tools venv's Python (boto3 and the SAM CLI), installed by `scripts/tools`.
fn python() -> PathBuf {
    let output = Command::new(workspace().join("scripts/tools")).output().unwrap();
    assert!(
        output.status.success(),
        "scripts/tools: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join("python")
}

fn aws_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env("AWS_ENDPOINT_URL", support::endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("SAM_CLI_TELEMETRY", "0");
    command
}

/// Prints the functions' logs if the test panics.
struct LogsOnFailure {
    python: PathBuf,
    functions: Vec<String>,
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script = workspace().join("tests/stack/logs.py");
            let _ = aws_command(&self.python).arg(script).args(&self.functions).status();
        }
    }
}

async fn gemini_stand_in() -> MockServer {
    let server = MockServer::start().await;
    let png = imagepipe::providers::placeholder::render_png(256, 256, b"stack").unwrap();
    let image = serde_json::json!({
        "candidates": [{ "content": { "parts": [{ "inlineData": {
            "mimeType": "image/png", "data": base64::engine::general_purpose::STANDARD.encode(&png) } }] },
            "finishReason": "STOP" }],
        "usageMetadata": { "promptTokenCount": 20, "candidatesTokenCount": 1290 }
    });
    let refusal = serde_json::json!({ "error": { "code": 400, "status": "INVALID_ARGUMENT",
        "message": "The request was blocked by the safety system" } });
    let patchy_refusal = refusal.clone();
    Mock::given(body_string_contains("Product photo of Ceramic pour-over"))
        .respond_with(ResponseTemplate::new(400).set_body_json(refusal))
        .with_priority(1)
        .mount(&server)
        .await;
    // Refused twice, then made: what `imagepipe redrive --all-failed` is for.
    Mock::given(body_string_contains("Patchy product"))
        .respond_with(ResponseTemplate::new(400).set_body_json(patchy_refusal))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(body_string_contains("Slow product"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(image.clone())
                .set_delay(Duration::from_secs(5)),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(body_string_contains("Product photo of Leather weekender"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html><body>Service Unavailable</body></html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1beta/models/[^/]+:generateContent$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(image))
        .with_priority(5)
        .mount(&server)
        .await;
    server
}

async fn put_secret(name: &str, value: &str) {
    let ssm = support::clients().ssm;
    let put = ssm
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString);
    put.send().await.unwrap();
}

async fn wait_for_report(bucket: &str, run_prefix_of: &str, timeout: Duration) -> RunReport {
    let s3 = support::clients().s3;
    let started = Instant::now();
    loop {
        let listed = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix("runs/")
            .send()
            .await
            .unwrap();
        for object in listed.contents() {
            let key = object.key().unwrap_or_default();
            if !key.ends_with("/report.json") {
                continue;
            }
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap();
            let report: RunReport = serde_json::from_slice(&body.into_bytes()).unwrap();
            if report.source.ends_with(run_prefix_of) {
                return report;
            }
        }
        assert!(
            started.elapsed() < timeout,
            "no report for {run_prefix_of} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// MD5 hex of `bytes`: the ETag S3 gives a single-part upload.
fn md5_of(bytes: &[u8]) -> String {
    use md5::Digest;
    hex_of(&md5::Md5::digest(bytes))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until Slack has received `n` messages containing `needle`.
async fn wait_for_texts(slack: &MockServer, needle: &str, n: usize, timeout: Duration) {
    let started = Instant::now();
    while support::slack_texts(slack)
        .await
        .iter()
        .filter(|t| t.contains(needle))
        .count()
        < n
        && started.elapsed() < timeout
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until Slack has received `n` completion messages.
async fn wait_for_completions(slack: &MockServer, n: usize, timeout: Duration) {
    let started = Instant::now();
    loop {
        let answered = support::slack_texts(slack)
            .await
            .iter()
            .filter(|t| t.contains("finished"))
            .count();
        if answered >= n || started.elapsed() > timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deployed_stack_runs_uploads_and_schedules_end_to_end() {
    let stage = stage();
    let python = python();
    let stack = support::unique("imagepipe");
    let (gemini, cms, slack) = (
        gemini_stand_in().await,
        MockServer::start().await,
        MockServer::start().await,
    );
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&cms)
        .await;
    // Batch mode: the Gemini Batch API on the same endpoint as the synchronous calls.
    let batch_api = batch_stand_in::mount_gemini(
        &gemini,
        Script {
            api_key: Some("stack-gemini-key".into()),
            polls_per_state: 1,
            ..Script::default()
        },
    )
    .await;
    let batch_key = "incoming/product/batch.csv";
    let batch_csv = "sku,name,color\nSKU-B1,Batch mug,red\nSKU-B2,Batch cup,blue\nSKU-B3,Batch bowl,green\n";
    let bucket = format!("{stack}-000000000000-us-east-1");
    // The completion message of the `late` run meets a Slack that never answers (every attempt of
    // the first finalizer times out), then one that does.
    let late_key = "incoming/product_hero/late.csv";
    let late_csv = "sku,name,color\nSKU-9001,Field jacket,olive\nSKU-9002,Wool beanie,rust\n";
    let late_etag = md5_of(late_csv.as_bytes());
    let late_run = imagepipe::domain::job::run_id(&[
        &format!("s3://{bucket}/{late_key}"),
        &late_etag,
        "product_hero",
        "nano-banana-2",
    ]);
    Mock::given(method("POST"))
        .and(body_string_contains(format!("`{late_run}` finished")))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(600)))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&slack)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .with_priority(5)
        .mount(&slack)
        .await;
    let secrets = format!("/{stack}");
    put_secret(&format!("{secrets}/gemini"), "stack-gemini-key").await;
    put_secret(&format!("{secrets}/cms"), "stack-cms-token").await;
    put_secret(
        &format!("{secrets}/slack"),
        &format!("{}/services/T0/B0/stack", slack.uri()),
    )
    .await;

    let parameters = [
        "Architecture=x86_64".to_owned(),
        "Provider=gemini".to_owned(),
        format!("ProviderBaseUrl={}", gemini.uri()),
        format!("GeminiApiKeyParam={secrets}/gemini"),
        format!("CmsTokenParam={secrets}/cms"),
        format!("SlackWebhookParam={secrets}/slack"),
        format!("CmsBaseUrl={}", cms.uri()),
        "PublicBaseUrl=https://images.example.test".to_owned(),
        "GeneratorTimeout=60".to_owned(),
        "ScheduleExpression=rate(1 minute)".to_owned(),
        "ReconcileSchedule=rate(1 minute)".to_owned(),
        "BatchPollSchedule=rate(1 minute)".to_owned(),
        "BatchRequests=2".to_owned(),
        "SplitRowsPerInvocation=3".to_owned(),
        format!("ScheduleCsv=s3://{bucket}/schedules/articles.csv"),
        "ScheduleTemplate=blog_hero".to_owned(),
    ];
    let deployed = aws_command(&python)
        .arg(workspace().join("tests/stack/deploy.py"))
        .arg(stage.path())
        .arg(&stack)
        .args(&parameters)
        .output()
        .unwrap();
    assert!(
        deployed.status.success(),
        "deploy failed:\n{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let outputs: serde_json::Value = serde_json::from_slice(&deployed.stdout).unwrap();
    assert_eq!(outputs["BucketName"], bucket.as_str());
    let _logs = LogsOnFailure {
        python: python.clone(),
        functions: ["SplitterFunctionName", "GeneratorFunctionName", "FinalizerFunctionName"]
            .iter()
            .map(|o| outputs[o].as_str().unwrap().to_owned())
            .collect(),
    };

    check_monitoring(&python, &outputs);

    let s3 = support::clients().s3;
    for (key, csv) in [
        (
            "incoming/product_hero/clean.csv",
            include_str!("../../events/products.csv"),
        ),
        (
            "incoming/product/with-errors.csv",
            include_str!("../../events/products-with-errors.csv"),
        ),
        ("schedules/articles.csv", include_str!("../../events/articles.csv")),
        (late_key, late_csv),
        (batch_key, batch_csv),
    ] {
        let mut put = s3.put_object().bucket(&bucket).key(key);
        if key == batch_key {
            // What `imagepipe submit --batch` sets.
            put = put.metadata("imagepipe-mode", "batch");
        }
        put.body(csv.as_bytes().to_vec().into()).send().await.unwrap();
    }

    let clean = wait_for_report(&bucket, "incoming/product_hero/clean.csv", Duration::from_secs(120)).await;
    assert_eq!(
        (clean.rows, clean.succeeded, clean.failed, clean.invalid),
        (5, 5, 0, 0),
        "{clean:?}"
    );
    assert_eq!(clean.cms_updated, 5);
    assert!(
        (clean.actual_cost_usd - 5.0 * 0.0774).abs() < 0.01,
        "token-priced: {}",
        clean.actual_cost_usd
    );

    let faulty = wait_for_report(&bucket, "incoming/product/with-errors.csv", Duration::from_secs(120)).await;
    assert_eq!(
        (faulty.rows, faulty.succeeded, faulty.failed, faulty.invalid),
        (8, 4, 1, 3),
        "{faulty:?}"
    );
    assert!(
        faulty.failures[0].reason.contains("safety system"),
        "{:?}",
        faulty.failures
    );

    // A line per row in results.csv, in row order, invalid rows included.
    let results = s3
        .get_object()
        .bucket(&bucket)
        .key(format!("runs/{}/results.csv", faulty.run_id))
        .send()
        .await
        .unwrap();
    let results = String::from_utf8(results.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
    let rows: Vec<&str> = results.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(rows, ["1", "2", "3", "4", "5", "6", "7", "8"], "{results}");
    assert_eq!(results.matches(",invalid,").count(), 3, "{results}");

    // The run item in the ledger: complete, every row counted.
    let outputs_table = outputs["LedgerTableName"].as_str().unwrap();
    let ledger = imagepipe::adapters::dynamodb_ledger::DynamoLedger::new(
        support::clients().dynamodb,
        outputs_table,
        Duration::from_secs(86_400),
    );
    let run = imagepipe::ports::ledger::RunLedger::run(&ledger, &faulty.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.state, run.counts.succeeded, run.counts.failed, run.checkpoint.sent),
        (imagepipe::ports::ledger::RunState::Complete, 4, 1, 5)
    );

    let late = wait_for_report(&bucket, late_key, Duration::from_secs(300)).await;
    assert_eq!((late.rows, late.succeeded), (2, 2));

    // The batch-mode run: 3 rows in batches of 2, submitted by the splitter, read by the poll schedule.
    let batch = wait_for_report(&bucket, batch_key, Duration::from_secs(300)).await;
    assert_eq!((batch.rows, batch.succeeded, batch.failed), (3, 3, 0), "{batch:?}");
    assert_eq!(batch.mode, imagepipe::domain::template::Mode::Batch);
    assert!(
        (batch.actual_cost_usd - 3.0 * 0.0195).abs() < 1e-9,
        "batch price: {}",
        batch.actual_cost_usd
    );
    assert!((batch.sync_cost_usd.unwrap() - 3.0 * 0.039).abs() < 1e-9);
    assert_eq!(batch_api.batches_created(), 2);
    assert!(
        batch_api
            .batch_names()
            .iter()
            .all(|n| n.starts_with(&format!("imagepipe-{}-", batch.run_id))),
        "{:?}",
        batch_api.batch_names()
    );
    let done = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("runs/{}/batches/done/", batch.run_id))
        .send()
        .await
        .unwrap();
    assert_eq!(done.contents().len(), 2, "each batch's record is kept with the run");

    let scheduled = wait_for_report(&bucket, "schedules/articles.csv", Duration::from_secs(150)).await;
    assert_eq!(
        (scheduled.template.as_str(), scheduled.failed, scheduled.invalid),
        ("blog_hero", 0, 0)
    );
    assert!(scheduled.rows > 0 && scheduled.rejected.is_none(), "{scheduled:?}");
    assert_eq!(scheduled.succeeded, scheduled.rows);

    // Every image in S3 once, under its template, with its metadata.
    let images = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("images/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = images.contents().iter().filter_map(|o| o.key()).collect();
    let made = clean.succeeded + faulty.succeeded + scheduled.succeeded + late.succeeded + batch.succeeded;
    assert_eq!(keys.len() as u64, made, "{keys:?}");
    // One CMS update per product image; one completion message per run (the schedule may fire again: no new run).
    let patches = cms.received_requests().await.unwrap();
    assert_eq!(patches.len() as u64, made);
    // The report is written before the message: the reconciler's retry may still be on its way.
    let late_finished = format!("`{late_run}` finished");
    wait_for_texts(&slack, &late_finished, 4, Duration::from_secs(180)).await;
    wait_for_completions(&slack, 4 + 4, Duration::from_secs(30)).await;
    let texts = support::slack_texts(&slack).await;
    // Slack received the late run's message four times: three attempts it never answered, then one it accepted.
    let late_texts = texts
        .iter()
        .filter(|t| t.contains(&format!("`{late_run}` finished")))
        .count();
    assert_eq!(late_texts, 4, "{texts:#?}");
    let finished = texts.iter().filter(|t| t.contains("finished")).count();
    assert_eq!(finished, 4 + 4, "one message for each other run: {texts:#?}");
    assert!(
        texts
            .iter()
            .all(|t| !t.contains("stack-cms-token") && !t.contains("stack-gemini-key"))
    );

    operate_with_the_cli(&stack, &gemini, &slack, &faulty.run_id).await;
}

/// The `imagepipe` binary against the deployed stack, named by `--stack` alone.
/// The stack's dashboard and failure-rate alarm exist in CloudWatch, on the stack's own functions.
fn check_monitoring(python: &Path, outputs: &serde_json::Value) {
    let output = |name: &str| {
        outputs[name]
            .as_str()
            .unwrap_or_else(|| panic!("no output {name}: {outputs}"))
    };
    let described = aws_command(python)
        .arg(workspace().join("tests/stack/monitoring.py"))
        .args([output("DashboardName"), output("FailureRateAlarmName")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&described.stderr);
    assert!(described.status.success(), "monitoring.py: {stderr}");
    let described: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    let (dashboard, alarm) = (&described["dashboard"], &described["alarm"]);
    let widgets = dashboard["widgets"].as_array().unwrap();
    let titles: Vec<&str> = widgets
        .iter()
        .filter_map(|w| w["properties"]["title"].as_str())
        .collect();
    for title in [
        "Images per minute",
        "Failure rate (5 min)",
        "Failures by class (5 min)",
        "Dead-letter queues",
    ] {
        assert!(titles.contains(&title), "{title} missing: {titles:?}");
    }
    let generator = output("GeneratorFunctionName");
    assert!(
        dashboard.to_string().contains(generator),
        "the widgets name the stack's generator: {dashboard}"
    );
    assert_eq!(
        (
            alarm["Namespace"].as_str(),
            alarm["MetricName"].as_str(),
            alarm["Statistic"].as_str()
        ),
        (Some("imagepipe"), Some("FailureRate"), Some("Average"))
    );
    assert_eq!(
        (alarm["Threshold"].as_f64(), alarm["Period"].as_u64()),
        (Some(0.2), Some(300))
    );
    assert_eq!(
        alarm["Dimensions"],
        serde_json::json!([{"Name": "function", "Value": generator}])
    );
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let binary = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from)
        .join("debug/imagepipe");
    let output = Command::new(binary)
        .args(args)
        .env("AWS_ENDPOINT_URL", support::endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// A team's own template pushed with `config push` drives a run started by `submit --wait`;
/// `status` reads a run's progress; `cancel` stops a run of slow calls part-way.
async fn operate_with_the_cli(stack: &str, gemini: &MockServer, slack: &MockServer, faulty_run: &str) {
    let files = tempfile::tempdir().unwrap();
    let (templates, models, csv) = (
        files.path().join("templates.toml"),
        files.path().join("models.toml"),
        files.path().join("house.csv"),
    );
    std::fs::write(
        &templates,
        "[templates.house]\nprompt = \"House style shot of {name}\"\nmodel = \"house-model\"\nkey = \"{sku}\"\n",
    )
    .unwrap();
    std::fs::write(
        &models,
        "prices_as_of = \"2026-12-01\"\n[models.house-model]\nprovider = \"gemini\"\n\
         provider_model = \"gemini-2.5-flash-image\"\nprice_per_image = 0.02\n",
    )
    .unwrap();
    std::fs::write(&csv, "sku,name\nH-1,Oak table\nH-2,Linen chair\n").unwrap();
    let (t, m, c) = (
        templates.to_str().unwrap(),
        models.to_str().unwrap(),
        csv.to_str().unwrap(),
    );
    let (ok, _, err) = cli(&["config", "push", "--stack", stack, "--templates", t, "--models", m]);
    assert!(ok, "config push: {err}");

    let (ok, out, err) = cli(&["submit", c, "-t", "house", "--stack", stack, "--wait", "--json"]);
    assert!(ok, "submit --wait: {err}");
    let report: RunReport = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report.succeeded, report.model.as_str()),
        (2, "house-model"),
        "{report:?}"
    );
    let prompts = gemini.received_requests().await.unwrap();
    assert_eq!(
        prompts
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("House style shot of"))
            .count(),
        2
    );

    // A row refused twice, then made: two redrives of the failed rows.
    let patchy = files.path().join("patchy.csv");
    std::fs::write(
        &patchy,
        "sku,name,color\nP-1,Patchy product,blue\nP-2,Steady product,blue\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&[
        "submit",
        patchy.to_str().unwrap(),
        "-t",
        "product_hero",
        "--stack",
        stack,
        "--wait",
        "--json",
    ]);
    assert!(!ok, "a failed row makes the exit code 1: {err}");
    let first: RunReport = serde_json::from_str(&out).unwrap();
    assert_eq!((first.succeeded, first.failed), (1, 1));
    for (redrive, succeeded) in [(1, 1), (2, 2)] {
        let args = [
            "redrive",
            first.run_id.as_str(),
            "--all-failed",
            "--stack",
            stack,
            "--wait",
            "--json",
        ];
        let (_, out, err) = cli(&args);
        let report: RunReport = serde_json::from_str(&out).unwrap_or_else(|e| panic!("redrive {redrive}: {e}: {err}"));
        assert_eq!((report.succeeded, report.redrives), (succeeded, redrive), "{report:?}");
    }

    let (ok, out, err) = cli(&["status", faulty_run, "--stack", stack, "--json"]);
    assert!(ok, "status: {err}");
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (runs[0]["succeeded"].as_u64(), runs[0]["state"].as_str()),
        (Some(4), Some("complete"))
    );

    // 300 slow calls (5 s each, 50 in flight): cancelled two seconds in, most are never made.
    let mut slow = String::from("sku,name,color\n");
    for n in 1..=300 {
        slow.push_str(&format!("SLOW-{n},Slow product {n},grey\n"));
    }
    std::fs::write(files.path().join("slow.csv"), slow).unwrap();
    let slow_csv = files.path().join("slow.csv");
    let (ok, run_id, err) = cli(&[
        "submit",
        slow_csv.to_str().unwrap(),
        "-t",
        "product_hero",
        "--stack",
        stack,
    ]);
    assert!(ok, "submit: {err}");
    let run_id = run_id.trim().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, _, err) = cli(&["cancel", &run_id, "--stack", stack]);
    assert!(ok && err.contains("cancelled"), "cancel: {err}");
    let bucket = format!("{stack}-000000000000-us-east-1");
    let cancelled = wait_for_report(&bucket, "incoming/product_hero/slow.csv", Duration::from_secs(240)).await;
    assert_eq!(cancelled.succeeded + cancelled.failed, 300);
    let not_attempted = cancelled
        .failure_reasons
        .iter()
        .filter(|r| r.reason.starts_with("not attempted"))
        .map(|r| r.rows)
        .sum::<u64>();
    assert!(
        not_attempted >= 150,
        "only {not_attempted} rows were not attempted: {cancelled:?}"
    );
    assert!(cancelled.stopped.as_deref().unwrap_or_default().contains("cancelled"));
    wait_for_completions(slack, 4 + 3 + 3 + 2, Duration::from_secs(30)).await;
    let texts = support::slack_texts(slack).await;
    let messages: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains(&format!("`{run_id}` finished")))
        .collect();
    assert_eq!(messages.len(), 1, "{texts:#?}");
    assert!(messages[0].contains("Stopped: cancelled"), "{messages:?}");
}
