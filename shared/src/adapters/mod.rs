//! Adapters of the ports: a directory and S3 as object stores; SQS and an in-process queue with its
//! delivery rules as queues; DynamoDB and memory as run ledgers; SSM for secrets; the HTTP CMS and
//! Slack; the guarded HTTP client every download goes through (`net`).

pub mod dynamodb_ledger;
#[cfg(any(test, feature = "test-util"))]
pub mod failing;
pub mod fs_store;
pub mod http_publish;
pub mod local_queue;
pub mod memory_ledger;
#[cfg(any(test, feature = "test-util"))]
pub mod memory_publish;
#[cfg(any(test, feature = "test-util"))]
pub mod memory_queue;
pub mod net;
pub mod s3_store;
pub mod sqs_queue;
pub mod ssm_secrets;
