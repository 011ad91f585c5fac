//! The S3 and SQS adapters against the local AWS emulator: conditional writes under races,
//! listing, image lookup, batched sends and visibility changes, presigning, secrets and leases.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use imagepipe::adapters::s3_store::S3ObjectStore;
use imagepipe::adapters::sqs_queue::SqsQueue;
use imagepipe::ports::queue::MessageQueue;
use imagepipe::ports::store::{NewObject, ObjectStore, PutOutcome, StoreError};

fn object(body: &str, content_type: &str) -> NewObject {
    NewObject {
        body: body.to_owned().into(),
        content_type: content_type.into(),
        cache_control: Some("public, max-age=31536000".into()),
        metadata: vec![("run-id".into(), "run-1".into())],
    }
}

async fn store() -> S3ObjectStore {
    let clients = support::clients();
    let bucket = support::bucket(&clients).await;
    S3ObjectStore::new(clients.s3, &bucket)
}

#[tokio::test]
async fn concurrent_create_if_absent_writes_exactly_one_object() {
    let store = store().await;
    let writes = (0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .put_if_absent(
                    "runs/r/outcomes/1.json",
                    object(&format!("writer {i}"), "application/json"),
                )
                .await
        }
    });
    let outcomes: Vec<PutOutcome> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == PutOutcome::Created).count(),
        1,
        "{outcomes:?}"
    );
    let body = store.get("runs/r/outcomes/1.json").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&body).starts_with("writer "));
}

#[tokio::test]
async fn images_are_found_by_stem_with_their_type_and_metadata() {
    let store = store().await;
    assert_eq!(store.find_image("hero/A1").await.unwrap(), None);
    store
        .put("images/hero/A1.webp", object("RIFF....WEBP", "image/webp"))
        .await
        .unwrap();
    store
        .put("images/hero/A10.png", object("png", "image/png"))
        .await
        .unwrap();
    let found = store.find_image("hero/A1").await.unwrap().unwrap();
    assert_eq!(
        (found.key.as_str(), found.content_type.as_str(), found.size),
        ("images/hero/A1.webp", "image/webp", 12)
    );
    let clients = support::clients();
    let head = clients
        .s3
        .head_object()
        .bucket(store.bucket())
        .key("images/hero/A1.webp")
        .send()
        .await
        .unwrap();
    assert_eq!(head.cache_control(), Some("public, max-age=31536000"));
    assert_eq!(
        head.metadata().and_then(|m| m.get("run-id")).map(String::as_str),
        Some("run-1")
    );
}

