//! Adapters of the ports: a directory and S3 as object stores, SQS as the queue, DynamoDB and memory
//! as run ledgers, SSM for secrets.

pub mod dynamodb_ledger;
pub mod fs_store;
pub mod local_queue;
pub mod memory_ledger;
#[cfg(any(test, feature = "test-util"))]
pub mod memory_publish;
#[cfg(any(test, feature = "test-util"))]
pub mod memory_queue;
pub mod s3_store;
pub mod sqs_queue;
pub mod ssm_secrets;
