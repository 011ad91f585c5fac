//! Adapters of the ports: local (filesystem) and, with the `aws` feature, S3 and SQS.

pub mod fs_store;
