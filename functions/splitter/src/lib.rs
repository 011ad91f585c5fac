//! The splitter Lambda function: an S3 upload or a schedule names a CSV; its rows become jobs.

pub mod handler;