#[tokio::test]
async fn listing_returns_every_key_under_a_prefix_in_order_and_absent_reads_are_none() {
    let store = store().await;
    for key in ["runs/a/t/2", "runs/a/t/1", "runs/ab/t/1", "runs/a/u"] {
        store.put(key, object("x", "text/plain")).await.unwrap();
    }
    assert_eq!(store.list("runs/a/t/").await.unwrap(), vec!["runs/a/t/1", "runs/a/t/2"]);
    assert_eq!(store.get("runs/a/missing").await.unwrap(), None);
    let missing_bucket = S3ObjectStore::new(support::clients().s3, &support::unique("no-such-bucket"));
    let error = missing_bucket.get("k").await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Failed(m) if m.contains("NoSuchBucket")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_batch_of_ten_is_sent_and_a_delayed_message_stays_hidden() {
    let clients = support::clients();
    let url = support::queue(&clients, "adapter", HashMap::new()).await;
    let queue = SqsQueue::new(clients.sqs.clone(), &url);
    let bodies: Vec<String> = (0..SqsQueue::BATCH_LIMIT).map(|i| format!("{{\"n\":{i}}}")).collect();
    queue.send_batch(bodies.clone()).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..10 {
        let event = support::receive(&clients, &url).await;
        received.extend(event.records.iter().filter_map(|r| r.body.clone()));
        for record in &event.records {
            queue
                .delay(record.receipt_handle.as_deref().unwrap(), Duration::from_secs(600))
                .await
                .unwrap();
        }
        if received.len() == bodies.len() {
            break;
        }
    }
    received.sort();
    let mut expected = bodies;
    expected.sort();
    assert_eq!(received, expected);
    // Every message is hidden for 10 minutes: nothing comes back now.
    assert!(support::receive(&clients, &url).await.records.is_empty());
}

#[tokio::test]
async fn sending_to_a_missing_queue_is_a_permanent_error() {
    let clients = support::clients();
    let url = format!("{}/000000000000/{}", support::endpoint(), support::unique("missing"));
    let error = SqsQueue::new(clients.sqs, &url)
        .send_batch(vec!["{}".into()])
        .await
        .unwrap_err();
    assert!(!error.retryable, "{error:?}");
}

#[tokio::test]
async fn s3_references_are_presigned_into_urls_a_provider_can_fetch() {
    let store = store().await;
    store
        .put("refs/shoe.png", object("reference bytes", "image/png"))
        .await
        .unwrap();
    let signer = imagepipe::adapters::s3_store::S3Signer::new(support::clients().s3, Duration::from_secs(600));
    let references = vec![
        format!("s3://{}/refs/shoe.png", store.bucket()),
        "https://example.com/a.jpg".into(),
    ];
    let signed = imagepipe::providers::sign_references(&references, Some(&signer))
        .await
        .unwrap();
    assert_eq!(signed[1], "https://example.com/a.jpg");
    assert!(
        signed[0].starts_with(support::endpoint()) && signed[0].contains("X-Amz-Signature="),
        "{}",
        signed[0]
    );
    let client = imagepipe::adapters::http_publish::http_client(Duration::from_secs(5));
    let fetched = client.get(&signed[0]).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&fetched[..], b"reference bytes");

    let unsigned = imagepipe::providers::sign_references(&references, None)
        .await
        .unwrap_err();
    assert!(unsigned.contains("s3:// references need AWS credentials"), "{unsigned}");
    let bad = imagepipe::providers::sign_references(&["s3://bucket-only".into()], Some(&signer))
        .await
        .unwrap_err();
    assert!(bad.contains("is not an s3://bucket/key URI"), "{bad}");
}

#[tokio::test]
async fn secrets_named_by_param_variables_are_read_from_ssm_and_missing_ones_are_named() {
    let clients = support::clients();
    let name = format!("/imagepipe/{}/cms-token", support::unique("test"));
    clients
        .ssm
        .put_parameter()
        .name(&name)
        .value("cms-secret-value")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let vars = HashMap::from([("CMS_TOKEN_PARAM".to_owned(), name.clone())]);
    let secrets = imagepipe::adapters::ssm_secrets::read_secrets(&clients.ssm, |v| vars.get(v).cloned())
        .await
        .unwrap();
    assert_eq!(
        secrets,
        HashMap::from([("CMS_TOKEN".to_owned(), "cms-secret-value".to_owned())])
    );

    let vars = HashMap::from([("SLACK_WEBHOOK_URL_PARAM".to_owned(), "/imagepipe/missing".to_owned())]);
    let error = imagepipe::adapters::ssm_secrets::read_secrets(&clients.ssm, |v| vars.get(v).cloned())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("SLACK_WEBHOOK_URL_PARAM (/imagepipe/missing)") && message.contains("ParameterNotFound"),
        "{message}"
    );
}

#[tokio::test]
async fn a_lease_has_one_holder_until_released_or_expired() {
    use imagepipe::usecase::lease::{acquire, release};
    let store = store().await;
    let ttl = Duration::from_secs(60);
    let leases = futures::future::join_all((0..6).map(|_| acquire(&store, "leases/p/A1/", ttl))).await;
    let held: Vec<_> = leases.into_iter().filter_map(Result::unwrap).collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(!held[0].taken_over);
    release(&store, &held[0]).await;
    let again = acquire(&store, "leases/p/A1/", ttl)
        .await
        .unwrap()
        .expect("a released lease is free");
    assert!(again.taken_over, "the next holder re-checks what the last one did");
    assert_eq!(acquire(&store, "leases/p/A1/", ttl).await.unwrap(), None);
    assert!(
        acquire(&store, "leases/p/A1/", Duration::ZERO).await.unwrap().is_some(),
        "an expired lease is taken over"
    );
}
