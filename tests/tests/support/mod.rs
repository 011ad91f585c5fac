//! The local AWS emulator (ministack, started by `scripts/emulator`) and fresh resources in it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use imagepipe::drivers::lambda::AwsClients;

/// The emulator's endpoint: `IMAGEPIPE_TEST_AWS_ENDPOINT`, else the one `scripts/emulator start`
/// starts (or finds running). Fails the test loudly when it cannot.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("IMAGEPIPE_TEST_AWS_ENDPOINT") {
            return endpoint;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|dir| dir.join("scripts/emulator"))
            .find(|script| script.exists())
            .expect("scripts/emulator in an ancestor of the package");
        let output = Command::new("bash")
            .arg(script)
            .arg("start")
            .output()
            .expect("run scripts/emulator");
        assert!(
            output.status.success(),
            "scripts/emulator start failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("endpoint is UTF-8")
            .trim()
            .to_owned()
    })
}

/// SDK clients pointed at the emulator, with dummy credentials.
pub fn clients() -> AwsClients {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "emulator",
        )))
        .build();
    AwsClients::new(&config, true)
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub async fn bucket(clients: &AwsClients) -> String {
    let name = unique("imagepipe");
    clients
        .s3
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

/// A run-ledger table shaped as `infra/template.yaml` declares it (`pk`, `sk`, on demand, TTL).
pub async fn table(clients: &AwsClients) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
    };
    let name = unique("imagepipe-runs");
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    clients
        .dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .send()
        .await
        .expect("create table");
    clients
        .dynamodb
        .update_time_to_live()
        .table_name(&name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("enable TTL");
    name
}

/// A queue with a dead-letter queue after `max_receive_count` deliveries; returns (url, dlq url).
pub async fn queue_with_dlq(clients: &AwsClients, name: &str, max_receive_count: u32) -> (String, String) {
    let dlq = queue(clients, &format!("{name}-dlq"), HashMap::new()).await;
    let arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq arn")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("dlq has an arn");
    let redrive = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count }).to_string();
    let url = queue(
        clients,
        name,
        HashMap::from([(QueueAttributeName::RedrivePolicy, redrive)]),
    )
    .await;
    (url, dlq)
}

pub async fn queue(clients: &AwsClients, name: &str, mut attributes: HashMap<QueueAttributeName, String>) -> String {
    attributes
        .entry(QueueAttributeName::VisibilityTimeout)
        .or_insert_with(|| "30".into());
    clients
        .sqs
        .create_queue()
        .queue_name(unique(name))
        .set_attributes(Some(attributes))
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// Receives up to 10 messages as a Lambda SQS event.
pub async fn receive(clients: &AwsClients, url: &str) -> SqsEvent {
    let output = clients
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(0)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive");
    let mut event = SqsEvent::default();
    for message in output.messages() {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id().map(str::to_owned);
        record.receipt_handle = message.receipt_handle().map(str::to_owned);
        record.body = message.body().map(str::to_owned);
        record.attributes = message
            .attributes()
            .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
            .unwrap_or_default();
        record.event_source = Some("aws:sqs".into());
        event.records.push(record);
    }
    event
}

/// Deletes the records of `event` except those with ids in `failed`.
pub async fn delete_except(clients: &AwsClients, url: &str, event: &SqsEvent, failed: &[String]) {
    for record in &event.records {
        if failed.contains(record.message_id.as_ref().unwrap()) {
            continue;
        }
        clients
            .sqs
            .delete_message()
            .queue_url(url)
            .receipt_handle(record.receipt_handle.as_deref().unwrap())
            .send()
            .await
            .expect("delete");
    }
}

/// Messages in the queue, visible or in flight.
pub async fn depth(clients: &AwsClients, url: &str) -> u64 {
    let output = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attributes = output.attributes().cloned().unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| attributes.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
    .sum()
}

/// The `text` of every message a Slack stand-in received.
pub async fn slack_texts(slack: &wiremock::MockServer) -> Vec<String> {
    let requests = slack.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}
