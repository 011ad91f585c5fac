//! imagepipe's benchmarks. Each prints one JSON line per measurement, with the baseline it is a
//! ratio to, measured in the same run. `scripts/bench` runs them all and writes BENCHMARKS.md figures.
//!
//!   imagepipe-bench serve LATENCY_MS                 a Gemini stand-in answering after LATENCY_MS (child process)
//!   imagepipe-bench local LATENCY_MS CONCURRENCY ROWS     a local run against the stand-in
//!   imagepipe-bench generator LATENCY_MS CONCURRENCY ROWS the generator handler fed SQS batches (emulator)
//!   imagepipe-bench split ROWS                        the splitter against a bare SendMessageBatch loop (emulator)
//!   imagepipe-bench parts ROWS                        per-image cost of each step, in isolation
//!   imagepipe-bench init BOOTSTRAP                    Lambda init: process start → first invocation/next
//!   imagepipe-bench pipeline LATENCY_MS CONCURRENCY ROWS  the AWS path with latency injected: requests per image
//!   imagepipe-bench report ROWS                       report.json + results.csv of a synthetic run of ROWS rows
//!   imagepipe-bench batch-serve                       a finished Gemini batch's results, made as sent (child process)
//!   imagepipe-bench batch ROWS                        reading a finished batch of ROWS ~1.4 MiB results
//!
//! The emulator endpoint comes from `IMAGEPIPE_TEST_AWS_ENDPOINT`; the stand-ins' from `GEMINI_STAND_IN`
//! and `BATCH_STAND_IN`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use imagepipe::adapters::fs_store::FsObjectStore;
use imagepipe::adapters::http_publish::http_client;
use imagepipe::adapters::s3_store::{S3Csv, S3ObjectStore};
use imagepipe::adapters::sqs_queue::SqsQueue;
use imagepipe::domain::catalog::Catalog;
use imagepipe::domain::retry::RetryPolicy;
use imagepipe::domain::template::TemplateSet;
use imagepipe::drivers::lambda::AwsClients;
use imagepipe::drivers::local::{LocalRun, Publishing};
use imagepipe::ports::queue::MessageQueue;
use imagepipe::ports::store::{NewObject, ObjectStore};
use imagepipe::providers::HttpProvider;
use imagepipe::providers::gemini::GeminiProvider;
use imagepipe::providers::{ImageProvider, ImageRequest};
use imagepipe::usecase::split::{SplitSettings, Splitter};
use serde_json::json;

#[path = "bench/batch.rs"]
mod batch;
#[path = "bench/pipeline.rs"]
mod pipeline;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::var_os("RUST_LOG").is_some() {
        imagepipe::drivers::lambda::init_tracing();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |i: usize| -> Result<u64, Error> { Ok(args.get(i).ok_or("missing argument (see the module docs)")?.parse()?) };
    match args.first().map(String::as_str) {
        Some("serve") => serve(number(1)?).await,
        Some("local") => local(number(1)?, number(2)? as usize, number(3)?).await,
        Some("generator") => generator(number(1)?, number(2)? as usize, number(3)?).await,
        Some("split") => split(number(1)?).await,
        Some("parts") => parts(number(1)?).await,
        Some("init") => init(args.get(1).ok_or("init BOOTSTRAP")?).await,
        Some("pipeline") => pipeline::run(number(1)?, number(2)? as usize, number(3)?).await,
        Some("report") => pipeline::report(number(1)?).await,
        Some("batch-serve") => batch::serve().await,
        Some("batch") => batch::collect(number(1)?).await,
        _ => Err("usage: imagepipe-bench serve|local|generator|split|parts|init … (see the module docs)".into()),
    }
}

/// CPU time (user + system) of this process, to the microsecond.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Peak resident set size of this process, KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A Gemini `generateContent` answer with a small real PNG.
fn gemini_answer() -> serde_json::Value {
    let png = imagepipe::providers::placeholder::render_png(64, 64, b"bench").unwrap_or_default();
    json!({
        "candidates": [{ "content": { "parts": [{ "inlineData": {
            "mimeType": "image/png", "data": base64::engine::general_purpose::STANDARD.encode(&png) } }] },
            "finishReason": "STOP" }],
        "usageMetadata": { "promptTokenCount": 20, "candidatesTokenCount": 1290 }
    })
}

/// Serves Gemini answers after `latency_ms` until killed; prints its URL first.
async fn serve(latency_ms: u64) -> Result<(), Error> {
    let server = wiremock::MockServer::builder().start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(gemini_answer())
                .set_delay(Duration::from_millis(latency_ms)),
        )
        .mount(&server)
        .await;
    println!("{}", server.uri());
    std::future::pending::<()>().await;
    Ok(())
}

