//! The finalizer Lambda function: outcomes → CMS, run records, one report and Slack message per run.

pub mod handler;
