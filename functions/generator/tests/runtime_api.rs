//! The built `generator` binary, black box, under a local Lambda Runtime API: it initialises from
//! the environment, takes an SQS event from `events/`, writes the image to S3 and the outcome to the
//! events queue (both on the local AWS emulator), and answers with the one malformed record as a
//! batch item failure.

#[path = "../../../tests/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use imagepipe_tests::runtime_api::{self, REQUEST_ID};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn the_generator_binary_answers_an_sqs_event_through_the_runtime_api() {
    let clients = support::clients();
    let bucket = support::bucket(&clients).await;
    let jobs = support::queue(&clients, "bb-jobs", Default::default()).await;
    let events = support::queue(&clients, "bb-events", Default::default()).await;
    let table = support::table(&clients).await;
    let event = include_str!("../../../events/sqs-jobs.json").to_owned();
    let (api, mut posted) = runtime_api::serve(event).await;

    let mut function = tokio::process::Command::new(env!("CARGO_BIN_EXE_generator"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "generator")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", support::endpoint())
        .env("IMAGEPIPE_BUCKET", &bucket)
        .env("LEDGER_TABLE", &table)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("JOBS_QUEUE_URL", &jobs)
        .env("EVENTS_QUEUE_URL", &events)
        .env("IMAGEPIPE_PROVIDER", "placeholder")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let answer = async {
        loop {
            let (path, body) = posted.recv().await.unwrap();
            if !path.ends_with("/invocation/next") {
                return (path, body);
            }
        }
    };
    let (path, body) = tokio::time::timeout(Duration::from_secs(60), answer)
        .await
        .expect("the function answers within a minute");
    function.kill().await.unwrap();
    let mut logs = String::new();
    function.stdout.take().unwrap().read_to_string(&mut logs).await.unwrap();

    assert_eq!(
        path,
        format!("/2018-06-01/runtime/invocation/{REQUEST_ID}/response"),
        "{body}\n{logs}"
    );
    let response: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        response,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"}]})
    );
    let head = clients
        .s3
        .head_object()
        .bucket(&bucket)
        .key("images/product/SKU-1001.png")
        .send()
        .await;
    assert_eq!(head.unwrap().content_type(), Some("image/png"));
    let outcome = support::receive(&clients, &events).await;
    let outcome: serde_json::Value = serde_json::from_str(outcome.records[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(
        (outcome["type"].as_str(), outcome["image"]["row"].as_u64()),
        (Some("job_succeeded"), Some(1))
    );
    // JSON logs, one object per line, with the malformed record named.
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{logs}"
    );
    assert!(logs.contains("message does not parse as a job"), "{logs}");

    // Its metrics, printed as CloudWatch Embedded Metric Format after the invocation.
    let metrics = imagepipe_tests::emf::metrics(&logs).unwrap_or_else(|e| panic!("{e}\n{logs}"));
    let dimensions: Vec<(String, String)> = [
        ("function", "generator"),
        ("provider", "placeholder"),
        ("model", "placeholder"),
        ("template", "product"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    let metric = |name: &str| {
        let found = metrics.iter().find(|m| m.name == name && m.dimensions.len() == 4);
        found.unwrap_or_else(|| panic!("no {name} in {metrics:?}")).clone()
    };
    let made = metric("ImagesSucceeded");
    assert_eq!(
        (made.namespace.as_str(), made.unit.as_str(), made.values.as_slice()),
        ("imagepipe", "Count", &[1.0][..])
    );
    assert_eq!(made.dimensions, dimensions);
    let latency = metric("ProviderLatency");
    assert_eq!((latency.unit.as_str(), latency.values.len()), ("Milliseconds", 1));
    assert_eq!(
        (metric("SpendUsd").unit.as_str(), metric("SpendUsd").values.as_slice()),
        ("None", &[0.0][..])
    );
    let rollup = metrics
        .iter()
        .find(|m| m.name == "ImagesSucceeded" && m.dimensions.len() == 1);
    let rollup = rollup.unwrap_or_else(|| panic!("no per-function total in {metrics:?}"));
    assert_eq!(rollup.dimensions, [("function".to_owned(), "generator".to_owned())]);
    assert_eq!(rollup.values, [1.0]);
    let failure_rate = metrics.iter().find(|m| m.name == "FailureRate").expect("FailureRate");
    assert_eq!(
        (failure_rate.dimensions.len(), failure_rate.values.as_slice()),
        (1, &[0.0][..])
    );
    let allowed = ["function", "provider", "model", "template", "reason"];
    assert!(
        metrics
            .iter()
            .flat_map(|m| &m.dimensions)
            .all(|(key, _)| allowed.contains(&key.as_str())),
        "run-independent dimensions only: {metrics:?}"
    );
}