fn stand_in() -> Result<String, Error> {
    Ok(std::env::var("GEMINI_STAND_IN").map_err(|_| "GEMINI_STAND_IN (the stand-in's URL) is not set")?)
}

fn provider() -> Result<Arc<dyn ImageProvider>, Error> {
    Ok(Arc::new(GeminiProvider::new(
        http_client(Duration::from_secs(60)),
        &stand_in()?,
        "bench-key",
    )))
}

fn csv(rows: u64) -> String {
    let mut csv = String::from("sku,name,color\n");
    for i in 0..rows {
        csv.push_str(&format!("SKU-{i:07},Bench product {i},colour {}\n", i % 17));
    }
    csv
}

/// A local run of `rows` rows with `concurrency` workers against the stand-in.
async fn local(latency_ms: u64, concurrency: usize, rows: u64) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("in.csv"), csv(rows))?;
    let run = LocalRun {
        csv: dir.path().join("in.csv"),
        template: TemplateSet::builtin().get("product")?.clone(),
        model: Some("nano-banana".into()),
        catalog: Catalog::builtin(),
        provider: provider()?,
        signer: None,
        out_dir: dir.path().join("out"),
        concurrency,
        retry: RetryPolicy::default(),
        timeout: Duration::from_secs(60),
        publish: Publishing::default(),
        batch: None,
    };
    let (cpu, started) = (cpu_time(), Instant::now());
    let report = run.run(|_| {}).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu).as_secs_f64();
    assert_eq!(report.succeeded, rows, "every image made");
    let achieved = rows as f64 / wall;
    let ceiling = ceiling(concurrency, latency_ms);
    println!(
        "{}",
        json!({"bench": "local", "latency_ms": latency_ms, "concurrency": concurrency, "rows": rows,
               "wall_s": wall, "images_per_s": achieved, "ceiling_per_s": ceiling, "efficiency": achieved / ceiling,
               "cpu_ms_per_image": cpu * 1000.0 / rows as f64, "wall_ms_per_image": wall * 1000.0 / rows as f64,
               "peak_rss_kib": peak_rss_kib()})
    );
    Ok(())
}

/// C / L; with no latency there is no ceiling but the machine (reported as infinite).
fn ceiling(concurrency: usize, latency_ms: u64) -> f64 {
    if latency_ms == 0 {
        f64::INFINITY
    } else {
        concurrency as f64 * 1000.0 / latency_ms as f64
    }
}

fn emulator() -> Result<AwsClients, Error> {
    let endpoint =
        std::env::var("IMAGEPIPE_TEST_AWS_ENDPOINT").map_err(|_| "IMAGEPIPE_TEST_AWS_ENDPOINT is not set")?;
    Ok(clients_at(&endpoint))
}

/// SDK clients pointed at `endpoint` (the emulator, or a proxy in front of it), dummy credentials.
fn clients_at(endpoint: &str) -> AwsClients {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
            aws_sdk_s3::config::Credentials::new("test", "test", None, None, "emulator"),
        ))
        .build();
    AwsClients::new(&config, true)
}

/// A run-ledger table named `name`, shaped as the stack's.
async fn table(clients: &AwsClients, name: &str) -> Result<String, Error> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let attribute = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, kind| KeySchemaElement::builder().attribute_name(n).key_type(kind).build();
    clients
        .dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await?;
    Ok(name.to_owned())
}

async fn fresh(clients: &AwsClients, name: &str) -> Result<(String, String), Error> {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("bench-{name}-{suffix}");
    clients.s3.create_bucket().bucket(&bucket).send().await?;
    let queue = clients
        .sqs
        .create_queue()
        .queue_name(format!("bench-{name}-{suffix}"))
        .send()
        .await?;
    Ok((bucket, queue.queue_url().unwrap_or_default().to_owned()))
}

