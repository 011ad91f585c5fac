//! Adapters of the ports: a directory and S3 as object stores, SQS as the queue, SSM for secrets.

pub mod fs_store;
pub mod s3_store;
pub mod sqs_queue;
pub mod ssm_secrets;
