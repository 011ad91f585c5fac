//! The built `generator` binary, black box, under a local Lambda Runtime API: it initialises from
//! the environment, takes an SQS event from `events/`, writes the image to S3 and the outcome to the
//! events queue (both on the local AWS emulator), and answers with the one malformed record as a
//! batch item failure.

#[path = "../../../tests/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

/// Serves one invocation of `event`, then holds further `next` calls open; sends what the
/// function posted back (path, body) on the channel.
async fn runtime_api(event: String) -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (posted, received) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut served = false;
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (event, posted) = (event.clone(), posted.clone());
            let first = !served;
            served = true;
            tokio::spawn(connection(stream, event, posted, first));
        }
    });
    (address, received)
}

async fn connection(stream: TcpStream, event: String, posted: mpsc::Sender<(String, String)>, mut give_event: bool) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        if path.ends_with("/invocation/next") {
            if !give_event {
                std::future::pending::<()>().await;
            }
            give_event = false;
            let deadline = imagepipe::usecase::split::now_ms() + 60_000;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {REQUEST_ID}\r\n\
                 Lambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: \
                 arn:aws:lambda:us-east-1:123456789012:function:generator\r\nContent-Length: {}\r\n\r\n",
                event.len()
            );
            stream.get_mut().write_all(head.as_bytes()).await.unwrap();
            stream.get_mut().write_all(event.as_bytes()).await.unwrap();
        } else {
            let _ = posted.send((path, String::from_utf8_lossy(&body).into_owned())).await;
            stream
                .get_mut()
                .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn the_generator_binary_answers_an_sqs_event_through_the_runtime_api() {
    let clients = support::clients();
    let bucket = support::bucket(&clients).await;
    let jobs = support::queue(&clients, "bb-jobs", Default::default()).await;
    let events = support::queue(&clients, "bb-events", Default::default()).await;
    let event = include_str!("../../../events/sqs-jobs.json").to_owned();
    let (api, mut posted) = runtime_api(event).await;

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
        .env("JOBS_QUEUE_URL", &jobs)
        .env("EVENTS_QUEUE_URL", &events)
        .env("IMAGEPIPE_PROVIDER", "placeholder")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let (path, body) = tokio::time::timeout(Duration::from_secs(60), posted.recv())
        .await
        .expect("the function answers within a minute")
        .unwrap();
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
    assert!(logs.contains("job message does not parse"), "{logs}");
}
