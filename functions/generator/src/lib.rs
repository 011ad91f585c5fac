//! The generator Lambda function: SQS batches of jobs → images in S3, outcomes to the events queue.

pub mod handler;