/// The generator handler fed batches of 10 by `concurrency / 10` pollers, like the event source mapping.
async fn generator(latency_ms: u64, concurrency: usize, rows: u64) -> Result<(), Error> {
    let clients = emulator()?;
    let (bucket, jobs) = fresh(&clients, "gen").await?;
    let (_, events) = fresh(&clients, "events").await?;
    let vars = std::collections::HashMap::from([
        ("IMAGEPIPE_BUCKET", bucket.clone()),
        (
            "LEDGER_TABLE",
            table(&clients, &format!("bench-gen-runs-{:08x}", rand::random::<u32>())).await?,
        ),
        ("JOBS_QUEUE_URL", jobs.clone()),
        ("EVENTS_QUEUE_URL", events.clone()),
    ]);
    let config = imagepipe::drivers::config::Config::from_lookup(|n| vars.get(n).cloned())?;
    let mut deps = generator::handler::Deps::new(&clients, config)?;
    deps.generator.providers = imagepipe::usecase::deliver::Providers::with(provider()?);
    let template = TemplateSet::builtin().get("product")?.clone();
    let queue = SqsQueue::new(clients.sqs.clone(), &jobs);
    let bodies: Vec<String> = (0..rows)
        .map(|i| {
            serde_json::to_string(
                &json!({"run_id": "run-bench", "row": i + 1, "key": format!("product/SKU-{i:07}"),
                "prompt": format!("Product photo of bench product {i}"), "model": "nano-banana",
                "size": template.size}),
            )
        })
        .collect::<Result<_, _>>()?;
    futures::future::try_join_all(bodies.chunks(10).map(|c| queue.send_batch(c.to_vec()))).await?;
    let pollers = (concurrency / 10).max(1);
    let (cpu, started) = (cpu_time(), Instant::now());
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::future::join_all((0..pollers).map(|_| poll(&clients, &jobs, &deps, &done, rows))).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu).as_secs_f64();
    let achieved = rows as f64 / wall;
    let ceiling = ceiling(pollers * 10, latency_ms);
    println!(
        "{}",
        json!({"bench": "generator", "latency_ms": latency_ms, "concurrency": pollers * 10, "rows": rows,
               "wall_s": wall, "images_per_s": achieved, "ceiling_per_s": ceiling, "efficiency": achieved / ceiling,
               "cpu_ms_per_image": cpu * 1000.0 / rows as f64, "wall_ms_per_image": wall * 1000.0 / rows as f64})
    );
    Ok(())
}

async fn poll(
    clients: &AwsClients,
    url: &str,
    deps: &generator::handler::Deps,
    done: &std::sync::atomic::AtomicU64,
    rows: u64,
) {
    use std::sync::atomic::Ordering;
    while done.load(Ordering::Relaxed) < rows {
        let event = pipeline::receive(clients, url).await;
        if event.records.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut context = lambda_runtime::Context::default();
        context.deadline = imagepipe::domain::events::now_ms() + 300_000;
        let Ok(response) =
            generator::handler::handle(deps, lambda_runtime::LambdaEvent::new(event.clone(), context)).await
        else {
            continue;
        };
        let response = serde_json::to_value(response).unwrap_or_default();
        let deleted = pipeline::delete_done(clients, url, &event, &response).await;
        done.fetch_add(deleted, Ordering::Relaxed);
    }
}

/// The splitter over `rows` rows, and a bare loop sending as many messages with the same concurrency.
async fn split(rows: u64) -> Result<(), Error> {
    let clients = emulator()?;
    let (bucket, jobs) = fresh(&clients, "split").await?;
    let (_, events) = fresh(&clients, "split-events").await?;
    let concurrency = 8;
    let body = csv(rows);
    let put = clients
        .s3
        .put_object()
        .bucket(&bucket)
        .key("incoming/product/bench.csv")
        .body(body.into_bytes().into())
        .send()
        .await?;
    let store = S3ObjectStore::new(clients.s3.clone(), &bucket);
    // The ledger in memory: this measures the fan-out to SQS, which is the splitter's bulk of work.
    let splitter = Splitter {
        jobs: SqsQueue::new(clients.sqs.clone(), &jobs),
        events: SqsQueue::new(clients.sqs.clone(), &events),
        continuations: SqsQueue::new(clients.sqs.clone(), &events),
        ledger: imagepipe::adapters::memory_ledger::MemoryLedger::new(),
        settings: SplitSettings {
            provider: None,
            max_run_cost_usd: None,
            max_rows: rows,
            send_concurrency: concurrency,
            reserve: Duration::from_secs(30),
            rows_per_invocation: u64::MAX,
            batch_requests: imagepipe::usecase::batch::BATCH_REQUESTS,
        },
        batches: None,
    };
    let template = TemplateSet::builtin().get("product")?.clone();
    let catalog = imagepipe::domain::catalog::Catalog::builtin();
    let etag = put.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    let source = S3Csv::new(store, "incoming/product/bench.csv", &etag);
    let started = Instant::now();
    let deadline = imagepipe::domain::events::now_ms() + 900_000;
    let outcome = splitter.split(&source, Ok(&template), None, &catalog, deadline).await?;
    let split_wall = started.elapsed().as_secs_f64();
    assert_eq!(outcome.sent, rows);
    let rss = peak_rss_kib();

    // The bare loop: the same number of job-sized messages, batches of 10, same concurrency.
    let (_, bare_queue) = fresh(&clients, "bare").await?;
    let queue = SqsQueue::new(clients.sqs.clone(), &bare_queue);
    let message = serde_json::to_string(&json!({"run_id": "run-bench", "row": 1, "key": "product/SKU-0000001",
        "prompt": "Product photo of Bench product 1 in colour 1, clean background, soft shadows",
        "model": "nano-banana", "size": template.size}))?;
    let started = Instant::now();
    use futures::StreamExt;
    let mut sends = futures::stream::iter((0..rows).step_by(10))
        .map(|start| queue.send_batch(vec![message.clone(); (rows - start).min(10) as usize]))
        .buffer_unordered(concurrency);
    while let Some(sent) = sends.next().await {
        sent?;
    }
    let bare_wall = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "split", "rows": rows, "concurrency": concurrency, "split_s": split_wall, "bare_s": bare_wall,
               "rows_per_s": rows as f64 / split_wall, "bare_per_s": rows as f64 / bare_wall,
               "ratio": bare_wall / split_wall, "peak_rss_kib": rss})
    );
    Ok(())
}

/// Each step's cost per image, in isolation: CSV, provider call (instant stand-in), image check, object write.
async fn parts(rows: u64) -> Result<(), Error> {
    let template = TemplateSet::builtin().get("product")?.clone();
    let catalog = Catalog::builtin();
    let data = csv(rows);
    let measure = |cpu: Duration, started: Instant| {
        json!({"cpu_us_per_image": (cpu_time() - cpu).as_secs_f64() * 1e6 / rows as f64,
               "wall_us_per_image": started.elapsed().as_secs_f64() * 1e6 / rows as f64})
    };
    let (cpu, started) = (cpu_time(), Instant::now());
    imagepipe::usecase::plan::plan_csv(data.as_bytes(), "bench.csv", &template, None, &catalog)?;
    let csv_cost = measure(cpu, started);

    let provider = provider()?;
    let request = ImageRequest {
        provider_model: "gemini-2.5-flash-image".into(),
        quality: None,
        key: "product/SKU-1".into(),
        prompt: "Product photo of bench".into(),
        size: template.size,
        references: vec![],
        seed: 1,
        timeout: Duration::from_secs(10),
    };
    let calls = rows.min(5000);
    let (cpu, started) = (cpu_time(), Instant::now());
    let mut images = Vec::new();
    for _ in 0..calls {
        images.push(provider.generate(&request).await?.bytes);
    }
    let call_cost = json!({"cpu_us_per_image": (cpu_time() - cpu).as_secs_f64() * 1e6 / calls as f64,
                           "wall_us_per_image": started.elapsed().as_secs_f64() * 1e6 / calls as f64});

    let (cpu, started) = (cpu_time(), Instant::now());
    for i in 0..rows {
        imagepipe::domain::image_format::inspect(&images[i as usize % images.len()])?;
    }
    let inspect_cost = measure(cpu, started);

    let dir = tempfile::tempdir()?;
    let store = FsObjectStore::new(dir.path());
    let (cpu, started) = (cpu_time(), Instant::now());
    for i in 0..rows {
        let object = NewObject {
            body: images[i as usize % images.len()].clone(),
            content_type: "image/png".into(),
            cache_control: None,
            metadata: vec![],
        };
        store
            .put_if_absent(&format!("images/product/SKU-{i:07}.png"), object)
            .await?;
    }
    let write_cost = measure(cpu, started);
    println!(
        "{}",
        json!({"bench": "parts", "rows": rows, "csv": csv_cost, "provider_call": call_cost,
               "image_check": inspect_cost, "object_write_fs": write_cost})
    );
    Ok(())
}

/// Time from process start to the first `invocation/next` of a function binary, SDK clients built.
async fn init(bootstrap: &str) -> Result<(), Error> {
    let (api, mut requests) = imagepipe_tests::runtime_api::serve(String::from("{\"Records\": []}")).await;
    let mut samples = Vec::new();
    for _ in 0..10 {
        // What the previous process still sent before it was killed is not this one's.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while requests.try_recv().is_ok() {}
        let started = Instant::now();
        let mut child = tokio::process::Command::new(bootstrap)
            .env("AWS_LAMBDA_RUNTIME_API", &api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("IMAGEPIPE_BUCKET", "bench")
            .env("JOBS_QUEUE_URL", "http://127.0.0.1:9/000000000000/jobs")
            .env("EVENTS_QUEUE_URL", "http://127.0.0.1:9/000000000000/events")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        loop {
            let (path, _) = tokio::time::timeout(Duration::from_secs(10), requests.recv())
                .await?
                .ok_or("api closed")?;
            if path.ends_with("/invocation/next") {
                break;
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        child.kill().await?;
    }
    samples.sort_by(f64::total_cmp);
    let size = std::fs::metadata(bootstrap)?.len();
    let zip = std::fs::metadata(format!("{bootstrap}.zip")).map(|m| m.len()).ok();
    println!(
        "{}",
        json!({"bench": "init", "bootstrap": bootstrap, "init_ms_median": samples[samples.len() / 2],
               "init_ms_max": samples[samples.len() - 1], "binary_bytes": size, "zip_bytes": zip})
    );
    Ok(())
}
